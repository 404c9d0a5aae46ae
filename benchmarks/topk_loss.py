"""Which target should `SoftTopKLoss` use? The smooth top-k loss with each ``fill`` against
cross-entropy, on small classifiers trained to convergence.

    python benchmarks/topk_loss.py --out docs/results/topk_loss          # runs + report
    python benchmarks/topk_loss.py --report docs/results/topk_loss       # the table from saved runs

Tasks (fixed data, the same split for every run):

* ``digits``: the 5,000 embedded MNIST digits (4,000 train / 1,000 test, `smoothprune.recipes.data`),
  flattened and standardized, 10 classes;
* ``overlap100``: a synthetic 100-class task whose classes overlap: 32-dim Gaussians with unit
  noise around class means drawn from N(0, 0.35^2 I) (20,000 train / 5,000 test, balanced), so
  that even the Bayes classifier is often wrong at top-1 and top-k accuracy is informative.

Models: ``linear`` (one Linear layer) and ``mlp`` (one hidden layer of 256, ReLU). Every run:
Adam lr 1e-3, batch 128, a fixed number of epochs (``EPOCHS``), seeds 0, 1, 2 (initialization
and batch order). Losses: ``cross_entropy``; ``SoftTopKLoss(k=3, lam=1, p=2)`` with
``fill="uniform"``, ``"topk"`` and ``"none"``; ``fill="uniform"`` with lam = 10 and with p = 4/3. Reported: test
top-1..top-5 accuracy (mean ± sample std over seeds) and each loss's difference to cross-entropy.

Each finished run is appended to ``OUT/runs.jsonl`` (a rerun skips what is there) and the
report ``OUT/report.md`` is rewritten from all runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from runlog import append_run, load_runs, mean_std

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

EPOCHS = {"digits": 40, "overlap100": 15}
LOSSES = {
    "cross_entropy": None,
    "topk3_uniform": dict(fill="uniform", p=2.0, lam=1.0),
    "topk3_uniform_lam10": dict(fill="uniform", p=2.0, lam=10.0),
    "topk3_uniform_p4/3": dict(fill="uniform", p=4 / 3, lam=1.0),
    "topk3_topk": dict(fill="topk", p=2.0, lam=1.0),
    "topk3_none": dict(fill="none", p=2.0, lam=1.0),
}
K, TOPKS = 3, (1, 2, 3, 4, 5)


def load_task(name: str):
    """``(train_x, train_y), (test_x, test_y)`` as float32 features and int64 labels."""
    if name == "digits":
        from smoothprune.recipes.data import EmbeddedMNIST

        data = EmbeddedMNIST(num_classes=10, in_chans=1, image_size=28)
        (tx, ty), (vx, vy) = data.train_set.tensors, data.test_set.tensors
        return (tx.flatten(1), ty), (vx.flatten(1), vy)
    if name == "overlap100":
        g = torch.Generator().manual_seed(1234)
        classes, dim = 100, 32
        means = 0.35 * torch.randn(classes, dim, generator=g)

        def sample(per_class):
            y = torch.arange(classes).repeat_interleave(per_class)
            return means[y] + torch.randn(len(y), dim, generator=g), y

        return sample(200), sample(50)
    raise ValueError(f"task: expected 'digits' or 'overlap100', got {name!r}")


def build_model(name: str, in_features: int, classes: int) -> torch.nn.Module:
    if name == "linear":
        return torch.nn.Linear(in_features, classes)
    if name == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(in_features, 256), torch.nn.ReLU(), torch.nn.Linear(256, classes))
    raise ValueError(f"model: expected 'linear' or 'mlp', got {name!r}")


def build_loss(name: str):
    import smoothprune as sp

    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {list(LOSSES)}, got {name!r}")
    kwargs = LOSSES[name]
    return torch.nn.CrossEntropyLoss() if kwargs is None else sp.SoftTopKLoss(k=K, **kwargs)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    ranked = logits.topk(max(TOPKS), dim=-1).indices
    hit = ranked == labels.unsqueeze(-1)
    return {f"top{k}": float(hit[:, :k].any(-1).float().mean()) for k in TOPKS}


def run(task: str, model_name: str, loss_name: str, seed: int, data) -> dict:
    (tx, ty), (vx, vy) = data
    torch.manual_seed(seed)
    model = build_model(model_name, tx.shape[1], int(ty.max()) + 1)
    loss_fn = build_loss(loss_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(EPOCHS[task]):
        for idx in torch.randperm(len(ty), generator=order).split(128):
            loss = loss_fn(model(tx[idx]), ty[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        accuracy = topk_accuracy(model(vx), vy)
    return {"task": task, "model": model_name, "loss": loss_name, "seed": seed, "epochs": EPOCHS[task],
            "train_seconds": seconds, **accuracy}


def summary(runs: list[dict]) -> list[str]:
    """One table: top-1 and top-3 accuracy of every loss in every (task, model) cell."""
    cells = [(t, m) for t in EPOCHS for m in ("linear", "mlp") if any(r["task"] == t and r["model"] == m for r in runs)]
    lines = ["| loss | " + " | ".join(f"{t} {m} top-{k}" for t, m in cells for k in (1, K)) + " |",
             "|---" * (1 + 2 * len(cells)) + "|"]
    for loss_name in LOSSES:
        row = []
        for task, model_name in cells:
            mine = [r for r in runs if (r["task"], r["model"], r["loss"]) == (task, model_name, loss_name)]
            for k in (1, K):
                row.append("%.1f ± %.1f" % mean_std([100 * r[f"top{k}"] for r in mine]) if mine else "–")
        lines.append(f"| {loss_name} | " + " | ".join(row) + " |")
    return lines


def report(out: str) -> str:
    runs = load_runs(out)
    lines = ["# Smooth top-k loss targets vs cross-entropy", "",
             f"`SoftTopKLoss(k={K})` (lam = 1 unless the name says otherwise); test accuracy (%), mean ± std over seeds "
             "(`python benchmarks/topk_loss.py`). Δ: the loss's mean minus cross-entropy's, in points.", "",
             "## Summary (top-1 and top-3)", "", *summary(runs), ""]
    for task in EPOCHS:
        for model_name in ("linear", "mlp"):
            cell = [r for r in runs if r["task"] == task and r["model"] == model_name]
            if not cell:
                continue
            lines += [f"## {task}, {model_name} ({EPOCHS[task]} epochs)", "",
                      "| loss | seeds | " + " | ".join(f"top-{k}" for k in TOPKS) + " | "
                      + " | ".join(f"Δ top-{k}" for k in TOPKS) + " |",
                      "|---" * (2 + 2 * len(TOPKS)) + "|"]
            ce = {k: mean_std([100 * r[f"top{k}"] for r in cell if r["loss"] == "cross_entropy"] or [float("nan")])[0]
                  for k in TOPKS}
            for loss_name in LOSSES:
                mine = [r for r in cell if r["loss"] == loss_name]
                if not mine:
                    continue
                stats = {k: mean_std([100 * r[f"top{k}"] for r in mine]) for k in TOPKS}
                lines.append(f"| {loss_name} | {len(mine)} | "
                             + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in stats.values()) + " | "
                             + " | ".join(f"{stats[k][0] - ce[k]:+.2f}" for k in TOPKS) + " |")
            lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/topk_loss")
    parser.add_argument("--tasks", default=",".join(EPOCHS))
    parser.add_argument("--models", default="linear,mlp")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report", metavar="OUT", help="only rewrite OUT/report.md from OUT/runs.jsonl")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    done = {(r["task"], r["model"], r["loss"], r["seed"]) for r in load_runs(args.out)}
    for task in args.tasks.split(","):
        data = load_task(task)
        for model_name in args.models.split(","):
            for loss_name in args.losses.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    if (task, model_name, loss_name, seed) in done:
                        continue
                    result = run(task, model_name, loss_name, seed, data)
                    print(json.dumps(result), flush=True)
                    append_run(args.out, result)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
