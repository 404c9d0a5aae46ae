"""`train(cfg)`: one recipe run from a composed Hydra config, as plain Python (tests call it).

A run builds the data, model, loss, optimizer and (optionally) the `SmoothPruning` callback
from their config groups, trains with a Lightning Trainer built from ``cfg.trainer``, evaluates
the final model on the test split (a pruned model before and after hardening it), exports it as a
compact sparse file, and writes ``result.json`` (summary metrics, the test-metric curve over training
time, the run's config) into the output directory. `smoothprune.recipes.report` turns the
``result.json`` files of a sweep into a table and a plot.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import statistics
import tempfile

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from smoothprune.export import save_sparse
from smoothprune.pruning import harden_, pruned_tensors, sparsity_report
from smoothprune.recipes.module import Classifier, TrainingClock, check_lr_schedule

log = logging.getLogger("smoothprune.recipes")

# Trainer arguments the recipe sets itself
_RECIPE_TRAINER_ARGS = ("callbacks", "default_root_dir")


def check_config(cfg: DictConfig) -> None:
    """Fails fast, naming the key, on configurations that would fail (or mislead) later."""
    for key in ("name", "arm", "seed", "data", "model", "pruning", "loss", "router", "optimizer", "trainer"):
        if key not in cfg:
            raise ValueError(f"{key}: missing from the config (compose it from conf/config.yaml)")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed: expected an int, got {cfg.seed!r}")
    max_topk = cfg.get("max_topk", 5)
    if isinstance(max_topk, bool) or not isinstance(max_topk, int) or max_topk < 1:
        raise ValueError(f"max_topk: expected an int >= 1, got {max_topk!r}")
    num_classes = cfg.data.num_classes
    k = OmegaConf.select(cfg, "loss.fn.k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes):
        raise ValueError(f"loss.fn.k: expected an int 1 <= k <= data.num_classes={num_classes}, got k={k!r}")
    if cfg.get("pretrain") is not None:
        from smoothprune.recipes.pretrain import check_pretrain_config

        check_pretrain_config(cfg.pretrain)
        if "checkpoint" not in cfg.model:
            raise ValueError(f"pretrain: needs a model that loads a checkpoint (model.checkpoint), got {cfg.model._target_}")
    schedule = cfg.get("lr_schedule")
    if schedule is not None and set(schedule) != {"warmup_steps", "total_steps"}:
        raise ValueError(f"lr_schedule: expected null or {{warmup_steps, total_steps}}, got keys {sorted(schedule)}")
    if schedule is not None:
        check_lr_schedule(schedule.warmup_steps, schedule.total_steps)
    allowed = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", *_RECIPE_TRAINER_ARGS}
    for key in cfg.trainer:
        if key not in allowed:
            hint = " (the recipe sets it)" if key in _RECIPE_TRAINER_ARGS else ""
            raise ValueError(f"trainer.{key}: not an argument of pytorch_lightning.Trainer{hint}")
    if cfg.router.get("topk", "none") not in ("none", None) and "router" not in cfg.model:
        raise ValueError(f"router: router={cfg.router.name} only applies to a mixture-of-experts model "
                         f"(model=vmoe_tiny), got model {cfg.model._target_}")


def build(node: DictConfig, key: str, **kwargs):
    """``hydra.utils.instantiate`` that reports a failing constructor's own error (ours name the
    argument) prefixed by the config key, instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if not isinstance(cause, (ValueError, FileNotFoundError, TypeError)):
            raise
        message = str(cause)
        raise type(cause)(message if message.startswith(key) else f"{key}: {message}") from None


def resolve_output_dir(cfg: DictConfig) -> str:
    if cfg.get("output_dir"):
        return str(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.output_dir
    raise ValueError("output_dir: expected a directory when train() runs outside a Hydra app, got null")


def _write_json(path: str, data: dict) -> None:
    """Writes ``data`` to ``path`` through a temporary file, so a failure leaves no partial file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".result-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _tokens_per_image(model: torch.nn.Module) -> int:
    patch_embed = getattr(model, "patch_embed", None)
    return int(patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0)) if patch_embed else 1


def train(cfg: DictConfig) -> dict:
    """Runs one recipe configuration; returns the result dict also written to ``result.json``.

    Raises:
        ValueError / FileNotFoundError: on a bad configuration or missing data, naming the key.
    """
    check_config(cfg)
    output_dir = resolve_output_dir(cfg)
    os.makedirs(output_dir, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    data = build(cfg.data, "data")
    if cfg.get("pretrain") is not None:  # fine-tuning: start from cfg.model pretrained on a source task
        from smoothprune.recipes.pretrain import pretrained_checkpoint

        checkpoint = pretrained_checkpoint(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the head's init and the data order
        model = build(cfg.model, "model", _convert_="all", checkpoint=checkpoint)
    else:
        model = build(cfg.model, "model", _convert_="all")
    loss_fn = build(cfg.loss.fn, "loss.fn")
    optimizer = build(cfg.optimizer, "optimizer")
    export_path = os.path.join(output_dir, "model.safetensors")
    callbacks = [clock := TrainingClock()]
    if cfg.pruning.callback is not None:
        # hardened below, after measuring the smooth model once more
        callbacks.append(build(cfg.pruning.callback, "pruning.callback", make_pruning_permanent=False,
                               _convert_="all"))
    lr_schedule = cfg.get("lr_schedule")
    lr_schedule = None if lr_schedule is None else OmegaConf.to_container(lr_schedule, resolve=True)
    module = Classifier(model, loss_fn, optimizer, data.num_classes, max_topk=cfg.get("max_topk", 5),
                        lr_schedule=lr_schedule)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = pl.Trainer(**trainer_args, callbacks=callbacks, default_root_dir=output_dir)
    trainer.fit(module, data.train_loader(cfg.seed), data.test_loader())

    # final evaluations by a Trainer without the training callbacks
    evaluator = pl.Trainer(**trainer_args, callbacks=[], default_root_dir=output_dir)

    def evaluate() -> dict:
        return {k: float(v) for k, v in evaluator.validate(module, data.test_loader(), verbose=False)[0].items()}

    before_hardening = None
    if cfg.pruning.callback is not None and cfg.pruning.callback.get("make_pruning_permanent", True):
        for _, spec, _, _ in pruned_tensors(model):
            spec.eval_hard = False  # evaluate the weights training used (eval mode reads the hardened ones)
        before_hardening = evaluate()
        harden_(model)  # exactly-k hard top-k weights, plain Parameters
    final = evaluate()
    # the bare model: loads into a plain model built from this config
    save_sparse(model, export_path)

    steps = clock.step_seconds[3:] or clock.step_seconds  # the first steps include warm-up
    sec_per_step = statistics.median(steps) if steps else float("nan")
    report = sparsity_report(model)
    summary = {f"test_acc_top{k}": final[f"test/acc_top{k}"] for k in module.topks}
    summary["test_error"] = 1.0 - final["test/acc_top1"]
    if before_hardening is not None:  # the smooth (or hard/ste) model at the end of training
        summary["test_error_before_hardening"] = 1.0 - before_hardening["test/acc_top1"]
    summary["sparsity"] = report.total
    summary["export_bytes"] = os.path.getsize(export_path)
    summary["train_seconds"] = clock.train_seconds
    summary["sec_per_step"] = sec_per_step
    if module.moes:
        num_steps = max(len(clock.step_seconds), 1)
        summary["token_coverage"] = final["test/token_coverage"]
        summary["nnz_per_capacity"] = final["test/nnz_per_capacity"]
        summary["router_ms_per_step"] = 1e3 * module.router_seconds / num_steps
        tokens_per_step = data.batch_size * _tokens_per_image(model)  # a full batch, at the median step time
        summary["tokens_per_second"] = tokens_per_step / sec_per_step if sec_per_step > 0 else float("nan")
    result = {
        "name": cfg.name,
        "arm": cfg.arm,
        "seed": cfg.seed,
        "summary": summary,
        "history": clock.history,
        "sparsity_report": {t.name: t.sparsity for t in report.tensors},
        "pruned_tensors": [q for q, *_ in pruned_tensors(model)],  # empty after hardening
        "export_path": export_path,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    _write_json(os.path.join(output_dir, "result.json"), result)
    log.info("%s %s seed %d: test error %.2f%%, sparsity %.4f, %s bytes exported, %.1f s of training (%s)",
             cfg.name, cfg.arm, cfg.seed, 100 * summary["test_error"], summary["sparsity"],
             f"{summary['export_bytes']:,}", clock.train_seconds,
             "nan" if math.isnan(sec_per_step) else f"{1e3 * sec_per_step:.2f} ms/step")
    return result
