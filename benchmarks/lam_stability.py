"""How small can lam be? Training stability of smooth pruning against lam, with momentum.

    python benchmarks/lam_stability.py

A 24-64-64-4 MLP on a synthetic 4-class task (`make_data`: the task of the Lightning tests' user
model), 80% layer sparsity from the first step, SGD lr 0.05 with momentum 0.9, 20 epochs of 8
batches; prints the test accuracy (1,024 held-out points) and the largest training loss seen,
for the dense and hard top-k baselines and for smooth p=2 and p=4/3 over lam.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import smoothprune as sp  # noqa: E402


def make_data(n=512, seed=0):
    """n points of 24 features ~ N(0, 1); the class (of 4) is two linear rules of five features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=g)
    y = (x[:, :4] @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long() + 2 * (x[:, 4] > 0).long()
    return x, y


def run(method=None, lam=1e-2, p=2.0):
    x, y = make_data(512, 0)
    x_test, y_test = make_data(1024, 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 4))
    if method:
        sp.prune_(model, 0.8, lam=lam, p=p, method=method)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    worst = 0.0
    for _ in range(20):
        for i in range(0, 512, 64):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            worst = max(worst, loss.item())
    if method:
        sp.harden_(model)
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    return acc, worst


def main():
    acc, worst = run()
    print(f"dense: test accuracy {acc:.3f} (max train loss {worst:.3g})")
    acc, worst = run("hard")
    print(f"hard top-k: test accuracy {acc:.3f} (max train loss {worst:.3g})\n")
    lams = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    print("| λ | " + " | ".join(f"{lam:g}" for lam in lams) + " |")
    print("|---|" + "---|" * len(lams))
    for p, name in ((2.0, "smooth p=2"), (4 / 3, "smooth p=4/3")):
        cells = []
        for lam in lams:
            acc, worst = run("smooth", lam, p)
            cells.append(f"{acc:.2f}" + (" (diverged)" if worst > 10 else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
