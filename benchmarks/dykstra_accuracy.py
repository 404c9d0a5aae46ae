"""Accuracy of the Dykstra path (p = 2 and 4/3) against the exact PAV, over lam and iterations.

    python benchmarks/dykstra_accuracy.py

Prints one markdown table per operator: the max absolute error of the output,
max |dykstra - pav|, over rows of weights ~ N(0, 0.05^2) (the pruning scale), float64, and the
same for the gradient of <y, g> with g ~ N(0, 1). tests/ops/test_dykstra.py asserts bounds
taken from this table (ACCURACY_BOUNDS).
"""

from __future__ import annotations

import argparse

import torch

import smoothprune as sp

CASES = [  # (rows, n, k)
    (32, 400, 28),
    (512, 100, 3),
]
LAMS = (1e-4, 1e-3, 1e-2, 1e-1)
ITERS = (10, 30, 100, 1000)
PS = {"2": 2.0, "4/3": 4 / 3}
OPS = {
    "soft_topk_mask": sp.soft_topk_mask,
    "soft_topk_mag": sp.soft_topk_mag,
}


def errors(op, x, k, lam, p, num_iter):
    """Max |output error| and max |gradient error| of Dykstra against PAV."""
    xg = x.clone().requires_grad_()
    cot = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    exact = op(xg, k, lam=lam, p=p)
    (g_exact,) = torch.autograd.grad(exact, xg, cot)
    approx = op(xg, k, lam=lam, p=p, algorithm="dykstra", num_iter=num_iter)
    (g_approx,) = torch.autograd.grad(approx, xg, cot)
    return (exact - approx).abs().max().item(), (g_exact - g_approx).abs().max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for p_name, p in PS.items():
        for name, op in OPS.items():
            print(f"\n`{name}`, p = {p_name}:\n")
            print("| shape (k) | lam | " + " | ".join(f"{t} it." for t in ITERS) + " |")
            print("|---|---|" + "---|" * len(ITERS))
            for rows, n, k in CASES:
                x = 0.05 * torch.randn(rows, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
                for lam in LAMS:
                    cells = []
                    for t in ITERS:
                        e_out, e_grad = errors(op, x, k, lam, p, t)
                        cells.append(f"{e_out:.1e} ({e_grad:.1e})")
                    print(f"| {rows}×{n} ({k}) | {lam:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
