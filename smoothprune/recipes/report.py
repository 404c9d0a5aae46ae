"""Collects the ``result.json`` files of a sweep into a markdown table (mean ± std over seeds)
and a matplotlib plot of the test metrics over training time.

    python recipes/report.py multirun/mlp_prune/2026-11-25_16-00-00   # writes report.md, report.png there

The table's columns and the plot's panels are the experiment's, from its config's ``report``
node (conf/experiment/<name>.yaml); nothing here knows an experiment by name.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys

# What a sweep's report shows comes from its experiment's config (conf/experiment/<name>.yaml,
# the `report` node): `columns`, [summary key, column header, scale, digits] per table column, and
# `curves`, [history key, axis label, "error" | "value"] per plot panel. Without one: every summary
# key as it is, and the top-1 test error curve.
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")
DEFAULT_CURVES = [("test/acc_top1", "test error (%)", "error")]


def _experiment_report(name: str):
    """The `report` node of conf/experiment/<name>.yaml (None without the file or the node): for
    sweeps written before the runs' config carried it."""
    path = os.path.join(CONF_DIR, "experiment", f"{name}.yaml")
    if not os.path.isfile(path):
        return None
    from omegaconf import OmegaConf

    node = OmegaConf.load(path).get("report")
    return None if node is None else OmegaConf.to_container(node)


def _entries(spec, key: str, kinds: tuple) -> list[tuple] | None:
    """``spec[key]`` as a list of tuples of the given kinds (ValueError naming the entry)."""
    entries = spec.get(key)
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ValueError(f"report.{key}: expected a list, got {entries!r}")
    out = []
    for i, entry in enumerate(entries):
        ok = isinstance(entry, (list, tuple)) and len(entry) == len(kinds) and all(
            isinstance(v, kind) and not isinstance(v, bool) for v, kind in zip(entry, kinds))
        if not ok:
            names = ", ".join(kind.__name__ if isinstance(kind, type) else "number" for kind in kinds)
            raise ValueError(f"report.{key}[{i}]: expected [{names}], got {entry!r}")
        out.append(tuple(entry))
    return out


def report_spec(results: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(columns, curves) of a sweep's report, from its experiment's config: the `report` node of
    the runs' own config (result.json), else of conf/experiment/<name>.yaml; without one, every
    summary key of the first run (scale 1, 4 digits) and the top-1 test error curve.

    Raises:
        ValueError: on a `report` node of the wrong shape, naming the entry.
    """
    spec = (results[0].get("config") or {}).get("report")
    if spec is None:
        spec = _experiment_report(results[0]["name"])
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"report: expected {{columns, curves}}, got {spec!r}")
    number = (int, float)
    columns = _entries(spec, "columns", (str, str, number, int))
    curves = _entries(spec, "curves", (str, str, str))
    for i, (_, _, transform) in enumerate(curves or []):
        if transform not in ("error", "value"):
            raise ValueError(f"report.curves[{i}]: expected 'error' or 'value' last, got {transform!r}")
    if columns is None:
        columns = [(k, k, 1, 4) for k in results[0]["summary"]]
    return columns, curves if curves is not None else DEFAULT_CURVES


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
    columns, _ = report_spec(results)
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
    _, curves = report_spec(results)
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
