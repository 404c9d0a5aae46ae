"""Run by test_lightning_fsdp.py: `python lightning_worker.py OUT MODE SCOPE [RESUME]`.

MODE "sharded": Lightning's ModelParallelStrategy on 2 CPU processes (gloo), the user's
``configure_model`` calling ``fully_shard`` (FSDP2) on every Linear and the root; Lightning
re-launches this script for rank 1. MODE "single": one process on the same global batches. Each
run exports its hardened model to OUT/MODE.safetensors; RESUME ("stop" or "resume") splits the
sharded run in two fits joined by a distributed checkpoint.
"""

import os
import sys
import warnings

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import smoothprune as sp  # noqa: E402
from smoothprune.lightning import SmoothPruning  # noqa: E402
from tests.lightning.user_model import make_data  # noqa: E402

EPOCHS = 2  # of 16 steps: the ramp ends at step 16, hard fine-tuning from step 24


class ShardedClassifier(L.LightningModule):
    def __init__(self, shard: bool):
        super().__init__()
        self.shard = shard
        self.encoder = torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                           torch.nn.ReLU())
        self.head = torch.nn.Linear(32, 4)

    def configure_model(self):
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        for layer in [*self.encoder, self.head]:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=self.device_mesh["data_parallel"])
        fully_shard(self, mesh=self.device_mesh["data_parallel"])

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def train_dataloader(self):
        # 2 ranks x 16 samples interleaved (rank r takes r, r + 2, ...) = the single run's 32 per step
        x, y = make_data(512)
        data = TensorDataset(x.double(), y)
        if not self.shard:
            return DataLoader(data, batch_size=32, shuffle=False)
        sampler = DistributedSampler(data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(data, batch_size=16, sampler=sampler)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class RecordStart(L.Callback):
    """Writes the optimizer step at which training starts (a resumed run starts mid-way)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                f.write(f"{trainer.global_step}\n")


def main(out: str, mode: str, scope: str, resume: str | None) -> None:
    warnings.simplefilter("ignore")
    torch.set_default_dtype(torch.float64)  # (rank-order sums then differ from one process by ~1e-16 only)
    torch.manual_seed(0)
    sharded = mode == "sharded"
    model = ShardedClassifier(shard=sharded)
    sparsity = None if ":" in scope else 0.8
    callback = SmoothPruning(sparsity if sparsity is not None else 0.5, scope=scope, lam=1e-2, ramp=(0.0, 0.5),
                             finetune=0.25, export_path=os.path.join(out, f"{mode}.safetensors"))
    kw = dict(accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_progress_bar=False, enable_model_summary=False,
              use_distributed_sampler=False)
    if sharded:
        from lightning.pytorch.strategies import ModelParallelStrategy

        kw |= dict(devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    else:
        kw |= dict(devices=1)
    callbacks = [callback]
    if resume == "save":  # the whole run, writing a distributed checkpoint after each epoch
        callbacks.append(ModelCheckpoint(dirpath=out, filename="{epoch}", every_n_epochs=1, save_top_k=-1))
    callbacks.append(RecordStart(os.path.join(out, f"{mode}.start")))
    trainer = L.Trainer(callbacks=callbacks, enable_checkpointing=resume == "save", **kw)
    trainer.fit(model, ckpt_path=os.path.join(out, "epoch=0.ckpt") if resume == "resume" else None)
    report = sp.sparsity_report(model)  # (every rank: counting a sharded model's zeros is a collective)
    if trainer.is_global_zero:
        with open(os.path.join(out, f"{mode}.report"), "w") as f:
            f.write(f"{report.total}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
