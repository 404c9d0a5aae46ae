"""How `SmoothPruning` works with the other callbacks of a Trainer, as they are.

* A monitored ``ModelCheckpoint`` ranks only checkpoints written at the target sparsity: while
  the sparsity schedule ramps, its top-k save (and so the ``last.ckpt`` copy that Lightning
  writes beside it) is skipped, so a checkpoint from the ramp can never become "best".
* ``EarlyStopping`` does not check while the schedule ramps; when the target is reached its
  patience and best score start afresh.
* Weight averaging (``WeightAveraging`` / ``EMAWeightAveraging``): the averaged copy of the
  model is pruned with the same specs, so the checkpoints it writes (Lightning puts the
  averaged weights in ``state_dict``) hold the averaged weights hardened at the current k.

Each adaptation wraps one method of that callback instance (the class is untouched) and is
undone by `Gates.restore`.
"""

from __future__ import annotations

import torch

from smoothprune.nn.pruned import attach_, detach_, specs_of

__all__ = ["Gates", "averaged_models"]


def _is(callback, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(callback).__mro__)


def averaged_models(trainer) -> dict[str, torch.nn.Module]:
    """The averaged copies of the model kept by weight-averaging callbacks, by callback state key:
    ``WeightAveraging`` (and subclasses such as ``EMAWeightAveraging``) keep an ``AveragedModel``
    whose ``module`` is a copy of the LightningModule."""
    found = {}
    for cb in trainer.callbacks:
        average = getattr(cb, "_average_model", None)
        if _is(cb, "WeightAveraging") and isinstance(average, torch.optim.swa_utils.AveragedModel):
            found[cb.state_key] = average.module
    return found


def mirror_pruning_(source: torch.nn.Module, copy: torch.nn.Module) -> None:
    """Prunes the same tensors of ``copy`` (a structural copy of ``source``) with the same specs."""
    modules = dict(copy.named_modules())
    for mod_name, module in source.named_modules():
        for name, spec in specs_of(module).items():
            if mod_name in modules:
                attach_(modules[mod_name], name, spec)


def unmirror_(copy: torch.nn.Module) -> None:
    for module in copy.modules():
        for name in list(specs_of(module)):
            detach_(module, name)


class Gates:
    """The wrapped methods of the other callbacks, restored by `restore`."""

    def __init__(self):
        self._undo = []

    def _wrap(self, callback, method: str, make) -> bool:
        original = getattr(callback, method, None)
        if original is None:  # another Lightning version: leave it alone
            return False
        callback.__dict__[method] = make(original)
        self._undo.append((callback, method))
        return True

    def hold_checkpoints(self, trainer, at_target) -> list:
        """Monitored ModelCheckpoints skip their top-k save until ``at_target()``."""
        held = []
        for cb in trainer.callbacks:
            if _is(cb, "ModelCheckpoint") and getattr(cb, "monitor", None) is not None:
                def make(original):
                    def save_topk(trainer, monitor_candidates):
                        if at_target():
                            original(trainer, monitor_candidates)
                    return save_topk
                if self._wrap(cb, "_save_topk_checkpoint", make):
                    held.append(cb)
        return held

    def hold_early_stopping(self, trainer, at_target) -> list:
        """EarlyStopping skips its checks until ``at_target()``."""
        held = []
        for cb in trainer.callbacks:
            if _is(cb, "EarlyStopping"):
                def make(original):
                    def should_skip(trainer):
                        return original(trainer) or not at_target()
                    return should_skip
                if self._wrap(cb, "_should_skip_check", make):
                    held.append(cb)
        return held

    @staticmethod
    def restart_patience(callbacks) -> None:
        """The target is reached: EarlyStopping's patience and best score start afresh."""
        for cb in callbacks:
            cb.wait_count = 0
            cb.best_score = torch.tensor(float("inf") if cb.monitor_op == torch.lt else float("-inf"))

    def restore(self) -> None:
        for callback, method in reversed(self._undo):
            callback.__dict__.pop(method, None)
        self._undo.clear()
