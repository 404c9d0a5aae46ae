"""Dense vs sparse inference of a recipe's exported model (the end of `make demo`):

    python recipes/infer.py multirun/mlp_prune/<date>

Takes the sweep's run whose file is the sparsest (ties: the last by path), rebuilds its model from the run's own
Hydra config on the meta device, loads the file twice — densely (`load_sparse`) and for sparse
inference (`load_sparsified_`, each layer timed on example batches) — and prints the median
forward time at batch 1, 32 and 256 and the weights' bytes of both.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import torch


def _runs(sweep_dir: str) -> list[tuple[float, str]]:
    from smoothprune.export import read_sparse_metadata

    runs = []
    for path in sorted(glob.glob(os.path.join(sweep_dir, "**", "model.safetensors"), recursive=True)):
        if os.path.isfile(os.path.join(os.path.dirname(path), ".hydra", "config.yaml")):
            entries = read_sparse_metadata(path)
            numel = sum(torch.Size(e["shape"]).numel() for e in entries.values())
            zeros = sum(torch.Size(e["shape"]).numel() - e["nnz"] for e in entries.values())
            runs.append((zeros / max(numel, 1), path))
    return runs


def compare(path: str, repeats: int = 20) -> str:
    import hydra
    from omegaconf import OmegaConf

    import smoothprune as sp
    from smoothprune.bench import interleaved_medians, make_timer
    from smoothprune.inference import weight_bytes

    cfg = OmegaConf.load(os.path.join(os.path.dirname(path), ".hydra", "config.yaml"))
    with torch.device("meta"):
        dense, sparse = (hydra.utils.instantiate(cfg.model, _convert_="all") for _ in range(2))
    dense.load_state_dict(sp.load_sparse(path), assign=True)
    dense.eval()
    shape = (cfg.data.in_chans, cfg.data.image_size, cfg.data.image_size)
    batches = {b: torch.randn(b, *shape) for b in (1, 32, 256)}
    report = sp.load_sparsified_(sparse.eval(), path, list(batches.values()))
    lines = [f"sparse inference of {path}", str(report), "",
             "| batch | dense ms | sparse ms | dense / sparse | same predictions |", "|---|---|---|---|---|"]
    time_call = make_timer(torch.device("cpu"))
    with torch.inference_mode():
        for b, x in batches.items():
            ms = interleaved_medians({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, repeats, time_call)
            same = torch.equal(dense(x).argmax(-1), sparse(x).argmax(-1))
            lines.append(f"| {b} | {ms['dense'] * 1e3:.3f} | {ms['sparse'] * 1e3:.3f} | "
                         f"{ms['dense'] / ms['sparse']:.2f}× | {'yes' if same else 'NO'} |")
    lines.append(f"\nweights: dense {weight_bytes(dense):,} bytes, sparse {weight_bytes(sparse):,} bytes")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Dense vs sparse inference of a recipe sweep's exported model.")
    parser.add_argument("sweep_dir", help="a Hydra multirun directory of a recipe")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    runs = _runs(args.sweep_dir)
    if not runs:
        print(f"infer: no run with a model.safetensors and its .hydra/config.yaml under {args.sweep_dir}",
              file=sys.stderr)
        return 2
    print(compare(max(runs)[1], args.repeats))
    return 0
