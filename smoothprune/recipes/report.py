"""Collects the ``result.json`` files of a sweep into a markdown table (mean ± std over seeds)
and a matplotlib plot of the test metrics over training time.

    python recipes/report.py multirun/mlp_prune/2026-11-25_16-00-00   # writes report.md, report.png there
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys

# (summary key, column header, scale, digits) per experiment; other experiments show every key
COLUMNS = {
    "mlp_prune": [
        ("test_error", "test error after hardening (%)", 100, 2),
        ("test_error_before_hardening", "test error before hardening (%)", 100, 2),
        ("sparsity", "sparsity of pruned weights", 1, 4),
        ("export_bytes", "exported file (bytes)", 1, 0),
        ("train_seconds", "training time (s)", 1, 1),
        ("sec_per_step", "ms / step", 1e3, 2),
    ],
    "vit_finetune": [(f"test_acc_top{k}", f"top-{k} acc (%)", 100, 2) for k in range(1, 6)]
    + [("sec_per_step", "s / step", 1, 3)],
    "moe_routing_paper": [
        ("test_acc_top1", "precision@1 (%)", 100, 2),
        ("token_coverage", "token coverage", 1, 3),
        ("nnz_per_capacity", "nnz per expert / C", 1, 3),
        ("router_ms_per_step", "router ms / step", 1, 2),
        ("tokens_per_second", "tokens / s", 1, 0),
        ("sec_per_step", "s / step", 1, 3),
    ],
}
# (history key, axis label, transform) of the plot panels per experiment
CURVES = {
    "vit_finetune": [("test/acc_top1", "test top-1 error (%)", "error"),
                     ("test/acc_top3", "test top-3 error (%)", "error")],
    "moe_routing_paper": [("test/acc_top1", "test error (%)", "error"),
                          ("test/token_coverage", "token coverage", "value")],
}
DEFAULT_CURVES = [("test/acc_top1", "test error (%)", "error")]


def _job_order(path: str):
    """(sweep folder, Hydra job number) of a run's result.json: ``.../<sweep>/<num>_<arm>_seed<s>/``."""
    run_dir = os.path.dirname(path)
    digits = os.path.basename(run_dir).split("_")[0]
    return os.path.dirname(run_dir), int(digits) if digits.isdigit() else math.inf, path


def collect(sweep_dir: str) -> list[dict]:
    """Every ``result.json`` under ``sweep_dir`` (one sweep, or a folder of sweeps), in job order."""
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"sweep_dir: no such directory {sweep_dir!r}")
    paths = sorted(glob.glob(os.path.join(sweep_dir, "**", "result.json"), recursive=True), key=_job_order)
    if not paths:
        raise FileNotFoundError(f"sweep_dir: no result.json under {sweep_dir!r} (did the runs finish?)")
    results = []
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        result["_path"] = path
        results.append(result)
    return results


def group_by_arm(results: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by arm, arms in the order they first appear (seeds are the repeats)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["arm"], []).append(r)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _cell(values: list[float], scale: float, digits: int) -> str:
    mean, std = mean_std([v * scale for v in values if v is not None])
    if math.isnan(mean):
        return "–"
    text = f"{mean:,.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:,.{digits}f}"


def table(results: list[dict]) -> str:
    """The markdown table: one row per arm, mean ± std (sample std) over its runs."""
    name = results[0]["name"]
    columns = COLUMNS.get(name) or [(k, k, 1, 4) for k in results[0]["summary"]]
    header = ["arm", "runs"] + [c[1] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, runs in group_by_arm(results).items():
        cells = [arm, str(len(runs))]
        for key, _, scale, digits in columns:
            cells.append(_cell([r["summary"].get(key) for r in runs], scale, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """One panel per curve metric: mean over seeds against mean training time, ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = results[0]["name"]
    curves = CURVES.get(name, DEFAULT_CURVES)
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (key, label, transform) in zip(axes[0], curves):
        for arm, runs in group_by_arm(results).items():
            histories = [r["history"] for r in runs if r["history"]]
            if not histories or key not in histories[0][0]:
                continue
            length = min(len(h) for h in histories)
            x = [statistics.fmean(h[i]["train_seconds"] for h in histories) for i in range(length)]
            ys = [[(100 * (1 - h[i][key]) if transform == "error" else h[i][key]) for h in histories]
                  for i in range(length)]
            mean = [statistics.fmean(y) for y in ys]
            std = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.plot(x, mean, label=arm)
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    seeds = sorted({r["seed"] for r in results})
    fig.suptitle(f"{name}: mean ± std over seeds {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep_dir: str, output_dir: str | None = None) -> tuple[str, str, str]:
    """Writes ``report.md`` and ``report.png``; returns (table, markdown path, plot path)."""
    results = collect(sweep_dir)
    names = sorted({r["name"] for r in results})
    if len(names) > 1:
        raise ValueError(f"sweep_dir: expected the runs of one experiment, found {names}")
    output_dir = output_dir or sweep_dir
    os.makedirs(output_dir, exist_ok=True)
    text = table(results)
    md_path, png_path = os.path.join(output_dir, "report.md"), os.path.join(output_dir, "report.png")
    seeds = sorted({r["seed"] for r in results})
    with open(md_path, "w") as f:
        f.write(f"# {names[0]}\n\n{len(results)} runs, seeds {seeds}; mean ± std over seeds.\n\n{text}\n")
    plot(results, png_path)
    return text, md_path, png_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Table and plot of a recipe sweep (its result.json files).")
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (or any folder holding result.json files)")
    parser.add_argument("-o", "--output-dir", help="where report.md and report.png go (default: sweep_dir)")
    args = parser.parse_args(argv)
    try:
        text, md_path, png_path = write_report(args.sweep_dir, args.output_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nwrote {md_path} and {png_path}")
    return 0
