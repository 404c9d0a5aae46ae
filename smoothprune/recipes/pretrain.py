"""Pretraining on a source task, the first half of the fine-tuning protocol (paper §6: a ViT
pretrained with cross-entropy, then fine-tuned with each loss).

`pretrained_checkpoint(cfg)` returns a local weights file for ``cfg.model`` trained with
cross-entropy on ``cfg.pretrain.data``. The file is cached under ``cfg.pretrain.cache_dir``, named
by a hash of everything that determines it (the architecture, the source data, the pretraining
settings), so the runs of a sweep share one pretraining and a changed setting never reuses a
stale file. It is written atomically, with a JSON sidecar that records how it was made and its
source-task test accuracy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("smoothprune.recipes")

# model config keys that do not change the pretrained backbone
_NOT_ARCHITECTURE = ("checkpoint", "num_classes", "in_chans", "image_size", "router")


def check_pretrain_config(pretrain: DictConfig) -> None:
    for key in ("data", "epochs", "lr", "weight_decay", "seed", "cache_dir"):
        if key not in pretrain:
            raise ValueError(f"pretrain.{key}: missing (see conf/pretrain/digits.yaml)")
    for key in ("epochs", "seed"):
        value = pretrain[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "epochs" else 0):
            raise ValueError(f"pretrain.{key}: expected an int >= {1 if key == 'epochs' else 0}, got {value!r}")
    for key in ("lr", "weight_decay"):
        value = pretrain[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "lr" and value == 0):
            raise ValueError(f"pretrain.{key}: expected a number {'> 0' if key == 'lr' else '>= 0'}, got {value!r}")


def _cache_key(cfg: DictConfig) -> str:
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in _NOT_ARCHITECTURE}
    pretrain = {k: v for k, v in OmegaConf.to_container(cfg.pretrain, resolve=True).items() if k != "cache_dir"}
    text = json.dumps({"model": model, "pretrain": pretrain}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrained_checkpoint(cfg: DictConfig) -> str:
    """The path of ``cfg.model`` pretrained on ``cfg.pretrain.data`` with cross-entropy; trains
    and saves it first when the cache does not hold it."""
    from smoothprune.recipes.train import build

    check_pretrain_config(cfg.pretrain)
    key = _cache_key(cfg)
    path = os.path.abspath(os.path.join(str(cfg.pretrain.cache_dir), f"{key}.safetensors"))
    if os.path.isfile(path):
        log.info("pretrained checkpoint %s (cached)", path)
        return path
    from smoothprune.recipes.module import Classifier

    source = build(cfg.pretrain.data, "pretrain.data")
    pl.seed_everything(cfg.pretrain.seed, workers=True, verbose=False)
    model = build(cfg.model, "model", _convert_="all", checkpoint=None, num_classes=source.num_classes,
                  in_chans=source.in_chans, image_size=source.image_size)
    optimizer = functools.partial(torch.optim.AdamW, lr=float(cfg.pretrain.lr),
                                  weight_decay=float(cfg.pretrain.weight_decay))
    module = Classifier(model, torch.nn.CrossEntropyLoss(), optimizer, source.num_classes)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args.update(max_epochs=int(cfg.pretrain.epochs), max_steps=-1, enable_checkpointing=False, logger=False,
                        check_val_every_n_epoch=int(cfg.pretrain.epochs))
    trainer_args.pop("fast_dev_run", None)
    trainer = pl.Trainer(**trainer_args, callbacks=[], default_root_dir=os.path.dirname(path))
    trainer.fit(module, source.train_loader(cfg.pretrain.seed), source.test_loader())
    accuracy = float(trainer.callback_metrics["test/acc_top1"])
    _save_atomically(model, path, {"source_test_acc_top1": accuracy, "epochs": int(cfg.pretrain.epochs),
                                   "config": {"model": OmegaConf.to_container(cfg.model, resolve=True),
                                              "pretrain": OmegaConf.to_container(cfg.pretrain, resolve=True)}})
    log.info("pretrained %s on %s: source test top-1 %.2f%% -> %s", cfg.model._target_, source.name,
             100 * accuracy, path)
    return path


def _save_atomically(model: torch.nn.Module, path: str, info: dict) -> None:
    """The JSON sidecar, then the weights, each through a temporary file: a file at ``path``
    is always complete (the cache trusts it)."""
    from safetensors.torch import save_file

    def write_info(tmp):
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for target, write in ((path[: -len(".safetensors")] + ".json", write_info),
                          (path, lambda tmp: save_file(state, tmp))):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pretrain-")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
