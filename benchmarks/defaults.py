"""Are SmoothPruning's defaults good? Defaults vs tuned smooth configurations vs gradual
magnitude pruning vs Lightning's ModelPruning, through real Lightning Trainers.

    python benchmarks/defaults.py --models mlp,cnn --out docs/results/defaults
    python benchmarks/defaults.py --report docs/results/defaults   # the table from saved runs

Every run: the embedded MNIST digits (4,000 training / 1,000 test, `smoothprune.recipes.data`),
batch 64, 90% sparsity of every Linear/Conv weight (layer scope), one optimizer of
SGD (lr 0.1), SGD + momentum 0.9 (lr 0.02) or AdamW (lr 1e-3, weight decay 0.01), constant
learning rate; test accuracy of the final, hardened model. Arms:

* ``dense``: no pruning;
* ``default``: ``SmoothPruning(0.9)``, nothing else set;
* ``gmp``: gradual magnitude pruning, ``SmoothPruning(0.9, method="hard")`` (the same ramp);
* ``lightning``: Lightning's ``ModelPruning("l1_unstructured")`` on the same weights, the same
  cubic ramp applied per epoch, made permanent at the end;
* the tuning grid of the smooth operator: ``BASE`` (λ = 0.5 relative, p = 4/3, ramp (0, 0.5),
  finetune 0.25) with one change: ``lam{λ}_p2``, ``lam{λ}_p4/3_abs`` (the operator's absolute
  λ), ``lam{λ}_p4/3_rel`` (λ relative to each tensor's scale, ``relative_lam=True``),
  ``ramp{end}`` (ramp ``(0, end)``), ``finetune{f}`` (the last ``f`` of training fine-tunes
  the hard-pruned weights).

Each finished run is appended to ``OUT/runs.jsonl`` (a rerun skips what is there), and the
table ``OUT/report.md`` is rewritten from all runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

from runlog import append_run, load_runs, mean_std

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SPARSITY = 0.9
EPOCHS = {"mlp": 10, "cnn": 10, "vit": 4}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01),
}
# The tuning grid: each arm is BASE with the named change, whatever the callback's defaults are.
BASE = dict(lam=0.5, p=4 / 3, relative_lam=True, ramp=(0.0, 0.5), finetune=0.25)
GRID = {f"lam{lam:g}_p2": BASE | dict(lam=lam, p=2.0) for lam in (1e-3, 1e-2, 1e-1, 1.0)}
GRID |= {f"lam{lam:g}_p4/3_abs": BASE | dict(lam=lam, relative_lam=False) for lam in (1e-3, 1e-2, 1e-1, 1.0)}
GRID |= {f"lam{lam:g}_p4/3_rel": BASE | dict(lam=lam) for lam in (0.3, 0.5, 0.7, 1.0, 3.0)}
GRID |= {f"ramp{end:g}": BASE | dict(ramp=(0.0, end)) for end in (0.3, 0.7)}
GRID |= {f"finetune{f:g}": BASE | dict(finetune=f) for f in (0.0, 0.1, 0.5)}
ARMS = ["dense", "default", "gmp", "lightning", *GRID]


def build_model(name: str) -> torch.nn.Module:
    from smoothprune.recipes.models import mlp, vit

    if name == "mlp":  # the MNIST MLP of a popular Lightning template
        return mlp(in_chans=1, image_size=28, num_classes=10, hidden=(64, 128, 64))
    if name == "cnn":
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    if name == "vit":  # ViT-Tiny: embed 192, 12 blocks, 3 heads; patch 7 -> 16 tokens
        return vit(in_chans=1, image_size=28, num_classes=10, patch_size=7)
    raise ValueError(f"--models: expected mlp, cnn or vit, got {name!r}")


def prunable(model):
    return [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def make_module(net, optimizer: str):
    import lightning.pytorch as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return OPTIMIZERS[optimizer](self.parameters())

    return Module()


def cubic(t: float) -> float:
    return SPARSITY * (1.0 - (1.0 - min(max(t, 0.0), 1.0)) ** 3)


def arm_config(arm: str) -> dict | None:
    """The arguments the arm gives SmoothPruning on top of its defaults (None: not SmoothPruning)."""
    if arm in ("dense", "lightning"):
        return None
    if arm == "default":
        return {}
    if arm == "gmp":
        return {"method": "hard"}
    return dict(GRID[arm])


def callbacks_for(arm: str, net, epochs: int):
    from lightning.pytorch.callbacks import ModelPruning

    from smoothprune.lightning import SmoothPruning

    if arm == "dense":
        return []
    if arm == "lightning":
        # ModelPruning prunes a fraction of the remaining weights at each epoch's end: the
        # increments that follow the cubic ramp over the first half of training
        ramp = max(1, round(0.5 * epochs))

        def amount(epoch: int) -> float:
            before, after = cubic(epoch / ramp), cubic((epoch + 1) / ramp)
            return 0.0 if after <= before else 1.0 - (1.0 - after) / (1.0 - before)

        return [ModelPruning("l1_unstructured", parameters_to_prune=prunable(net), amount=amount,
                             use_global_unstructured=False, make_pruning_permanent=True, verbose=0)]
    return [SmoothPruning(SPARSITY, **arm_config(arm))]


def run(model_name: str, optimizer: str, arm: str, seed: int) -> dict:
    import lightning.pytorch as L

    from smoothprune.recipes.data import EmbeddedMNIST

    L.seed_everything(seed, workers=True, verbose=False)
    data = EmbeddedMNIST(batch_size=64, num_classes=10, in_chans=1, image_size=28)
    net = build_model(model_name)
    module = make_module(net, optimizer)
    epochs = EPOCHS[model_name]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks_for(arm, net, epochs))
    start = time.perf_counter()
    trainer.fit(module, data.train_loader(seed))
    seconds = time.perf_counter() - start
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data.test_loader():
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    weights = [w for m, n in prunable(net) for w in [getattr(m, n)]]
    sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {"model": model_name, "optimizer": optimizer, "arm": arm, "seed": seed, "test_acc": correct / total,
            "sparsity": sparsity, "seconds": seconds, "config": arm_config(arm)}


def report(out: str) -> str:
    runs = load_runs(out)
    combos = sorted({(r["model"], r["optimizer"]) for r in runs},
                    key=lambda c: (list(EPOCHS).index(c[0]), list(OPTIMIZERS).index(c[1])))
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    cell = {}
    for combo in combos:
        for arm in arms:
            accs = [100 * r["test_acc"] for r in runs if (r["model"], r["optimizer"]) == combo and r["arm"] == arm]
            if accs:
                cell[combo, arm] = (*mean_std(accs), len(accs))
    lines = ["| arm | " + " | ".join(f"{m} {o}" for m, o in combos) + " |",
             "|---|" + "---|" * len(combos)]
    for arm in arms:
        row = [f"{cell[c, arm][0]:.1f} ± {cell[c, arm][1]:.1f}" if (c, arm) in cell else "–" for c in combos]
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    # the bar: default vs the best tuned smooth arm and vs gradual magnitude pruning, per column
    tuned = [a for a in arms if a in GRID or a == "default"]
    best_row, gap_row, gmp_row = [], [], []
    for c in combos:
        if (c, "default") not in cell:
            best_row.append("–"), gap_row.append("–"), gmp_row.append("–")
            continue
        best = max((a for a in tuned if (c, a) in cell), key=lambda a: cell[c, a][0])
        best_row.append(best)
        gap_row.append(f"{cell[c, 'default'][0] - cell[c, best][0]:+.1f}")
        gmp_row.append(f"{cell[c, 'default'][0] - cell[c, 'gmp'][0]:+.1f}" if (c, "gmp") in cell else "–")
    lines.append("| best tuned smooth arm | " + " | ".join(best_row) + " |")
    lines.append("| default − best tuned (points) | " + " | ".join(gap_row) + " |")
    lines.append("| default − gmp (points) | " + " | ".join(gmp_row) + " |")
    seeds = ", ".join(f"{m}: {sorted({r['seed'] for r in runs if r['model'] == m})}"
                      for m in EPOCHS if any(r["model"] == m for r in runs))
    sparsities = sorted({round(r["sparsity"], 4) for r in runs if r["arm"] != "dense"})
    text = (f"Test accuracy (%) after hardening, mean ± std over the seeds ({seeds}); sparsity of the pruned "
            f"weights in every pruned run: {sparsities}.\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,cnn,vit")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="docs/results/defaults")
    parser.add_argument("--report", metavar="OUT", help="only rewrite the table of OUT from its saved runs")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}, expected some of {ARMS}")
    os.makedirs(args.out, exist_ok=True)
    done = {(r["model"], r["optimizer"], r["arm"], r["seed"]) for r in load_runs(args.out)}
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for model_name in args.models.split(","):
        for optimizer in args.optimizers.split(","):
            for arm in arms:
                for seed in map(int, args.seeds.split(",")):
                    if (model_name, optimizer, arm, seed) in done:
                        continue
                    result = run(model_name, optimizer, arm, seed)
                    append_run(args.out, result)
                    print(f"{model_name} {optimizer} {arm} seed {seed}: test acc {100 * result['test_acc']:.2f}%, "
                          f"sparsity {result['sparsity']:.4f}, {result['seconds']:.1f} s", flush=True)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
