"""Communication and time of the exact top-k across shards against gathering the whole tensor.

One weight of n entries is split evenly over 2 CPU processes (gloo, one thread each), as FSDP2
shards it; each rank computes its part of ``soft_topk_mag(W, k, lam, p=4/3)`` for the whole
tensor (layer scope, 90% sparsity, relative lam 1e-2) by

* ``sharded``: `smoothprune.ops.sharded.sharded_soft_topk` (radix selection by all-reduced
  histograms, then the window only), forward and forward + backward;
* ``all-gather``: ``all_gather`` of the shards, the single-device operator on the whole
  tensor, this rank's part of the result (the backward needs no more communication then).

Bytes are those one rank puts into collectives per call, counted by `sharded.traffic` for the
sharded path and as the shard's size for the all-gather; times are medians of interleaved
repeats, measured on rank 0. The last column is the largest difference between the two
paths' outputs over both ranks.

    python benchmarks/sharded_topk.py [--sizes 100000,1000000,10000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from smoothprune.ops import sharded  # noqa: E402
from smoothprune.ops.soft_topk import soft_topk_last_dim  # noqa: E402

SPARSITY, LAM, P = 0.9, 1e-2, 4 / 3


def _lam(w_local: torch.Tensor, n: int) -> float:
    """The relative lam as the callback's default uses it: lam * rms(W)^(2 - p), over all shards."""
    sq = w_local.double().square().sum()
    dist.all_reduce(sq)
    return LAM * float((sq / n).sqrt()) ** (2 - P)


def _gathered(w_local, k, lam, world, rank):
    parts = [torch.empty_like(w_local) for _ in range(world)]
    dist.all_gather(parts, w_local)
    y = soft_topk_last_dim(torch.cat(parts, 1), torch.tensor(k), torch.tensor(lam, dtype=torch.float64), P, True, True)
    m = w_local.shape[1]
    return y[:, rank * m:(rank + 1) * m]


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(rank: int, world: int, sizes, repeats: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for n in sizes:
        m = n // world
        w = 0.05 * torch.randn(1, m, generator=torch.Generator().manual_seed(rank + n))
        k = int(round((1 - SPARSITY) * m * world))
        lam = _lam(w, m * world)
        y_sharded = sharded.sharded_soft_topk(w, k, lam=lam, p=P, magnitude=True)
        y_gathered = _gathered(w, k, lam, world, rank)
        diff = torch.tensor([float((y_sharded - y_gathered).abs().max())])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        sharded.traffic.reset()
        sharded.sharded_soft_topk(w, k, lam=lam, p=P, magnitude=True)
        fwd_bytes, fwd_calls = sharded.traffic.bytes, sharded.traffic.calls
        wg = w.clone().requires_grad_()
        g = torch.randn_like(w)
        sharded.traffic.reset()
        sharded.sharded_soft_topk(wg, k, lam=lam, p=P, magnitude=True).backward(g)
        both_bytes = sharded.traffic.bytes

        def fwd_bwd():
            wg.grad = None
            sharded.sharded_soft_topk(wg, k, lam=lam, p=P, magnitude=True).backward(g)

        t_sharded, t_gathered, t_both = [], [], []
        for _ in range(repeats):  # interleaved
            t_sharded.append(_time(lambda: sharded.sharded_soft_topk(w, k, lam=lam, p=P, magnitude=True), 1))
            t_gathered.append(_time(lambda: _gathered(w, k, lam, world, rank), 1))
            t_both.append(_time(fwd_bwd, 1))
        window = int(((y_sharded != 0) & (y_sharded != w)).sum())
        window_t = torch.tensor([window])
        dist.all_reduce(window_t)
        rows.append(dict(n=n, diff=float(diff), shard_bytes=m * w.element_size(), fwd_bytes=fwd_bytes, fwd_calls=fwd_calls,
                         both_bytes=both_bytes, window=int(window_t), t_sharded=statistics.median(t_sharded),
                         t_gathered=statistics.median(t_gathered), t_both=statistics.median(t_both)))
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


def table(rows) -> str:
    lines = ["| entries | shard (bytes) | all-gather: bytes sent | sharded: bytes sent (fwd) | fwd + bwd | collectives (fwd) "
             "| entries in the pooled window | all-gather + op (ms) | sharded fwd (ms) | sharded fwd + bwd (ms) "
             "| max \\|sharded − gathered\\| |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['shard_bytes']:,} | {r['shard_bytes']:,} | {r['fwd_bytes']:,} | {r['both_bytes']:,} "
                     f"| {r['fwd_calls']} | {r['window']} | {1e3 * r['t_gathered']:.1f} | {1e3 * r['t_sharded']:.1f} "
                     f"| {1e3 * r['t_both']:.1f} | {r['diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    sizes = [int(v) for v in args.sizes.split(",")]
    mp.start_processes(worker, args=(2, sizes, args.repeats, port, out), nprocs=2, join=True, start_method="spawn")
    print(table(out.get()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
