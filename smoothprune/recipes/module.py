"""The recipes' LightningModule (one classifier for all three applications) and the callback
that records test metrics against training time."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
import torchmetrics

from smoothprune.nn.router import SparseMoE


def _synchronize(device: torch.device) -> None:
    """Waits for queued CUDA work, so that wall-clock timings mean something on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Classifier(pl.LightningModule):
    """Trains ``model`` with ``loss_fn``; validation reports top-1..top-k accuracy
    (torchmetrics) and, for a mixture of experts, routing statistics.

    Args:
        model: any classifier ``images -> logits``.
        loss_fn: ``(logits, labels) -> loss`` (cross-entropy or a `SoftTopKLoss`).
        optimizer: a callable ``params -> torch.optim.Optimizer`` (Hydra ``_partial_``).
        num_classes: for the accuracy metrics.
        max_topk: report top-1 ... top-``max_topk`` accuracy.
        lr_schedule: ``None`` (constant learning rate) or ``{"warmup_steps": W, "total_steps": T}``:
            linear warm-up from 0 over W steps, then cosine decay to 0 at step T (`warmup_cosine`).
    """

    def __init__(self, model: torch.nn.Module, loss_fn, optimizer, num_classes: int, max_topk: int = 5,
                 lr_schedule: dict | None = None):
        super().__init__()
        self.model, self.loss_fn, self.optimizer_factory = model, loss_fn, optimizer
        self.lr_schedule = lr_schedule
        self.topks = list(range(1, min(max_topk, num_classes) + 1))
        self.accuracy = torch.nn.ModuleDict({
            f"top{k}": torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for k in self.topks
        })
        self.moes = [m for m in model.modules() if isinstance(m, SparseMoE)]
        self.router_seconds = 0.0  # forward time of every router, summed over training steps
        for moe in self.moes:
            moe.router.register_forward_pre_hook(self._router_start)
            moe.router.register_forward_hook(self._router_end)

    def _router_start(self, module, args):
        if self.training:
            _synchronize(args[0].device)
            self._router_t0 = time.perf_counter()

    def _router_end(self, module, args, output):
        if self.training:
            _synchronize(args[0].device)
            self.router_seconds += time.perf_counter() - self._router_t0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        # summed here and logged once per epoch: a `self.log` per step costs as much as a tiny MLP's step
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1
        return loss

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self):
        self.log("train/loss", self._loss_sum / max(self._loss_count, 1), prog_bar=True)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test/cross_entropy", torch.nn.functional.cross_entropy(logits, y), on_epoch=True)
        for k in self.topks:
            self.accuracy[f"top{k}"](logits, y)
            self.log(f"test/acc_top{k}", self.accuracy[f"top{k}"], on_epoch=True, prog_bar=k == 1)
        if self.moes:
            routings = [m.last_routing for m in self.moes]
            self.log("test/token_coverage", torch.stack([r.coverage() for r in routings]).mean(), on_epoch=True)
            self.log("test/nnz_per_capacity", torch.stack([r.nnz_per_capacity() for r in routings]).mean(),
                     on_epoch=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_schedule is None:
            return optimizer
        scheduler = warmup_cosine(optimizer, **self.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """The learning rate times ``(s + 1) / (W + 1)`` for the first ``W = warmup_steps`` steps (no
    step at lr 0), then times
    ``(1 + cos(pi (s - W) / (T - W))) / 2``, reaching 0 at ``T = total_steps``."""
    check_lr_schedule(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_lr_schedule(warmup_steps, total_steps) -> None:
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"lr_schedule.warmup_steps: expected an int >= 0, got {warmup_steps!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= warmup_steps:
        raise ValueError(f"lr_schedule.total_steps: expected an int > warmup_steps={warmup_steps}, got {total_steps!r}")


class TrainingClock(pl.Callback):
    """Measures training time (optimizer steps only, validation excluded) and records the test
    metrics after every validation run during ``fit``: the "test error over training time" curve.

    Attributes:
        history: one dict per validation: ``epoch``, ``step``, ``train_seconds`` and the logged
            ``test/*`` metrics.
        step_seconds: wall time of every training step (forward, backward, optimizer step).
    """

    def __init__(self):
        self.history: list[dict] = []
        self.step_seconds: list[float] = []
        self.train_seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _synchronize(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _synchronize(pl_module.device)
        seconds = time.perf_counter() - self._t0
        self.step_seconds.append(seconds)
        self.train_seconds += seconds

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self.history.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                             "train_seconds": self.train_seconds, **metrics})
