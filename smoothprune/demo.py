"""`make demo` for now: a short tour of the operators (the recipes issue turns it into the
MLP-pruning recipe)."""

from __future__ import annotations

import time

import torch

import smoothprune as sp


def main() -> None:
    torch.manual_seed(0)
    x = torch.tensor([-5.0, -2.0, 3.0, 1.0])
    print("x                          ", x.tolist())
    print("soft_topk_mask(k=2, 1e-2)  ", sp.soft_topk_mask(x, 2, lam=1e-2).tolist())
    print("soft_topk_mag(k=2, 1e-2)   ", sp.soft_topk_mag(x, 2, lam=1e-2).tolist())
    print("soft_topk_mask(k=2, lam=5) ", [round(v, 4) for v in sp.soft_topk_mask(x, 2, lam=5.0, p=2).tolist()])
    ties = torch.tensor([0.0, 0.0, -5.0, 5.0])
    print("ties split evenly          ", sp.soft_topk_mask(ties, 2, lam=1e-2, p=2).tolist())

    w = (0.05 * torch.randn(32, 784)).requires_grad_()
    k = 78
    for lam in (1e-4, 1e-3, 1e-2):
        y = sp.soft_topk_mag(w, k, lam=lam, p=4 / 3)
        nnz = (y != 0).sum(dim=1).float().mean().item()
        print(f"784-wide rows, k={k}, lam={lam:g}: mean nonzeros per row {nnz:.1f}, "
              f"max |y - hard| {(y - sp.hard_topk_mag(w, k)).abs().max().item():.2e}")
    y = sp.soft_topk_mag(w, k, lam=1e-3, p=2)
    y.square().sum().backward()
    print("gradient finite:", bool(torch.isfinite(w.grad).all()), " nonzeros:", int((w.grad != 0).sum()))

    x = 0.05 * torch.randn(1, 25_088)
    t0 = time.perf_counter()
    for _ in range(20):
        sp.soft_topk_mag(x, 2509, lam=1e-3, p=2)
    t1 = time.perf_counter()
    for _ in range(20):
        torch.sort(x, dim=-1)
    t2 = time.perf_counter()
    print(f"1x25,088 soft_topk_mag: {(t1 - t0) / 20 * 1e3:.2f} ms   torch.sort: {(t2 - t1) / 20 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
