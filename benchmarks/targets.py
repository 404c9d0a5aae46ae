"""The project's performance goals (the "bars" of the performance issues), checked against what
`smoothprune bench` measures. The library (smoothprune/bench.py, smoothprune/bench_infer.py)
only measures and prints tables; the goals are the project's, so they live here.

    python benchmarks/targets.py [ops|step|infer|all] [--device cpu|cuda] [--repeats N] ...

takes `smoothprune bench`'s arguments, prints its tables, then one line per goal ("met" or
"NOT met", with the measured ratio). `python benchmarks/bench_ops.py` and
`python benchmarks/bench_pruning_step.py` are this for ops and step. The exit status is 0 either
way: the goals are read against the tables (docs/benchmarks.md), not enforced.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from smoothprune import bench  # noqa: E402
from smoothprune.bench_infer import WIDE_MLP  # noqa: E402

SOFT_METHODS = ("mag p=2", "mag p=4/3", "mask p=2", "mask p=4/3")
FWD_LIMIT = {"cpu": 1.5, "cuda": 2.0}  # every smooth forward within this many times hard_topk_mag's
FWD_BWD_LIMIT_CPU = 2.5                # every smooth forward + backward within 2.5× the hard one's (CPU)
P43_LIMIT_CPU = 1.3                    # p = 4/3 forward within 1.3× p = 2's (CPU)
LARGE_LAM_LIMIT = 1.3                  # a whole-row window (lam = 1e3) within 1.3× torch.sort
STEP_LIMIT = {"vit": 1.3, "mlp": 1.15}  # a smoothly pruned training step within this many times unpruned
INFER_SPEEDUP_95 = 3.0                 # the wide MLP at 95%, batch 32: sparsify_ at least 3× faster
INFER_BYTES_90 = 0.25                  # the wide MLP at 90%: weights at most 0.25 of dense


def ops_bars(results: dict, device) -> dict:
    """{goal: (met, ratio)} of `bench.bench_ops`'s results."""
    bars = {}
    device_type = getattr(device, "type", device)
    limit = FWD_LIMIT["cuda" if device_type == "cuda" else "cpu"]
    for mode in ("fwd", "fwd+bwd"):
        for shape, med in results.items():
            hard = med[(mode, "hard_topk_mag")]
            worst = max(med[(mode, m)] / hard for m in SOFT_METHODS)
            if mode == "fwd":
                bars[f"fwd within {limit}× of hard_topk_mag, {shape}"] = (worst <= limit, worst)
            elif device_type == "cpu":
                bars[f"fwd+bwd within {FWD_BWD_LIMIT_CPU}× of hard fwd+bwd, {shape}"] = (worst <= FWD_BWD_LIMIT_CPU, worst)
            if device_type == "cpu" and mode == "fwd":
                r = max(med[(mode, f"{kind} p=4/3")] / med[(mode, f"{kind} p=2")] for kind in ("mag", "mask"))
                bars[f"p=4/3 within {P43_LIMIT_CPU}× of p=2, {shape}"] = (r <= P43_LIMIT_CPU, r)
    return bars


def large_lam_bars(results: dict) -> dict:
    """{goal: (met, ratio)} of `bench.bench_large_lam`'s results."""
    bars = {}
    for shape, med in results.items():
        worst = max(med[m] / med["torch.sort"] for m in bench.LARGE_LAM_METHODS)
        bars[f"whole-row window within {LARGE_LAM_LIMIT}× of torch.sort, {shape}"] = (worst <= LARGE_LAM_LIMIT, worst)
    return bars


def step_bars(results: dict) -> dict:
    """{goal: (met, ratio)} of `bench.run_steps`'s results."""
    bars = {}
    for (model, p), r in results.items():
        limit = STEP_LIMIT[model]
        ratio = r["seconds"]["smooth"] / r["seconds"]["unpruned"]
        bars[f"training step ≤ {limit}× unpruned, {r['label']}, p={p:.3g}"] = (ratio <= limit, ratio)
    return bars


def infer_bars(results: dict) -> dict:
    """{goal: (met, value)} of `bench_infer.run_infer`'s results: the wide MLP's, pruned per layer
    (elsewhere the ratios are within timing noise)."""
    bars = {}
    for (title, scope, sparsity), r in results.items():
        if title != WIDE_MLP or scope != "layer":
            continue
        for b, ms in r["ms"].items():
            for k in ("rule", "timed"):
                bars[f"{WIDE_MLP} at {sparsity:.0%}, batch {b}: sparsify_ ({k}) never slower than dense"] = (
                    ms[k] <= ms["dense"], ms["dense"] / ms[k])
        if sparsity == 0.95:
            ratio = r["ms"][32]["dense"] / r["ms"][32]["rule"]
            bars[f"{WIDE_MLP} at 95%, batch 32: sparsify_ at least {INFER_SPEEDUP_95:g}× faster"] = (
                ratio >= INFER_SPEEDUP_95, ratio)
        if sparsity == 0.9:
            frac = r["bytes"]["rule"] / r["bytes"]["dense"]
            bars[f"{WIDE_MLP} at 90%: weights after sparsify_ at most {INFER_BYTES_90:g} of dense"] = (
                frac <= INFER_BYTES_90, frac)
    return bars


def check(measured: dict) -> dict:
    """Every goal that applies to `bench.measure`'s measurements."""
    bars = {}
    if "ops" in measured:
        bars |= ops_bars(measured["ops"], measured["device"])
    if "large_lam" in measured:
        bars |= large_lam_bars(measured["large_lam"])
    if "step" in measured:
        bars |= step_bars(measured["step"])
    if "infer" in measured:
        bars |= infer_bars(measured["infer"])
    return bars


def print_bars(bars: dict) -> None:
    print("\nbars:")
    for name, (ok, value) in bars.items():
        print(f"  {'met' if ok else 'NOT met'}  {name}  ({value:.2f}×)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    print_bars(check(bench.measure(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
