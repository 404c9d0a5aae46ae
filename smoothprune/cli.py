"""The `smoothprune` command line.

    smoothprune export CKPT -o FILE   # Lightning checkpoint -> compact sparse safetensors file
    smoothprune inspect FILE          # per-tensor table of a sparse file
    smoothprune bench [ops|step|infer|all]  # side-by-side benchmark tables (see smoothprune.bench)
"""

from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["main"]


def _export(args) -> int:
    import torch

    from smoothprune.checkpoint import hardened_state_dict, legacy_sparsity, read_checkpoint
    from smoothprune.export import save_sparse

    if not os.path.isfile(args.checkpoint):
        print(f"smoothprune export: no such checkpoint file: {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        # nothing from the file runs: every object but tensors and plain containers is a placeholder
        checkpoint, unread = read_checkpoint(args.checkpoint)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        print(f"smoothprune export: cannot read {args.checkpoint} as a torch checkpoint: "
              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        print(f"smoothprune export: {args.checkpoint} holds no state_dict of tensors", file=sys.stderr)
        return 2
    state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    try:
        pruning = _pruning_record(checkpoint, state, legacy_sparsity(state))
        state = hardened_state_dict(state)
        entries = save_sparse(state, args.output, metadata={"source": os.path.basename(args.checkpoint)},
                              pruning=pruning)
    except (ValueError, RuntimeError, OSError) as exc:  # corrupt pruning state, a bad destination
        print(f"smoothprune export: {exc}", file=sys.stderr)
        return 2
    dense = sum(torch.Size(e["shape"]).numel() * torch.empty((), dtype=getattr(torch, e["dtype"])).element_size()
                for e in entries.values())
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: {len(entries)} tensors, {size:,} bytes "
          f"({100 * size / max(dense, 1):.1f}% of the {dense:,} bytes of dense tensor data)")
    if pruning is not None:
        print(_pruning_line(pruning, entries))
    if unread:
        print(f"note: {len(unread)} kinds of objects in the checkpoint were not loaded (only tensors are needed): "
              + ", ".join(unread))
    return 0


def _pruning_record(checkpoint, state, legacy) -> dict | None:
    """What the checkpoint says of its pruning run: target, schedule position, pruned tensors."""
    entry = checkpoint.get("smoothprune") if isinstance(checkpoint, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("tensors"), dict):
        return {"target_sparsity": entry.get("target_sparsity"), "sparsity": entry.get("sparsity"),
                "tensors": list(entry["tensors"])}
    if legacy:  # smoothprune <= 0.1 recorded the schedule's value, not its target
        return {"target_sparsity": None, "sparsity": max(legacy.values()), "tensors": list(legacy)}
    return None


def _pruning_line(pruning: dict, entries: dict) -> str:
    names = [n for n in pruning.get("tensors", []) if n in entries]
    numel = sum(math.prod(entries[n]["shape"]) for n in names)
    zeros = sum(math.prod(entries[n]["shape"]) - entries[n]["nnz"] for n in names)
    target = pruning.get("target_sparsity")
    position = pruning.get("sparsity")
    line = f"pruned tensors ({len(names)}): sparsity {zeros / max(numel, 1):.4f}"
    if target is None:
        return line + f", schedule at {position:.4f} (its target is not recorded)"
    line += f", target {target:.4f}"
    if position is not None and abs(position - target) > 1e-12:
        line += f" (written before the schedule reached it: schedule at {position:.4f})"
    return line


def _inference_layout(e: dict) -> str:
    """What `load_sparsified_` makes of a tensor without example inputs (if it is a plain
    nn.Linear's weight): CSR by the rule `csr_pays_off`, else dense."""
    import torch

    from smoothprune.inference import csr_pays_off

    if e["encoding"] in ("dense", "alias") or len(e["shape"]) != 2:
        return "dense"
    return "csr (if Linear)" if csr_pays_off(e["shape"], e["sparsity"], getattr(torch, e["dtype"])) else "dense"


def _inspect(args) -> int:
    from smoothprune.export import read_sparse_header

    if not os.path.isfile(args.file):
        print(f"smoothprune inspect: no such file: {args.file}", file=sys.stderr)
        return 2
    try:
        header = read_sparse_header(args.file)
    except ValueError as exc:
        print(f"smoothprune inspect: {exc}", file=sys.stderr)
        return 2
    entries = header["tensors"]
    rows = [("tensor", "shape", "dtype", "encoding", "nnz", "sparsity", "load_sparsified_")]
    total = zeros = 0
    for name, e in entries.items():
        numel = math.prod(e["shape"])
        total += numel
        zeros += numel - e["nnz"]
        rows.append((name, "×".join(map(str, e["shape"])) or "scalar", e["dtype"], e["encoding"], str(e["nnz"]),
                     f"{e['sparsity']:.4f}", _inference_layout(e)))
    rows.append(("total", "", "", "", str(total - zeros), f"{zeros / max(total, 1):.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if isinstance(header.get("pruning"), dict):
        print(_pruning_line(header["pruning"], entries))
    print(f"file size: {os.path.getsize(args.file):,} bytes")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="smoothprune", description="Sparse smooth top-k pruning tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="hard-prune a Lightning checkpoint into a compact safetensors file")
    p.add_argument("checkpoint", help="a Lightning .ckpt (or a torch file holding a state_dict)")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.set_defaults(run=_export)
    p = sub.add_parser("inspect", help="per-tensor table of a sparse safetensors file")
    p.add_argument("file")
    p.set_defaults(run=_inspect)
    p = sub.add_parser("bench", help="benchmark the operators and a pruned training step against baselines")
    from smoothprune import bench

    bench.add_arguments(p)
    p.set_defaults(run=bench.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
