"""Operator benchmark: smooth top-k (PAV) against torch.sort and the hard top-k, one process,
one run, medians of interleaved repeats, printed as a markdown table of times and ratios.

    python benchmarks/bench_ops.py [--repeats 50] [--threads N]

Inputs ~ N(0, 0.05^2) (pruning scale), lam = 1e-3, float32, CPU. Each repeat times every method
once, in turn, so that machine noise hits all of them alike; a timed call that takes under 1 ms
is repeated within the timing until 1 ms has passed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import smoothprune as sp

SHAPES = [  # (rows, n, k)
    (1, 25_088, 2_509),
    (1, 4_096, 410),
    (32, 400, 28),
    (512, 100, 3),
    (256, 1_024, 102),
]
LAM = 1e-3


def _time(fn, min_seconds=1e-3) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def _methods(x: torch.Tensor, k: int):
    xg = x.clone().requires_grad_()
    grad = torch.randn_like(x)

    def fwd_bwd(op):
        def run():
            xg.grad = None
            op(xg).backward(grad)

        return run

    ops = {
        "torch.sort": lambda t: torch.sort(t, dim=-1, descending=True).values,
        "hard_topk_mag": lambda t: sp.hard_topk_mag(t, k),
        "soft_topk_mag p=2": lambda t: sp.soft_topk_mag(t, k, lam=LAM, p=2),
        "soft_topk_mag p=4/3": lambda t: sp.soft_topk_mag(t, k, lam=LAM, p=4 / 3),
        "soft_topk_mask p=2": lambda t: sp.soft_topk_mask(t, k, lam=LAM, p=2),
        "soft_topk_mask p=4/3": lambda t: sp.soft_topk_mask(t, k, lam=LAM, p=4 / 3),
    }
    fwd = {name: (lambda op=op: op(x)) for name, op in ops.items()}
    both = {name: fwd_bwd(op) for name, op in ops.items()}
    return fwd, both


def bench(repeats: int):
    torch.manual_seed(0)
    results = []
    for rows, n, k in SHAPES:
        x = 0.05 * torch.randn(rows, n)
        fwd, both = _methods(x, k)
        timings = {("fwd", m): [] for m in fwd} | {("fwd+bwd", m): [] for m in both}
        for fn in list(fwd.values()) + list(both.values()):
            fn()  # warm-up
        for _ in range(repeats):
            for m, fn in fwd.items():
                timings[("fwd", m)].append(_time(fn))
            for m, fn in both.items():
                timings[("fwd+bwd", m)].append(_time(fn))
        medians = {key: statistics.median(v) for key, v in timings.items()}
        results.append(((rows, n, k), medians))
    return results


def print_tables(results) -> bool:
    ok = True
    for mode in ("fwd", "fwd+bwd"):
        print(f"\n### {mode} (median ms; ratio to torch.sort / to hard_topk_mag {mode})\n")
        names = [m for (md, m) in results[0][1] if md == mode]
        print("| shape (k) | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for (rows, n, k), med in results:
            sort_t, hard_t = med[(mode, "torch.sort")], med[(mode, "hard_topk_mag")]
            cells = []
            for m in names:
                t = med[(mode, m)]
                cell = f"{t * 1e3:.3f}"
                if m.startswith("soft"):
                    cell += f" ({t / sort_t:.2f}× / {t / hard_t:.2f}×)"
                    if mode == "fwd" and t / sort_t > 1.5:
                        ok = False
                cells.append(cell)
            print(f"| {rows}×{n:,} ({k}) | " + " | ".join(cells) + " |")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, smoothprune {sp.__version__}")
    ok = print_tables(bench(args.repeats))
    print("\nbar (PAV forward within 1.5× of torch.sort on every shape):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
