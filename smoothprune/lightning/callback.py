"""`SmoothPruning`: smooth top-k magnitude pruning as a Lightning callback.

    trainer = Trainer(callbacks=[SmoothPruning(sparsity=schedules.Cubic(final=0.9, end=1000))])

Lifecycle:
  setup            re-parametrizes the chosen weights (W = topk_mag(W')) before the strategy
                   wraps the model (DDP) and before a checkpoint is restored, so the
                   checkpoint's keys (``...parametrizations.weight.original`` and the
                   parametrization buffers) match on resume;
  each update      (every ``frequency`` optimizer steps, or epochs) writes the schedules'
                   values into the parametrizations' buffers in place and, for global scope,
                   re-allocates the budget across tensors;
  logging          target sparsity and lam, the hardened sparsity (total and per tensor) and
                   the relative distance between the smooth and hardened weights, every
                   ``log_every_n_steps`` and at the end of each epoch;
  train end        hardens the model (``make_pruning_permanent``) and writes the compact sparse
                   file (``export_path``, rank zero).

The schedules' clock is the trainer's own (``global_step`` or ``current_epoch``), so resuming
from a checkpoint continues the schedules where they stopped; the callback's `state_dict`
records that position and the values applied.
"""

from __future__ import annotations

import logging
import numbers
import os

from smoothprune import schedules
from smoothprune.export import save_sparse
from smoothprune.nn.parametrizations import METHODS
from smoothprune.ops.dykstra import dykstra_q
from smoothprune.pruning import (
    check_algorithm_name,
    harden_,
    parse_scope,
    prune_,
    pruned_tensors,
    refresh_global_,
    set_lam_,
    set_sparsity_,
    sparsity_report,
)

log = logging.getLogger("smoothprune.lightning")


def _enable_console_log() -> None:
    """verbose > 0 asks for console output: give our logger a handler if nobody configured one
    (as Lightning does for its own logger)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)

INTERVALS = ("step", "epoch")


def _schedule(name: str, value, *, upper: float | None):
    try:
        schedule = schedules.build(value)
    except ValueError as exc:
        raise ValueError(f"SmoothPruning: bad {name} schedule: {exc}") from None
    # check the values the schedule takes at its ends (all built-in schedules are monotone)
    probes = [schedule.at(0), schedule.at(10**12)]
    for attr in ("begin", "end"):
        if hasattr(schedule, attr):
            probes.append(schedule.at(getattr(schedule, attr)))
    for v in probes:
        if upper is not None and not 0.0 <= v <= upper:
            raise ValueError(f"SmoothPruning: expected {name} values in [0, {upper:g}], got {schedule!r} reaching {v!r}")
        if upper is None and not v > 0:
            raise ValueError(f"SmoothPruning: expected {name} values > 0, got {schedule!r} reaching {v!r}")
    return schedule


class SmoothPruningImpl:
    """Smooth top-k magnitude pruning during training (works with `pytorch_lightning` and
    `lightning.pytorch` Trainers alike).

    Args:
        sparsity: target sparsity, a float in [0, 1] or a schedule (a `smoothprune.schedules`
            object or a mapping ``{"name": "cubic", "final": 0.9, ...}`` as written in YAML).
        lam: regularization strength, a float > 0 or a schedule (e.g. Exponential, to anneal
            toward the hard operator).
        p: regularization exponent > 1 (2 or 4/3 in the paper).
        method: ``"smooth"``, ``"hard"`` (the hard top-k baseline) or ``"ste"``.
        scope: ``"layer"``, ``"global"``, ``"row"``, ``"nm"`` (2:4) or ``"N:M"``.
        parameters_to_prune: targets as in :func:`smoothprune.prune_` (default: every Linear and
            Conv weight); ``exclude`` removes names or ``"re:"`` patterns.
        interval: ``"step"`` (schedules count optimizer steps) or ``"epoch"``.
        frequency: update every ``frequency`` intervals.
        make_pruning_permanent: harden the model when training ends.
        export_path: if set, write the hardened model there (`smoothprune.save_sparse`) when
            training ends.
        verbose: 0 silent, 1 a summary line per epoch and the final report, 2 also per tensor.
        algorithm, num_iter: the smooth operator's solver (``"auto"``: PAV on CPU/CUDA,
            Dykstra on XLA).

    Raises:
        ValueError: on any bad argument, naming it and the value received.
    """

    def __init__(self, sparsity=0.9, *, lam=1e-4, p: float = 2.0, method: str = "smooth", scope="layer",
                 parameters_to_prune=None, exclude=None, interval: str = "step", frequency: int = 1,
                 make_pruning_permanent: bool = True, export_path=None, verbose: int = 0,
                 algorithm: str = "auto", num_iter=None):
        self.sparsity_schedule = _schedule("sparsity", sparsity, upper=1.0)
        self.lam_schedule = _schedule("lam", lam, upper=None)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 1 < p < float("inf"):
            raise ValueError(f"SmoothPruning: expected p to be a finite float > 1, got p={p!r}")
        if method not in METHODS:
            raise ValueError(f"SmoothPruning: expected method in {METHODS}, got method={method!r}")
        scope_kind, n_keep, m_group = parse_scope("SmoothPruning", scope)
        if scope_kind == "nm" and abs(self.sparsity_schedule.at(10**12) - (1 - n_keep / m_group)) > 1e-12:
            raise ValueError(f"SmoothPruning: expected the sparsity schedule to end at {1 - n_keep / m_group:g} for "
                             f"scope {scope!r}, got {self.sparsity_schedule!r}")
        self._nm = scope_kind == "nm"
        if interval not in INTERVALS:
            raise ValueError(f"SmoothPruning: expected interval in {INTERVALS}, got interval={interval!r}")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"SmoothPruning: expected frequency to be an int >= 1, got frequency={frequency!r}")
        if not isinstance(make_pruning_permanent, bool):
            raise ValueError(f"SmoothPruning: expected make_pruning_permanent to be a bool, got {make_pruning_permanent!r}")
        if export_path is not None and not isinstance(export_path, (str, os.PathLike)):
            raise ValueError(f"SmoothPruning: expected export_path to be a path or None, got {export_path!r}")
        if export_path is not None and os.path.isdir(export_path):
            raise ValueError(f"SmoothPruning: expected export_path to be a file path, got the directory {export_path!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"SmoothPruning: expected verbose in (0, 1, 2), got verbose={verbose!r}")
        check_algorithm_name("SmoothPruning", algorithm)
        if algorithm == "dykstra" and dykstra_q(p) is None:
            raise ValueError(f"SmoothPruning: algorithm='dykstra' supports p=2 and p=4/3 only, got p={p!r}")
        if isinstance(parameters_to_prune, (list, tuple)) and len(parameters_to_prune) == 0:
            raise ValueError("SmoothPruning: expected parameters_to_prune to be None or non-empty, got an empty list")
        self.p, self.method, self.scope = float(p), method, scope
        self.parameters_to_prune, self.exclude = parameters_to_prune, exclude
        self.interval, self.frequency = interval, frequency
        self.make_pruning_permanent, self.export_path = make_pruning_permanent, export_path
        self.verbose, self.algorithm, self.num_iter = verbose, algorithm, num_iter
        if verbose:
            _enable_console_log()
        self.current_sparsity = self.sparsity_schedule.at(0)
        self.current_lam = self.lam_schedule.at(0)
        self._hardened = False  # set when training ended and the model was hardened

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage=None) -> None:
        strategy = type(trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:
            raise RuntimeError(
                f"SmoothPruning: the {strategy} strategy shards parameters, and smoothprune needs each "
                "pruned tensor whole on every rank; use DDP (or a single device)"
            )
        if pruned_tensors(pl_module) or self._hardened:
            return  # already pruned (by the user or an earlier stage), or hardened after fit
        # N:M scopes register at their final pattern; a schedule may ramp toward it
        prune_(pl_module, None if self._nm else self.current_sparsity, lam=self.current_lam, p=self.p,
               method=self.method, targets=self.parameters_to_prune, exclude=self.exclude, scope=self.scope,
               algorithm=self.algorithm, num_iter=self.num_iter)
        set_sparsity_(pl_module, self.current_sparsity)
        if self.verbose and trainer.is_global_zero:
            names = [q for q, *_ in pruned_tensors(pl_module)]
            log.info("SmoothPruning: pruning %d tensors (%s scope, %s): %s", len(names), self.scope, self.method,
                     ", ".join(names))

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

    def on_train_end(self, trainer, pl_module) -> None:
        if self.make_pruning_permanent and pruned_tensors(pl_module):
            harden_(pl_module)
            self._hardened = True
            if self.verbose and trainer.is_global_zero:
                log.info("SmoothPruning: hardened the model\n%s", sparsity_report(pl_module))
        if self.export_path is not None:
            if trainer.is_global_zero:
                save_sparse(pl_module, self.export_path)
                if self.verbose:
                    log.info("SmoothPruning: wrote %s", self.export_path)
            trainer.strategy.barrier("smoothprune_export")

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "sparsity_schedule": self.sparsity_schedule.state_dict(),
            "lam_schedule": self.lam_schedule.state_dict(),
            "current_sparsity": self.current_sparsity,
            "current_lam": self.current_lam,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("version") != 1:
            raise ValueError(f"SmoothPruning: expected a state_dict of version 1, got {state_dict.get('version')!r}")
        self.sparsity_schedule.load_state_dict(state_dict["sparsity_schedule"])
        self.lam_schedule.load_state_dict(state_dict["lam_schedule"])
        self.current_sparsity = float(state_dict["current_sparsity"])
        self.current_lam = float(state_dict["current_lam"])

    # -- internals -------------------------------------------------------------------------------
    def _update(self, pl_module, clock: int) -> None:
        """Moves the schedules to ``clock`` (optimizer steps or epochs) and, every `frequency`
        ticks, writes their values into the model."""
        self.sparsity_schedule.last_step = clock
        self.lam_schedule.last_step = clock
        if clock % self.frequency:
            return
        sparsity, lam = self.sparsity_schedule.value, self.lam_schedule.value
        if sparsity != self.current_sparsity:
            set_sparsity_(pl_module, sparsity)  # global scope re-allocates inside
        elif self.scope == "global":
            refresh_global_(pl_module)  # the weights moved: follow the global top-k
        if lam != self.current_lam:
            set_lam_(pl_module, lam)
        self.current_sparsity, self.current_lam = sparsity, lam

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
