"""Run by test_ddp.py as `python ddp_worker.py OUT_DIR`: Lightning DDP on 2 CPU processes (gloo)
re-launches this script for rank 1; each rank saves what it ended with."""

import os
import sys

import lightning.pytorch as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import smoothprune as sp  # noqa: E402
from smoothprune import schedules  # noqa: E402
from smoothprune.lightning import SmoothPruning  # noqa: E402
from smoothprune.pruning import pruned_tensors  # noqa: E402
from tests.lightning.user_model import loader, make_module_class  # noqa: E402


class SaveMidTraining(L.Callback):
    """Records the masks and k allocation of every rank mid-training (parametrized model)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 10:
            state = {q: getattr(m, n).detach().clone() for q, _, m, n in pruned_tensors(pl_module)}
            state |= {q + ".k": p.k.clone() for q, p, _, _ in pruned_tensors(pl_module)}
            torch.save(state, os.path.join(OUT, f"mid_rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    OUT = sys.argv[1]
    torch.manual_seed(0)
    model = make_module_class(L)()
    callback = SmoothPruning(schedules.Cubic(init=0.0, final=0.9, begin=0, end=20), lam=1e-2, scope="global",
                             export_path=os.path.join(OUT, "model.safetensors"))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=6, callbacks=[callback, SaveMidTraining()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader(batch_size=32))
    torch.save(model.state_dict(), os.path.join(OUT, f"final_rank{trainer.global_rank}.pt"))
    assert sp.sparsity_report(model).total > 0.89
