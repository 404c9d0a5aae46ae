"""Worker functions of test_sharded_topk.py (run on every rank by `launch.run_ranks`)."""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from smoothprune.ops import sharded
from smoothprune.ops.soft_topk import soft_topk_last_dim


def _case(seed: int):
    """A random problem: rows spread over 2 ranks (uneven, possibly empty shares), ties, any k."""
    g = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 4, (1,), generator=g))
    n0, n1 = (int(v) for v in torch.randint(0, 40, (2,), generator=g))
    n = n0 + n1
    if n == 0:
        n1 = n = 1
    kind = seed % 3
    if kind == 0:
        x = torch.randn(rows, n, generator=g, dtype=torch.float64)
    elif kind == 1:  # ties: few distinct values
        x = torch.randint(-3, 4, (rows, n), generator=g).to(torch.float64) * 0.5
    else:  # wide magnitudes
        x = torch.randn(rows, n, generator=g, dtype=torch.float64) * torch.exp(6 * torch.randn(rows, n, generator=g, dtype=torch.float64))
    k = int(torch.randint(0, n + 1, (1,), generator=g))
    if seed % 7 == 0:
        k = n
    lam = float(10 ** torch.empty(1).uniform_(-4, 2, generator=g))
    p = [2.0, 4 / 3, 3.0, 1.5][seed % 4]
    magnitude = bool(seed % 2)
    debias = bool((seed // 2) % 2)
    dtype = torch.float32 if seed % 5 == 0 else torch.float64
    return x.to(dtype), (n0, n1), k, lam, p, magnitude, debias


def _whole_row(x, grad, k, lam, p, magnitude, debias, order=None):
    """The single-device operator on the whole rows (entries in ``order``), output and gradient
    in the rows' own order."""
    order = torch.arange(x.shape[1]) if order is None else order
    whole = x[:, order].clone().requires_grad_()
    y = soft_topk_last_dim(whole, torch.tensor(k), torch.tensor(lam, dtype=torch.float64), p, magnitude, debias)
    y.backward(grad[:, order])
    back = torch.argsort(order)
    return y.detach()[:, back], whole.grad[:, back]


def soft_topk_equals_whole_rows(rank: int, world: int, seeds) -> None:
    """Outputs and gradients equal the single-device operator's on the whole rows, within 4
    epsilons of the row's scale plus 4 times the operator's own change when the row is reordered
    with this rank's entries first (which is what each rank solves: a reordering changes the
    order of the sums over the pooled block, and p > 2 makes the block's smallest member very
    sensitive to them)."""
    failures = []
    for seed in seeds:
        x, (n0, n1), k, lam, p, magnitude, debias = _case(seed)
        grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(x.dtype)
        args = (k, lam, p, magnitude, debias)
        ref_y, ref_g = _whole_row(x, grad, *args)
        n = x.shape[1]
        mine = torch.arange(n0) if rank == 0 else torch.arange(n0, n)
        rank_first = torch.cat([mine, torch.tensor([i for i in range(n) if i not in set(mine.tolist())], dtype=torch.int64)])
        alt_y, alt_g = _whole_row(x, grad, *args, order=rank_first)
        part = slice(0, n0) if rank == 0 else slice(n0, n)
        local = x[:, part].clone().requires_grad_()
        y = sharded.sharded_soft_topk(local, k, lam=lam, p=p, magnitude=magnitude, debias=debias)
        y.backward(grad[:, part])
        out_err = _excess(y.detach(), ref_y[:, part], alt_y[:, part], ref_y)
        grad_err = _excess(local.grad, ref_g[:, part], alt_g[:, part], ref_g)
        if out_err > 4 or grad_err > 64:
            failures.append((seed, k, lam, p, magnitude, debias, x.dtype, out_err, grad_err))
    assert not failures, failures[:5]


def _excess(got, want, reordered, row) -> float:
    """``|got - want|`` beyond 4 times the operator's own reordering change, in epsilons of the
    dtype times the row's largest |value| (its largest entry)."""
    if got.numel() == 0:
        return 0.0
    scale = row.abs().amax(1, keepdim=True).to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    own = (reordered.to(torch.float64) - want.to(torch.float64)).abs()
    diff = ((got.to(torch.float64) - want.to(torch.float64)).abs() - 4 * own).clamp_min(0) / scale
    return float(diff.max()) / torch.finfo(got.dtype).eps


def hard_mask_equals_whole_rows(rank: int, world: int, seeds) -> None:
    for seed in seeds:
        x, (n0, n1), k, *_ = _case(seed)
        keys = x.abs()
        part = slice(0, n0) if rank == 0 else slice(n0, n0 + n1)
        mask = sharded.sharded_hard_topk_mask(keys[:, part], k)
        # every row keeps exactly k in all, none below a dropped one
        kept = mask.sum(1, dtype=torch.float64)
        dist.all_reduce(kept)
        assert torch.equal(kept, torch.full_like(kept, k)), (seed, kept, k)
        if k:
            tk = keys.topk(k, dim=1).values[:, -1:]
            local = keys[:, part]
            assert bool(((local > tk) <= (mask == 1)).all()) and bool(((local < tk) <= (mask == 0)).all()), seed


def kth_largest_matches_sort(rank: int, world: int, seeds) -> None:
    for seed in seeds:
        x, (n0, n1), k, *_ = _case(seed)
        k = max(k, 1)
        part = slice(0, n0) if rank == 0 else slice(n0, n0 + n1)
        keys = x[:, part].to(torch.float64)
        sel = sharded.sharded_kth_largest(keys, torch.full((x.shape[0],), k))
        s = x.to(torch.float64).sort(dim=1, descending=True).values
        assert torch.equal(sel.tk, s[:, k - 1]), seed
        expect1 = s[:, k] if k < s.shape[1] else torch.full_like(sel.tk, -torch.inf)
        assert torch.equal(sel.tk1, expect1), seed
        assert torch.equal(sel.above, (s > s[:, k - 1:k]).sum(1)), seed


def nan_rows_and_bad_k(rank: int, world: int) -> None:
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if rank == 1:
        x[1, 2] = torch.nan  # a NaN on one rank poisons the whole row on every rank
    y = sharded.sharded_soft_topk(x, 3, lam=0.1, p=2.0, magnitude=True)
    assert not y[0].isnan().any() and y[1].isnan().all()
    m = sharded.sharded_hard_topk_mask(x.abs(), 3)
    assert not m[0].isnan().any() and m[1].isnan().all()
    try:
        sharded.sharded_soft_topk(x, 13, lam=0.1, p=2.0, magnitude=True)
    except ValueError as exc:
        assert "0 <= k <= 12" in str(exc) and "k=13" in str(exc)
    else:
        raise AssertionError("k > n did not raise")


def traffic_is_window_sized(rank: int, world: int) -> None:
    """Bytes sent per call stay ~(1024 value buckets + 8 rounds x 256) x 8 bytes plus the window
    when the shard doubles: O(buckets + window), not O(n)."""
    sent = []
    for n_local in (200_000, 400_000):
        x = torch.randn(1, n_local, dtype=torch.float32, generator=torch.Generator().manual_seed(rank))
        sharded.traffic.reset()
        y = sharded.sharded_soft_topk(x, n_local // 5, lam=1e-4, p=2.0, magnitude=True)
        sent.append(sharded.traffic.bytes)
        assert int((y != 0).sum()) > 0
    assert sent[0] < 40_000 and sent[1] < 1.1 * sent[0], sent  # the shards: 800 kB and 1.6 MB


def public_ops_on_dtensors(rank: int, world: int) -> None:
    """`sp.soft_topk_mag` / `soft_topk_mask` / the hard ops on a DTensor, along a sharded dim or
    another one, equal the operators on the whole tensor (outputs and gradients), placed alike."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import smoothprune as sp

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64)
    grad = torch.randn(6, 10, generator=g, dtype=torch.float64)
    for dim in (0, 1, -1):
        k = 3
        for name in ("soft_topk_mag", "soft_topk_mask"):
            op = getattr(sp, name)
            whole = x.clone().requires_grad_()
            want = op(whole, k, lam=0.2, p=4 / 3, dim=dim)
            want.backward(grad)
            for placement in (Shard(0), Shard(1), Replicate()):
                dt = distribute_tensor(x, mesh, [placement]).requires_grad_()
                got = op(dt, k, lam=0.2, p=4 / 3, dim=dim)
                assert got.placements == (placement,), (name, dim, placement)
                got.backward(distribute_tensor(grad, mesh, [placement]))
                assert torch.allclose(got.full_tensor(), want.detach(), rtol=1e-12, atol=1e-14), (name, dim, placement)
                assert torch.allclose(dt.grad.full_tensor(), whole.grad, rtol=1e-12, atol=1e-12), (name, dim, placement)
        for name in ("hard_topk_mag", "hard_topk_mask"):
            op = getattr(sp, name)
            for placement in (Shard(0), Shard(1), Replicate()):
                got = op(distribute_tensor(x, mesh, [placement]), k, dim=dim)
                assert torch.equal(got.full_tensor(), op(x, k, dim=dim)), (name, dim, placement)
