"""The run log of the resumable benchmarks: one JSON object per finished run in ``OUT/runs.jsonl``.

A benchmark appends each run as it finishes and, when restarted, skips the runs already logged,
so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import statistics


def load_runs(out: str) -> list[dict]:
    """The runs logged in ``out/runs.jsonl`` (none when the file does not exist yet)."""
    path = os.path.join(out, "runs.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_run(out: str, result: dict) -> None:
    """Log one finished run (a whole line per write, so a killed sweep never leaves half a run)."""
    with open(os.path.join(out, "runs.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
