"""`SmoothPruning`: smooth top-k magnitude pruning as a Lightning callback.

    trainer = Trainer(callbacks=[SmoothPruning(sparsity=0.9)])

Lifecycle of a fit:
  setup           refuses sharded strategies; registers the reader of checkpoints written by
                  smoothprune <= 0.1 (parametrized keys);
  on_load_checkpoint   (resume) keeps the latent weights and the pruning state of the file;
  on_fit_start    after ``configure_model``, the strategy and the optimizers: resolves the
                  sparsity schedule (a float ramps over part of ``estimated_stepping_batches``),
                  prunes the model (it keeps its own Parameters, which hold the latents),
                  restores the latents of a resumed checkpoint, prunes weight-averaged copies
                  alike and adapts monitored ModelCheckpoints and EarlyStopping (see
                  `smoothprune.lightning.integration`);
  each update     (every ``frequency`` optimizer steps, or epochs) writes the schedules'
                  values into the specs in place and, for global scope, re-allocates the budget;
  on_save_checkpoint   adds the latents and the pruning state under ``checkpoint["smoothprune"]``
                  (the state_dict itself holds the hardened weights under the user's keys);
  on_train_end    a run that stopped before the schedule reached its target is moved to the
                  target, with a warning;
  on_fit_end      after weight averaging copied its average into the model: hardens the model
                  and writes the compact sparse file (``export_path``, rank zero).

The schedules' clock is the trainer's own (``global_step`` or ``current_epoch``), so resuming
from a checkpoint continues the schedules where they stopped.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import torch

from smoothprune import schedules
from smoothprune.checkpoint import FORMAT_VERSION, legacy_load_hook
from smoothprune.export import save_sparse
from smoothprune.lightning.integration import Gates, averaged_models, mirror_pruning_, unmirror_
from smoothprune.nn.parametrizations import METHODS
from smoothprune.nn.pruned import raw_tensors, specs_of
from smoothprune.ops.sharded import is_dtensor
from smoothprune.pruning import (
    harden_,
    prune_,
    pruned_tensors,
    refresh_global_,
    set_hard_training_,
    set_lam_,
    set_sparsity_,
    sparsity_report,
)
from smoothprune.validation import (
    check_algorithm,
    check_bool,
    check_choice,
    check_file_path,
    check_int,
    check_p,
    check_positive,
    check_sparsity,
    check_targets,
    is_real,
    parse_scope,
)

log = logging.getLogger("smoothprune.lightning")

INTERVALS = ("step", "epoch")
# A float sparsity ramps by a cubic schedule (Zhu & Gupta) over this part of training; chosen
# by benchmarks/defaults.py (see docs/pruning.md, "Defaults").
DEFAULT_RAMP = (0.0, 0.5)
DEFAULT_LAM = 1.0  # relative (relative_lam=True): lam * rms(W')^(2 - p) per tensor
DEFAULT_P = 4 / 3
# The last part of training fine-tunes the hard-pruned weights (what is exported), also chosen
# by benchmarks/defaults.py.
DEFAULT_FINETUNE = 0.25
_REFUSED = ("FSDP", "DeepSpeed")  # FSDP1 and DeepSpeed: flat parameters, not the user's tensors
FN = "SmoothPruning"  # the function errors name


def _enable_console_log() -> None:
    """verbose > 0 asks for console output: give our logger a handler if nobody configured one
    (as Lightning does for its own logger)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _schedule(name: str, value, *, upper: float | None):
    """A sparsity (``upper=1``: values in [0, 1]) or lam (``upper=None``: values > 0) schedule; a
    plain number (or a bool) is checked as `prune_` checks it."""
    if (is_real(value) or isinstance(value, bool)) and upper is not None:
        check_sparsity(FN, value)
    elif is_real(value) or isinstance(value, bool):
        check_positive(FN, name, value)
    try:
        schedule = schedules.build(value)
    except ValueError as exc:
        raise ValueError(f"{FN}: bad {name} schedule: {exc}") from None
    # check the values the schedule takes at its ends (all built-in schedules are monotone)
    probes = [schedule.at(0), schedule.at(10**12)]
    for attr in ("begin", "end"):
        if hasattr(schedule, attr):
            probes.append(schedule.at(getattr(schedule, attr)))
    for v in probes:
        if upper is not None and not 0.0 <= v <= upper:
            raise ValueError(f"{FN}: expected {name} values in [0, {upper:g}], got {schedule!r} reaching {v!r}")
        if upper is None and not 0.0 < v < math.inf:
            raise ValueError(f"{FN}: expected {name} values > 0 and finite, got {schedule!r} reaching {v!r}")
    return schedule


def _check_ramp(ramp):
    if ramp is None:
        return None
    ok = (isinstance(ramp, (tuple, list)) and len(ramp) == 2 and all(is_real(r) for r in ramp)
          and 0.0 <= ramp[0] <= ramp[1] <= 1.0)
    if not ok:
        raise ValueError(f"{FN}: expected ramp to be None or (begin, end) fractions of training with "
                         f"0 <= begin <= end <= 1, got ramp={ramp!r}")
    return float(ramp[0]), float(ramp[1])


def _check_finetune(finetune, ramp):
    if finetune is None:
        return 0.0
    if not is_real(finetune) or not 0.0 <= finetune < 1.0:
        raise ValueError(f"{FN}: expected finetune to be None or a fraction of training in [0, 1), got "
                         f"finetune={finetune!r}")
    if ramp is not None and ramp[1] > 1.0 - finetune + 1e-12:
        raise ValueError(f"{FN}: the hard fine-tuning (the last finetune={finetune!r} of training) would "
                         f"start before the sparsity ramp {ramp!r} ends; pass finetune <= {1.0 - ramp[1]:g} (or None), "
                         f"or a ramp that ends by {1.0 - finetune:g}")
    return float(finetune)


class SmoothPruningImpl:
    """Smooth top-k magnitude pruning during training (works with `pytorch_lightning` and
    `lightning.pytorch` Trainers alike).

    Args:
        sparsity: the target sparsity, a float in [0, 1] (reached by the ``ramp`` schedule), or
            a schedule (a `smoothprune.schedules` object or a mapping ``{"name": "cubic",
            "final": 0.9, ...}`` as written in YAML), used as given.
        lam: regularization strength, a float > 0 or a schedule (e.g. Exponential, to anneal
            toward the hard operator).
        p: regularization exponent > 1 (2 or 4/3 in the paper).
        method: ``"smooth"``, ``"hard"`` (gradual magnitude pruning) or ``"ste"``.
        scope: ``"layer"``, ``"global"``, ``"row"``, ``"nm"`` (2:4), ``"N:M"`` or ``"block:RxC"`` (whole
            R×C tiles of 2-D weights; see `smoothprune.prune_`).
        ramp: for a float ``sparsity``: ``(begin, end)`` fractions of the training length
            (``trainer.estimated_stepping_batches``, or ``max_epochs`` for ``interval="epoch"``)
            over which a cubic schedule ramps the sparsity from 0 to its target; ``None`` prunes
            at the target from the first step.
        parameters_to_prune: targets as in :func:`smoothprune.prune_` (default: every Linear and
            Conv weight); ``exclude`` removes names or ``"re:"`` patterns.
        interval: ``"step"`` (schedules count optimizer steps) or ``"epoch"``.
        frequency: update every ``frequency`` intervals.
        make_pruning_permanent: harden the model when fit ends.
        export_path: if set, write the hardened model there (`smoothprune.save_sparse`) when
            fit ends.
        verbose: 0 silent, 1 a summary line per epoch and the final report, 2 also per tensor.
        algorithm, num_iter: the smooth operator's solver (``"auto"``: PAV on CPU/CUDA,
            Dykstra on XLA).
        relative_lam: for ``p != 2``, lam is relative to each tensor's scale (multiplied by
            ``rms(W')^(2 - p)``), so one value suits every layer; ``False``: the operator's
            absolute lam (for ``p = 2`` both are the same).
        best_at_target: monitored ModelCheckpoints rank (and copy to ``last.ckpt``) only
            checkpoints written at the target sparsity.
        hold_early_stopping: EarlyStopping waits for the target sparsity; its patience counts
            from there.
        finish_at_target: a fit that ends before the schedule reaches its target (``max_time``,
            ``max_steps``, an interrupt) is hardened at the target sparsity, with a warning.
        finetune: the fraction of training, at its end, that trains the hard top-k of the
            latent weights (the weights that will be exported; the gradient flows to the kept
            entries) instead of the smooth operator; ``0`` or ``None``: smooth to the end.
            Ignored by ``method="hard"``.

    Raises:
        ValueError: on any bad argument, naming it and the value received.
    """

    def __init__(self, sparsity=0.9, *, lam=DEFAULT_LAM, p: float = DEFAULT_P, method: str = "smooth",
                 scope="layer", ramp=DEFAULT_RAMP, parameters_to_prune=None, exclude=None, interval: str = "step",
                 frequency: int = 1, make_pruning_permanent: bool = True, export_path=None, verbose: int = 0,
                 algorithm: str = "auto", num_iter=None, relative_lam: bool = True, best_at_target: bool = True,
                 hold_early_stopping: bool = True, finish_at_target: bool = True, finetune=DEFAULT_FINETUNE):
        # Every argument is checked here (none needs the model or the trainer); setup and
        # on_fit_start check only what depends on them (the targets' names, the strategy).
        self.ramp = _check_ramp(ramp)
        self.finetune = _check_finetune(finetune, self.ramp)
        self._float_sparsity = is_real(sparsity)
        self.sparsity_schedule = _schedule("sparsity", sparsity, upper=1.0)
        self.lam_schedule = _schedule("lam", lam, upper=None)
        self.p = check_p(FN, p)
        self.method = check_choice(FN, "method", method, METHODS)
        scope_kind, n_keep, m_group = parse_scope(FN, scope)
        self.target_sparsity = float(self.sparsity_schedule.at(10**12))
        if scope_kind == "nm" and abs(self.target_sparsity - (1 - n_keep / m_group)) > 1e-12:
            raise ValueError(f"{FN}: expected the sparsity schedule to end at {1 - n_keep / m_group:g} for "
                             f"scope {scope!r}, got {self.sparsity_schedule!r}")
        self._nm = scope_kind == "nm"
        self.scope = scope
        self.parameters_to_prune = check_targets(FN, "parameters_to_prune", parameters_to_prune, pairs=True,
                                                 nonempty=True)
        self.exclude = check_targets(FN, "exclude", exclude, pairs=False)
        self.interval = check_choice(FN, "interval", interval, INTERVALS)
        self.frequency = check_int(FN, "frequency", frequency)
        self.make_pruning_permanent = check_bool(FN, "make_pruning_permanent", make_pruning_permanent)
        self.export_path = check_file_path(FN, "export_path", export_path)
        self.verbose = check_choice(FN, "verbose", verbose, (0, 1, 2))
        check_algorithm(FN, algorithm, self.p, num_iter)
        self.algorithm, self.num_iter = algorithm, num_iter
        self.relative_lam = check_bool(FN, "relative_lam", relative_lam)
        self.best_at_target = check_bool(FN, "best_at_target", best_at_target)
        self.hold_early_stopping = check_bool(FN, "hold_early_stopping", hold_early_stopping)
        self.finish_at_target = check_bool(FN, "finish_at_target", finish_at_target)
        if verbose:
            _enable_console_log()
        self._ramp_steps = None  # (begin, end) of the resolved ramp, once the trainer's length is known
        self._finetune_from = None  # the clock at which this fit's hard fine-tuning starts
        self.finetuning = False  # training reads the hard top-k (the fine-tuning phase)
        if self._float_sparsity and self.ramp is not None:
            self.current_sparsity = 0.0
        else:
            self.current_sparsity = float(self.sparsity_schedule.at(0))
        self.current_lam = float(self.lam_schedule.at(0))
        self.reached_target = False  # the schedule reached its target (EarlyStopping starts then)
        self.completed = False  # a fit ended at the target: a next fit prunes at the target from its start
        self._pending = None  # the "smoothprune" entry of a checkpoint being resumed
        self._gates = Gates()
        self._held_early_stopping = []
        self._legacy_hook = None
        self._averaged = {}

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage=None) -> None:
        if stage not in (None, "fit"):  # validate / test / predict leave the model as it is
            return
        strategy = type(trainer.strategy).__name__
        if any(s in strategy for s in _REFUSED):
            raise RuntimeError(
                f"SmoothPruning: the {strategy} strategy is not supported (it flattens the parameters into buffers "
                "of its own, so the pruned tensors are not the model's); for sharded training use "
                "ModelParallelStrategy (FSDP2: fully_shard in your configure_model), or strategy='ddp'"
            )
        if self._legacy_hook is None:
            self._legacy_hook = pl_module.register_load_state_dict_pre_hook(legacy_load_hook)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._pending = checkpoint.get("smoothprune")

    def on_fit_start(self, trainer, pl_module) -> None:
        total = self._training_length(trainer)  # (on every rank: it may synchronize them)
        self._resolve_ramp(total)
        self._finetune_from = self._finetune_start(total)
        if self.completed:
            self.current_sparsity = self.target_sparsity
            self.current_lam = float(self.lam_schedule.at(10**12))
        if not pruned_tensors(pl_module):
            # N:M scopes register at their final pattern; a schedule may ramp toward it
            prune_(pl_module, None if self._nm else self.current_sparsity, lam=self.current_lam, p=self.p,
                   method=self.method, targets=self.parameters_to_prune, exclude=self.exclude, scope=self.scope,
                   algorithm=self.algorithm, num_iter=self.num_iter, relative_lam=self.relative_lam)
        _check_fsdp_wraps_each_pruned_module(pl_module)
        self._averaged = averaged_models(trainer)
        if self._averaged and _has_sharded_tensors(pl_module):
            raise RuntimeError("SmoothPruning: weight averaging of a sharded (FSDP2) model is not supported; "
                               "remove the weight-averaging callback or train without sharding")
        for copy in self._averaged.values():
            mirror_pruning_(pl_module, copy)
        self._apply_state(trainer, pl_module)
        if self.best_at_target:
            self._gates.hold_checkpoints(trainer, self._at_target)
        if self.hold_early_stopping:
            self._held_early_stopping = self._gates.hold_early_stopping(trainer, self._at_target)
        if trainer.is_global_zero:
            self._warn_if_schedule_outlasts_training(total)
            if self.verbose:
                names = [q for q, *_ in pruned_tensors(pl_module)]
                log.info("SmoothPruning: pruning %d tensors (%s scope, %s, target sparsity %.4f): %s", len(names),
                         self.scope, self.method, self.target_sparsity, ", ".join(names))

    def on_train_start(self, trainer, pl_module) -> None:
        # Strategies that load a checkpoint into the model they have sharded (ModelParallelStrategy)
        # restore it after on_fit_start: its schedule state and latents are applied here.
        if self._pending is not None and pruned_tensors(pl_module):
            if self.completed:
                self.current_sparsity = self.target_sparsity
                self.current_lam = float(self.lam_schedule.at(10**12))
            self._apply_state(trainer, pl_module)

    def _apply_state(self, trainer, pl_module) -> None:
        """Writes the schedules' current values into the pruned model (whose specs its averaged
        copies share) and, when resuming, the checkpoint's latent weights."""
        pending, self._pending = self._pending or {}, None
        set_sparsity_(pl_module, self.current_sparsity)
        set_lam_(pl_module, self.current_lam)
        latents = pending.get("latents")
        if latents == SHARDED_LATENTS:
            latents = _read_sharded_latents(pl_module, trainer.ckpt_path)
        self._restore_latents(pl_module, latents)
        for key, copy in self._averaged.items():
            self._restore_latents(copy, pending.get("averaged_latents", {}).get(key))
        refresh_global_(pl_module)
        self._set_finetuning(pl_module, self._clock(trainer), force=True)
        self.reached_target = self._at_target()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.interval == "step":
            self._update(pl_module, trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.interval == "epoch":
            self._update(pl_module, trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # only as often as loggers write (Lightning's `log` costs ~0.1 ms a call: a tiny model's step)
        every = max(int(getattr(trainer, "log_every_n_steps", 50) or 50), 1)
        if trainer.global_step % every == 0:
            self._log_schedules(pl_module, on_step=True)
            self._log_hardened(pl_module, on_step=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log_schedules(pl_module, on_step=False)
        report = self._log_hardened(pl_module, on_step=False)
        if self.verbose and trainer.is_global_zero and report:
            log.info("SmoothPruning: epoch %d, target sparsity %.4f, lam %.3g, hardened sparsity %.4f, "
                     "smooth-hard distance %.3g", trainer.current_epoch, self.current_sparsity, self.current_lam,
                     report.hard_total, report.distance)
            if self.verbose > 1:
                for t in report.tensors:
                    log.info("SmoothPruning:   %s hardened sparsity %.4f", t.name, t.hard_sparsity)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        pruned = pruned_tensors(pl_module)
        if not pruned:
            return
        entry = {
            "format_version": FORMAT_VERSION,
            "target_sparsity": self.target_sparsity,
            "sparsity": self.current_sparsity,
            "lam": self.current_lam,
            "tensors": {q: {"shape": list(spec.shape), "k": int(spec.k), "group": spec.group_size,
                            "scope": spec.scope, "method": spec.method} for q, spec, _, _ in pruned},
            "latents": _latents(pl_module),
            "averaged_latents": {key: _latents(copy) for key, copy in self._averaged.items()},
        }
        if any(is_dtensor(t) for t in entry["latents"].values()):
            if getattr(trainer.strategy, "_save_distributed_checkpoint", False):
                # A distributed checkpoint writes its "state_dict" shard by shard and pickles the
                # rest on rank 0 alone: the latents go with the state_dict, under keys of their own
                # that no module loads.
                for key, tensor in entry["latents"].items():
                    checkpoint["state_dict"][SHARDED_LATENT_PREFIX + key] = tensor
                entry["latents"] = SHARDED_LATENTS
            else:  # a full checkpoint (rank 0 writes it): whole latents, gathered one at a time
                entry["latents"] = {k: t.full_tensor() if is_dtensor(t) else t for k, t in entry["latents"].items()}
        checkpoint["smoothprune"] = entry

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish_early(trainer, pl_module, "training stopped")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):  # Lightning then exits the process
            if _has_sharded_tensors(pl_module):  # hardening a sharded model needs every rank (they may be gone)
                warnings.warn("SmoothPruning: training was interrupted; the sharded model is left as it is (not "
                              "hardened, not exported)", stacklevel=2)
            else:
                self._finish_early(trainer, pl_module, "training was interrupted")
                self._end(trainer, pl_module, synchronize=False)  # (other ranks may be gone)
        self._release()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._finish_early(trainer, pl_module, "training stopped")  # (a fit loop that never ran)
        self._end(trainer, pl_module)
        self._release()

    def teardown(self, trainer, pl_module, stage=None) -> None:
        self._release()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 2,
            "sparsity_schedule": self.sparsity_schedule.state_dict(),
            "lam_schedule": self.lam_schedule.state_dict(),
            "current_sparsity": self.current_sparsity,
            "current_lam": self.current_lam,
            "target_sparsity": self.target_sparsity,
            "ramp_steps": self._ramp_steps,
            "reached_target": self.reached_target,
            "completed": self.completed,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        version = state_dict.get("version")
        if version not in (1, 2):  # 1: smoothprune <= 0.1
            raise ValueError(f"SmoothPruning: expected a state_dict of version 1 or 2, got {version!r}")
        if state_dict.get("ramp_steps") is not None:
            self._ramp_steps = tuple(state_dict["ramp_steps"])
            self.sparsity_schedule = self._ramp_schedule(*self._ramp_steps)
        self.sparsity_schedule.load_state_dict(state_dict["sparsity_schedule"])
        self.lam_schedule.load_state_dict(state_dict["lam_schedule"])
        self.current_sparsity = float(state_dict["current_sparsity"])
        self.current_lam = float(state_dict["current_lam"])
        self.reached_target = bool(state_dict.get("reached_target", False))
        self.completed = bool(state_dict.get("completed", False))

    # -- internals -------------------------------------------------------------------------------
    def _ramp_schedule(self, begin: int, end: int):
        return schedules.Cubic(init=0.0, final=self.target_sparsity, begin=begin, end=end)

    def _training_length(self, trainer) -> float:
        """The length of this fit in the schedules' unit (inf when unknown)."""
        if self.interval == "step":
            return float(trainer.estimated_stepping_batches)
        return float(trainer.max_epochs) if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf

    def _resolve_ramp(self, total: float) -> None:
        """A float sparsity with a ramp: the cubic schedule over the ramp's part of training."""
        if not (self._float_sparsity and self.ramp is not None) or self._ramp_steps is not None:
            return
        unit = "optimizer steps (trainer.estimated_stepping_batches)" if self.interval == "step" else "epochs (max_epochs)"
        if not math.isfinite(total):
            raise ValueError(f"SmoothPruning: a float sparsity ramps over ramp={self.ramp} of training, but this "
                             f"Trainer's length in {unit} is unknown; set max_steps/max_epochs, give a schedule "
                             "with explicit steps, or ramp=None to prune at the target from the start")
        begin, end = (int(round(f * total)) for f in self.ramp)
        self._ramp_steps = (begin, end)
        last_step = self.sparsity_schedule.last_step
        self.sparsity_schedule = self._ramp_schedule(begin, end)
        self.sparsity_schedule.last_step = last_step

    def _schedule_end(self):
        return getattr(self.sparsity_schedule, "end", 0)

    def _at_target(self) -> bool:
        return abs(self.current_sparsity - self.target_sparsity) <= 1e-12

    def _warn_if_schedule_outlasts_training(self, total: float) -> None:
        end = self._schedule_end()
        if math.isfinite(total) and end >= total and not self.completed:  # (the last update is at total - 1)
            warnings.warn(f"SmoothPruning: the sparsity schedule reaches its target {self.target_sparsity:g} at "
                          f"{self.interval} {end}, after the last {self.interval} ({int(total) - 1}) of this training"
                          + ("; the model will be hardened at the target when it ends" if self.finish_at_target
                             else ""), stacklevel=2)

    def _update(self, pl_module, clock: int) -> None:
        """Moves the schedules to ``clock`` (optimizer steps or epochs) and, every `frequency`
        ticks, writes their values into the model."""
        self.sparsity_schedule.last_step = clock
        self.lam_schedule.last_step = clock
        self._set_finetuning(pl_module, clock)
        if clock % self.frequency:
            return
        if self.completed:  # a fit after a completed one keeps the target
            sparsity, lam = self.target_sparsity, float(self.lam_schedule.at(10**12))
        else:
            sparsity, lam = self.sparsity_schedule.value, self.lam_schedule.value
        if sparsity != self.current_sparsity:
            set_sparsity_(pl_module, sparsity)  # global scope re-allocates inside
        elif self.scope == "global":
            refresh_global_(pl_module)  # the weights moved: follow the global top-k
        if lam != self.current_lam:
            set_lam_(pl_module, lam)
        self.current_sparsity, self.current_lam = sparsity, lam
        if not self.reached_target and self._at_target():
            self.reached_target = True
            Gates.restart_patience(self._held_early_stopping)

    def _finetune_start(self, total: float):
        """The clock at which this fit's hard fine-tuning starts (None: it has none)."""
        if not self.finetune or self.method == "hard" or not math.isfinite(total):
            return None
        return int(round((1.0 - self.finetune) * total))

    def _set_finetuning(self, pl_module, clock: int, force: bool = False) -> None:
        finetuning = self._finetune_from is not None and clock >= self._finetune_from
        if force or finetuning != self.finetuning:
            set_hard_training_(pl_module, finetuning)
            self.finetuning = finetuning
            if finetuning and self.verbose:
                log.info("SmoothPruning: %s %d, hard fine-tuning at sparsity %.4f until the end", self.interval,
                         clock, self.current_sparsity)

    def _finish_early(self, trainer, pl_module, why: str) -> None:
        """A run that ends before its schedule reached the target: move it to the target."""
        if self._at_target() or not pruned_tensors(pl_module) or not self.finish_at_target:
            return
        if trainer.is_global_zero:
            warnings.warn(f"SmoothPruning: {why} at {self.interval} {self._clock(trainer)} with the sparsity schedule "
                          f"at {self.current_sparsity:.4f} of its target {self.target_sparsity:.4f} (reached at "
                          f"{self.interval} {self._schedule_end()}); the model is pruned to the target "
                          f"{self.target_sparsity:.4f} (finish_at_target=False keeps the schedule's position)",
                          stacklevel=2)
        set_sparsity_(pl_module, self.target_sparsity)
        self.current_sparsity = self.target_sparsity

    def _clock(self, trainer) -> int:
        return trainer.global_step if self.interval == "step" else trainer.current_epoch

    def _end(self, trainer, pl_module, synchronize: bool = True) -> None:
        """Hardens (after weight averaging copied its average in) and exports."""
        for copy in self._averaged.values():
            unmirror_(copy)
        self._averaged = {}
        names = [q for q, *_ in pruned_tensors(pl_module)]
        pruning = {"target_sparsity": self.target_sparsity, "sparsity": self.current_sparsity, "tensors": names}
        if names and self._at_target():
            self.completed = True
        if self.make_pruning_permanent and names:
            harden_(pl_module)
            if self.verbose:
                report = sparsity_report(pl_module)  # (every rank: a sharded model's counts are collectives)
                if trainer.is_global_zero:
                    log.info("SmoothPruning: hardened the model\n%s", report)
        if self.export_path is not None:
            sharded = _has_sharded_tensors(pl_module)
            if sharded and not synchronize:
                warnings.warn("SmoothPruning: the run was interrupted; a sharded model is not exported then "
                              "(every rank would have to take part)", stacklevel=2)
            elif trainer.is_global_zero or sharded:  # sharded: every rank gathers, rank 0 writes
                save_sparse(pl_module, self.export_path, pruning=pruning)
                if self.verbose and trainer.is_global_zero:
                    log.info("SmoothPruning: wrote %s", self.export_path)
            if synchronize:
                trainer.strategy.barrier("smoothprune_export")

    def _release(self) -> None:
        self._gates.restore()
        self._held_early_stopping = []
        if self._legacy_hook is not None:
            self._legacy_hook.remove()
            self._legacy_hook = None

    @staticmethod
    @torch.no_grad()
    def _restore_latents(model, latents) -> None:
        """Writes the latent weights saved by `on_save_checkpoint` into the pruned tensors."""
        if not latents:
            return
        for key, tensor in _latent_tensors(model):
            if key not in latents:
                raise ValueError(f"SmoothPruning: the checkpoint holds no latent weight for {key!r}; "
                                 "it was written by a run that pruned other tensors")
            value = latents[key]
            if is_dtensor(tensor) and not is_dtensor(value):  # a whole latent into a sharded one
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(tensor.device), tensor.device_mesh, tensor.placements)
            tensor.copy_(value)

    def _log_schedules(self, pl_module, on_step: bool) -> None:
        kw = dict(on_step=on_step, on_epoch=not on_step)
        pl_module.log("pruning/target_sparsity", self.current_sparsity, **kw)
        pl_module.log("pruning/lam", self.current_lam, **kw)

    def _log_hardened(self, pl_module, on_step: bool):
        report = sparsity_report(pl_module)
        if not report.tensors or report.tensors[0].method is None:
            return None  # nothing pruned (any more)
        kw = dict(on_step=on_step, on_epoch=not on_step)
        pl_module.log("pruning/hardened_sparsity", report.hard_total, **kw)
        pl_module.log("pruning/smooth_hard_distance", report.distance, **kw)
        for t in report.tensors:
            pl_module.log(f"pruning/sparsity/{t.name}", t.hard_sparsity, **kw)
        return report


SHARDED_LATENT_PREFIX = "_smoothprune_latent."  # a sharded checkpoint's latents, in its state_dict
SHARDED_LATENTS = "in the distributed checkpoint's state_dict"


def _read_sharded_latents(model, path) -> dict:
    """The latents of a distributed checkpoint, read shard by shard into DTensors like the model's."""
    import torch.distributed.checkpoint as dcp

    if path is None or not os.path.isdir(path):
        raise ValueError(f"SmoothPruning: the checkpoint keeps its latent weights in a distributed checkpoint "
                         f"folder, got ckpt_path={path!r}")
    state = {SHARDED_LATENT_PREFIX + key: tensor.detach().clone() for key, tensor in _latent_tensors(model)}
    dcp.load({"state_dict": state}, checkpoint_id=path)
    return {key[len(SHARDED_LATENT_PREFIX):]: tensor for key, tensor in state.items()}


def _check_fsdp_wraps_each_pruned_module(model) -> None:
    """FSDP2 re-reads each sharded Parameter as ``getattr(module, name)``; a pruned module only
    hands it its Parameter when the module itself was passed to ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return
    names = {id(m): n for n, m in model.named_modules()}
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        try:  # FSDP2's own record of the parameters it manages (private: checked where it exists)
            params = module._get_fsdp_state()._fsdp_param_group.fsdp_params
        except AttributeError:
            continue
        for fsdp_param in params:
            owner = fsdp_param._module_info.module
            if owner is not module and specs_of(owner):
                raise ValueError(
                    f"SmoothPruning: the pruned module {names.get(id(owner), '?')!r} is sharded by "
                    f"fully_shard({names.get(id(module), '?') or 'the model'!r}) around it; call fully_shard on every "
                    "pruned module itself (for example on each Linear of a block) before its parent")


def _has_sharded_tensors(model) -> bool:
    return any(is_dtensor(t) for t in model.parameters())


def _latent_tensors(model):
    """(state_dict key, tensor) of the stored tensors behind every pruned tensor (the latents)."""
    for qualified, _, module, name in pruned_tensors(model):
        prefix = qualified[: -len(name)]
        for key, tensor in raw_tensors(module, name).items():
            yield prefix + key, tensor


def _latents(model) -> dict:
    """A copy of the latents, by state_dict key (what a checkpoint saves)."""
    return {key: tensor.detach().clone() for key, tensor in _latent_tensors(model)}


__all__ = ["SmoothPruningImpl", "DEFAULT_RAMP", "DEFAULT_LAM", "DEFAULT_P"]
