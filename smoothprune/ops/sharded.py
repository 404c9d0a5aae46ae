"""Exact top-k of rows whose entries are spread over the ranks of a process group.

``x_local`` is ``[R, n_r]``: every rank of ``group`` holds ``n_r`` entries of each of the same
``R`` rows (an FSDP2 shard of a weight pruned as one row, a tensor-parallel ``Shard(1)`` weight
pruned per output row, ...; ``n_r`` may differ between ranks). The result equals the
single-device operator applied to the whole rows, without ever gathering a row:

1. **Selection.** The k-th largest key ``t_k`` of every row is found by a distributed selection:
   an all-reduce of the rows' min and max and of a ``[R, 1024]`` histogram of equal-width value
   buckets keeps only the keys of the bucket holding ``t_k``; on those, a radix selection on
   the keys' ordered float64 bits: 8 rounds, each an all-reduce of a ``[R, 256]`` histogram of
   the next 8 bits of the candidates still matching the prefix chosen so far. ``t_{k+1}`` is ``t_k`` when
   ties reach past ``k``, otherwise one all-reduce (max) of the keys below ``t_k``.
2. **Window.** Every entry of a row is a singleton of the isotonic regression (its output known
   in closed form: kept or pruned) except the block pooled at the junction of ranks ``k`` and
   ``k+1``, which lies within ``[val(t_k), val⁻¹(t_{k+1})]`` (``val`` the kept singleton's
   value: ``s - lam`` for the mask, ``s - lam·v^(p-1)`` for the magnitude, so the window is inside
   ``[t_k - lam·t_k^(p-1), t_{k+1} + lam·t_{k+1}^(p-1)]``). Each rank gathers the *other* ranks'
   entries in that window (widened by a relative 1e-9 against rounding) and counts theirs above.
3. **Solve.** Each rank solves one row made of its own entries and the others' window entries,
   keeping ``k`` minus the number of the others' entries above the window. Removing kept
   singletons from the top of a row (with ``k`` lowered to match) and pruned ones from its
   bottom leaves the isotonic regression of the rest unchanged, and the row's frame (built on
   ``t_k``) is the same, so the outputs on the rank's own entries are those of the whole row.
4. **Backward.** The block Jacobian couples the block's members only, so the backward gathers
   the incoming gradient on the window entries and runs the native backward of the same
   reduced row.

Communication per call is ``O(R · (1024 + 256 · 8) + window)`` numbers, not ``O(n)``; `Traffic` counts
it. The hard top-k uses the same selection; its ties at ``t_k`` are broken by rank, then by
position within the rank (the single-device ``torch.topk`` breaks them its own way: the two can
differ only where several entries tie exactly at ``t_k``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from smoothprune.ops.native import soft_topk_last_dim

__all__ = ["Traffic", "traffic", "sharded_soft_topk", "sharded_hard_topk_mask", "sharded_hard_topk_mag", "sharded_kth_largest", "ShardedGroups",
           "sharded_groups", "is_dtensor", "sharded_allocation", "dtensor_along_dim"]

_VALUE_BUCKETS = 1024  # the first round's equal-width value buckets
_BITS = 8  # bits of the ordered key chosen per radix round
_BUCKETS = 1 << _BITS
_ROUNDS = 64 // _BITS
_WINDOW_MARGIN = 1e-9  # relative widening of the window: far above float64 rounding of its bounds
_INT64_MIN = -(1 << 63)
_LOW63 = (1 << 63) - 1


@dataclasses.dataclass
class Traffic:
    """Bytes this rank put into collectives, and how many collectives it called."""

    bytes: int = 0
    calls: int = 0

    def reset(self) -> None:
        self.bytes, self.calls = 0, 0


traffic = Traffic()  # the process-wide counter (benchmarks read and reset it)


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    traffic.bytes += t.numel() * t.element_size()
    traffic.calls += 1
    dist.all_reduce(t, op=op, group=group)
    return t


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    """Every rank's ``t`` (of any length along dim 0): lengths first, then the padded tensors."""
    size = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size(group))]
    traffic.bytes += size.numel() * size.element_size()
    traffic.calls += 1
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    traffic.bytes += padded.numel() * padded.element_size()
    traffic.calls += 1
    dist.all_gather(parts, padded, group=group)
    return [part[:s] for part, s in zip(parts, sizes)]


# ------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------
def _ordered(keys: torch.Tensor) -> torch.Tensor:
    """float64 keys -> int64 bit patterns that order as unsigned integers like the keys
    (-0.0 is read as +0.0, which it equals)."""
    bits = (keys + 0.0).view(torch.int64)
    signed = torch.where(bits < 0, bits ^ _LOW63, bits)  # orders as signed integers
    return signed ^ _INT64_MIN


def _from_ordered(u: torch.Tensor) -> torch.Tensor:
    signed = u ^ _INT64_MIN
    return torch.where(signed < 0, signed ^ _LOW63, signed).view(torch.float64)


def _pick_bucket(hist: torch.Tensor, rank: torch.Tensor):
    """Per row of ``hist`` (counts of ascending buckets): the bucket holding the ``rank``-th
    largest, how many lie in the buckets above it, and how many in it."""
    buckets = hist.shape[1]
    from_top = hist.flip(1).cumsum(1)  # counts in this bucket or above
    pos = (from_top < rank.unsqueeze(1)).sum(1).clamp_max(buckets - 1)  # first bucket from the top reaching it
    bucket = buckets - 1 - pos
    in_bucket = hist.gather(1, bucket.unsqueeze(1)).squeeze(1)
    higher = from_top.gather(1, pos.unsqueeze(1)).squeeze(1) - in_bucket
    return bucket, higher, in_bucket


@dataclasses.dataclass
class KthLargest:
    """Per row: ``t_k``, ``t_{k+1}`` (``-inf`` where ``k = n``) and how many keys exceed ``t_k``."""

    tk: torch.Tensor
    tk1: torch.Tensor
    above: torch.Tensor  # int64: keys > t_k
    ties: torch.Tensor  # int64: keys == t_k


@torch.no_grad()
def sharded_kth_largest(keys: torch.Tensor, k: torch.Tensor, group=None) -> KthLargest:
    """The k-th and (k+1)-th largest of each row of float64 ``keys`` ``[R, n_r]`` spread over
    ``group`` (``k`` an int64 ``[R]`` with ``1 <= k <= n``; the keys finite)."""
    if k.numel() and int(k.min()) < 1:
        raise ValueError(f"sharded_kth_largest: expected k >= 1 in every row, got k={k.tolist()}")
    rows, n_local = keys.shape
    dev = keys.device
    above = torch.zeros_like(k)
    # Round 0: equal-width value buckets between each row's global min and max narrow the
    # candidates to the bucket holding t_k (buckets are monotone in the key, so they split the
    # order); the radix rounds then run on those few candidates only.
    if n_local:
        extremes = torch.cat([keys.amax(1), -keys.amin(1)])
    else:
        extremes = torch.full((2 * rows,), -torch.inf, dtype=torch.float64, device=dev)
    extremes = _all_reduce(extremes, dist.ReduceOp.MAX, group)
    mx, mn = extremes[:rows], -extremes[rows:]
    inv_width = _VALUE_BUCKETS / (mx - mn)
    usable = torch.isfinite(inv_width) & (mx > mn)  # (all keys equal, or a range beyond float64)
    inv_width = torch.where(usable, inv_width, 0.0)
    shifted = (keys - torch.where(usable, mn, 0.0).unsqueeze(1)) * inv_width.unsqueeze(1)
    bucket_of = shifted.floor_().clamp_(0, _VALUE_BUCKETS - 1).to(torch.int64)
    row_base = torch.arange(rows, device=dev).unsqueeze(1) * _VALUE_BUCKETS
    hist = torch.bincount((bucket_of + row_base).reshape(-1), minlength=rows * _VALUE_BUCKETS).to(torch.int64)
    hist = _all_reduce(hist, dist.ReduceOp.SUM, group).view(rows, _VALUE_BUCKETS)
    bucket, higher, _ = _pick_bucket(hist, k)
    above += higher
    remaining = k - higher  # rank of t_k among the candidates
    candidate = bucket_of == bucket.unsqueeze(1)
    u = _ordered(keys[candidate])
    row_of = torch.arange(rows, device=dev).unsqueeze(1).expand(rows, n_local)[candidate]
    chosen = torch.zeros(rows, dtype=torch.int64, device=dev)  # t_k's ordered bits so far
    ties = torch.zeros_like(k)
    for r in range(_ROUNDS):
        shift = 64 - _BITS * (r + 1)
        digit = (u >> shift) & (_BUCKETS - 1)
        hist = torch.bincount(row_of * _BUCKETS + digit, minlength=rows * _BUCKETS).to(torch.int64)
        hist = _all_reduce(hist, dist.ReduceOp.SUM, group).view(rows, _BUCKETS)
        bucket, higher, ties = _pick_bucket(hist, remaining)
        above += higher
        remaining -= higher
        chosen |= bucket << shift
        keep = digit == bucket[row_of]
        u, row_of = u[keep], row_of[keep]
    tk = _from_ordered(chosen)
    n_total = above + ties  # keys >= t_k
    below_tk = torch.where(keys < tk.unsqueeze(1), keys, keys.new_tensor(-torch.inf))
    next_below = _all_reduce(below_tk.amax(1) if keys.shape[1] else torch.full_like(tk, -torch.inf),
                             dist.ReduceOp.MAX, group)
    tk1 = torch.where(n_total > k, tk, next_below)
    return KthLargest(tk, tk1, above, ties)


def _row_keys(keys_local: torch.Tensor, k: int, group, fn: str):
    """float64 keys of the rows (exact for every float dtype), with ``0`` on rows holding a NaN
    or Inf on any rank; those rows (bool ``[R]``); the rows' length over all ranks (``k`` is
    checked against it). One all-reduce."""
    rows, n_local = keys_local.shape
    keys = keys_local.to(torch.float64)
    if n_local:  # a NaN or Inf shows in the row's max or min
        bad_local = ~(torch.isfinite(keys.amax(1)) & torch.isfinite(keys.amin(1)))
    else:
        bad_local = torch.zeros(rows, dtype=torch.bool, device=keys.device)
    n = torch.tensor([n_local], dtype=torch.int64, device=keys.device)
    head = _all_reduce(torch.cat([bad_local.to(torch.int64), n]), dist.ReduceOp.SUM, group)
    bad, n_total = head[:rows] > 0, int(head[rows])
    if not 0 <= k <= n_total:
        raise ValueError(f"{fn}: expected 0 <= k <= {n_total} (the row's length over all ranks), got k={k}")
    if bool(bad.any()):
        keys = torch.where(bad.unsqueeze(1), 0.0, keys)
    return keys, bad, n_total


# ------------------------------------------------------------------------------------------------
# the smooth operator
# ------------------------------------------------------------------------------------------------
def _window_bounds(sel: KthLargest, lam: float, p: float, magnitude: bool):
    """``[lo, hi]`` per row: a superset of the keys the pooled block may hold (see the module)."""
    tk, tk1 = sel.tk, sel.tk1
    if magnitude:
        lo = tk - lam * tk.clamp_min(0).pow(p - 1)
        hi = tk1 + lam * tk1.clamp_min(0).pow(p - 1)
    else:
        lo, hi = tk - lam, tk1 + lam
    lo, hi = torch.minimum(lo, tk1), torch.maximum(hi, tk)
    lo = lo - _WINDOW_MARGIN * lo.abs() - 1e-300
    hi = hi + _WINDOW_MARGIN * hi.abs() + 1e-300
    return lo, hi


@dataclasses.dataclass
class _Reduced:
    """Rows one rank solves: its own entries, the others' window entries, and pads."""

    rows: torch.Tensor  # which of the R rows
    x: torch.Tensor  # [rows, own + the others' window entries + pads]
    k: int  # entries kept in each reduced row
    remote_pos: torch.Tensor  # flat positions in x of the others' window entries...
    remote_index: torch.Tensor  # ...and their positions in the gathered window entries


def _pad_values(lo: torch.Tensor, hi: torch.Tensor, magnitude: bool):
    """Per row: a key surely kept (above ``hi``) and one surely pruned (below ``lo``), or NaN
    where float64 has none. Powers of two (and 0), so that every float dtype holds them exactly
    where its range reaches them."""

    def power_above(v):
        return torch.exp2(torch.ceil(torch.log2(v.abs().clamp_min(1.0))) + 1)

    kept = power_above(hi)
    pruned = torch.zeros_like(lo) if magnitude else -power_above(lo)
    kept = torch.where(torch.isfinite(kept), kept, torch.nan)
    ok = (lo > 0) if magnitude else torch.isfinite(pruned)
    return kept, torch.where(ok, pruned, torch.nan)


class _ShardedSoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int, lam: float, p: float, magnitude: bool, debias: bool, group):
        rows, n_local = x.shape
        dev = x.device
        xd = x.detach()
        keys, bad, n_total = _row_keys(xd.abs() if magnitude else xd, k, group, "sharded_soft_topk")
        any_bad = bool(bad.any())
        kk = torch.full((rows,), k, dtype=torch.int64, device=dev)
        if 0 < k < n_total:
            sel = sharded_kth_largest(keys, kk, group)
            lo, hi = _window_bounds(sel, lam, p, magnitude)
        else:
            lo = hi = torch.full((rows,), torch.inf, dtype=torch.float64, device=dev)
        if k == n_total:  # every entry kept: no window, everything above it
            lo, hi = torch.full_like(lo, torch.inf), torch.full_like(hi, -torch.inf)
        above = keys > hi.unsqueeze(1)
        window = ~above & (keys >= lo.unsqueeze(1))
        local_above = above.sum(1)
        remote_above = _all_reduce(local_above.clone(), dist.ReduceOp.SUM, group) - local_above
        # the window entries of every rank: (row, value) as float64 pairs
        w_rows, w_cols = window.nonzero(as_tuple=True)
        mine = torch.stack([w_rows.to(torch.float64), xd[w_rows, w_cols].to(torch.float64)], 1)
        me = dist.get_rank(group)
        parts = _all_gather(mine, group)
        remote = torch.cat([part for r, part in enumerate(parts) if r != me]) if len(parts) > 1 else mine[:0]
        remote_rows, remote_vals = remote[:, 0].to(torch.int64), remote[:, 1]
        reduced = _build_reduced(xd, remote_rows, remote_vals, k - remote_above, lo, hi, magnitude)
        y = None if len(reduced) == 1 else torch.empty_like(x)
        solved = []
        for red in reduced:
            k_t = torch.tensor(red.k, dtype=torch.int64)
            lam_t = torch.tensor(lam, dtype=torch.float64)
            with torch.enable_grad():
                xr = red.x.detach().requires_grad_(x.requires_grad)
                yr = soft_topk_last_dim(xr, k_t, lam_t, p, magnitude, debias)
            if y is None:  # (one batch of every row, in order)
                y = yr[:, :n_local].detach().to(x.dtype)
            else:
                y[red.rows] = yr[:, :n_local].detach().to(x.dtype)
            solved.append((red, xr, yr))
        if y is None:
            y = torch.empty_like(x)
        if any_bad:
            y = torch.where(bad.unsqueeze(1), torch.nan, y)
        ctx.solved, ctx.group, ctx.window = solved, group, (w_rows, w_cols)
        ctx.n_local, ctx.me, ctx.bad = n_local, me, bad
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.detach()
        w_rows, w_cols = ctx.window
        parts = _all_gather(g[w_rows, w_cols].to(torch.float64), ctx.group)
        g_remote = torch.cat([part for r, part in enumerate(parts) if r != ctx.me]) if len(parts) > 1 else g[:0, 0]
        gx = torch.zeros_like(g)
        for red, xr, yr in ctx.solved:
            if not xr.requires_grad:
                continue
            gr = torch.zeros_like(yr)
            gr[:, : ctx.n_local] = g[red.rows]
            gr.view(-1)[red.remote_pos] = g_remote[red.remote_index].to(gr.dtype)
            (gxr,) = torch.autograd.grad(yr, xr, gr)
            gx[red.rows] = gxr[:, : ctx.n_local].to(gx.dtype)
        if bool(ctx.bad.any()):
            gx = torch.where(ctx.bad.unsqueeze(1), torch.nan, gx)
        return gx, None, None, None, None, None, None


def _build_reduced(xd, remote_rows, remote_vals, k_rows, lo, hi, magnitude) -> list[_Reduced]:
    """The reduced rows: one padded batch for the rows that can be padded, one row each for the others.

    Row r is [own entries, the others' window entries, kept pads, pruned pads]; kept pads make
    every row keep the same count (the native op takes one k), pruned pads the same length.
    """
    rows, n_local = xd.shape
    dev = xd.device
    order = torch.argsort(remote_rows, stable=True)
    remote_rows, remote_vals = remote_rows[order], remote_vals[order]
    per_row = torch.bincount(remote_rows, minlength=rows)
    start = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(remote_rows.numel(), device=dev) - start[remote_rows]  # position within its row
    kept_pad, pruned_pad = _pad_values(lo, hi, magnitude)
    k_max = int(k_rows.max()) if rows else 0
    need_kept = k_max - k_rows
    width = int((per_row + need_kept).max()) if rows else 0
    need_pruned = width - per_row - need_kept
    paddable = ((need_kept == 0) | ~kept_pad.isnan()) & ((need_pruned == 0) | ~pruned_pad.isnan())
    out = []
    groups = [torch.nonzero(paddable).flatten()] + [r.view(1) for r in torch.nonzero(~paddable).flatten()]
    for sel_rows in groups:
        if sel_rows.numel() == 0:
            continue
        local = torch.zeros(rows, dtype=torch.bool, device=dev)
        local[sel_rows] = True
        index_of = torch.full((rows,), -1, dtype=torch.int64, device=dev)
        index_of[sel_rows] = torch.arange(sel_rows.numel(), device=dev)
        k = int(k_rows[sel_rows].max())
        w = int((per_row[sel_rows] + k - k_rows[sel_rows]).max())
        extra = torch.empty((sel_rows.numel(), w), dtype=torch.float64, device=dev)
        col = torch.arange(w, device=dev).unsqueeze(0)
        pr, nk = per_row[sel_rows].unsqueeze(1), (k - k_rows[sel_rows]).unsqueeze(1)
        extra[:] = torch.where(col < pr + nk, kept_pad[sel_rows].unsqueeze(1), pruned_pad[sel_rows].unsqueeze(1))
        take = local[remote_rows]
        r_idx, r_slot = index_of[remote_rows[take]], slot[take]
        extra[r_idx, r_slot] = remote_vals[take]
        own = xd if sel_rows.numel() == rows else xd[sel_rows]
        in_dtype = extra.to(xd.dtype)
        pads_hold = bool(((in_dtype.to(torch.float64) == extra) | ~torch.isfinite(extra)).all()) and \
            bool(torch.isfinite(in_dtype[torch.isfinite(extra)]).all())
        # the row in x's dtype (what the single-device operator gets) where the pads are exact in
        # it, else in float64 (which holds every dtype's values exactly)
        x_red = torch.cat([own, in_dtype], 1) if pads_hold else torch.cat([own.to(torch.float64), extra], 1)
        out.append(_Reduced(sel_rows, x_red, k, r_idx * x_red.shape[1] + n_local + r_slot, order[take]))
    return out


def sharded_soft_topk(x_local: torch.Tensor, k: int, *, lam: float, p: float, magnitude: bool,
                      debias: bool = True, group=None) -> torch.Tensor:
    """The exact sparse smooth top-k (mask, or magnitude) of rows spread over ``group``.

    Args:
        x_local: ``[R, n_r]``, this rank's entries of each row (any float dtype).
        k: entries kept per whole row, ``0 <= k <= n`` (``n`` the sum of ``n_r`` over ranks).
        lam, p, magnitude, debias: as :func:`smoothprune.soft_topk_mag` / ``soft_topk_mask``.
        group: the process group holding the rows (default: the world).

    Returns:
        This rank's part of the output, like ``x_local``; differentiable (the backward gathers
        the incoming gradient on the window only). Every rank of ``group`` must call it, with the
        same R, k, lam, p, magnitude and debias. Rows holding a NaN or Inf on any rank give NaN everywhere.
    """
    if x_local.dim() != 2:
        raise ValueError(f"sharded_soft_topk: expected x_local of shape [rows, entries], got {tuple(x_local.shape)}")
    return _ShardedSoftTopK.apply(x_local, int(k), float(lam), float(p), bool(magnitude), bool(debias), group)


# ------------------------------------------------------------------------------------------------
# the hard operator
# ------------------------------------------------------------------------------------------------
def sharded_hard_topk_mag(x_local: torch.Tensor, k: int, group=None) -> torch.Tensor:
    """``x * sharded_hard_topk_mask(|x|)`` with +0.0 on pruned entries (NaN rows stay NaN); its
    gradient passes through the kept entries."""
    mask = sharded_hard_topk_mask(x_local.detach().abs(), k, group)
    y = torch.where(mask != 0, x_local, x_local.new_zeros(()))
    return torch.where(mask.isnan(), x_local * mask, y)


@torch.no_grad()
def sharded_hard_topk_mask(keys_local: torch.Tensor, k: int, group=None) -> torch.Tensor:
    """The 0/1 mask of the ``k`` largest keys of each row spread over ``group`` (``[R, n_r]``);
    ties at ``t_k`` go to lower ranks first, then to lower positions. NaN on rows holding a
    NaN or Inf on any rank."""
    rows = keys_local.shape[0]
    dev = keys_local.device
    keys, bad, n_total = _row_keys(keys_local, k, group, "sharded_hard_topk_mask")
    if k == 0:
        mask = torch.zeros_like(keys)
    elif k == n_total:
        mask = torch.ones_like(keys)
    else:
        sel = sharded_kth_largest(keys, torch.full((rows,), k, dtype=torch.int64, device=dev), group)
        tk = sel.tk.unsqueeze(1)
        tied = keys == tk
        # ties kept: k - above in all, taken by rank order, then by position
        mine = tied.sum(1)
        counts = _all_gather(mine, group)
        before = sum(counts[: dist.get_rank(group)], torch.zeros_like(mine))
        quota = (k - sel.above - before).clamp_min(0).unsqueeze(1)
        rank_in_ties = tied.to(torch.int64).cumsum(1) - 1
        mask = ((keys > tk) | (tied & (rank_in_ties < quota))).to(torch.float64)
    return torch.where(bad.unsqueeze(1), torch.nan, mask).to(keys_local.dtype)


# ------------------------------------------------------------------------------------------------
# DTensors: which groups of consecutive entries each rank holds
# ------------------------------------------------------------------------------------------------
def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2, tensor parallel)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


@dataclasses.dataclass
class ShardedGroups:
    """A DTensor seen as groups of ``group_size`` consecutive entries (in its global flat order).

    ``local`` is ``[groups, entries of each group on this rank]``; ``group`` the process group
    over which each group is spread (None: every group is whole on this rank); ``rebuild``
    turns a tensor like ``local`` back into a DTensor like the input (differentiably).
    """

    local: torch.Tensor
    group: object
    rebuild: object


def sharded_groups(w, group_size: int, fn: str = "sharded top-k") -> ShardedGroups:
    """Splits a DTensor into groups of ``group_size`` consecutive entries (see `ShardedGroups`).

    Supported: placements that replicate or shard one tensor dim ``d`` over one mesh dim, where
    either every shard boundary is a group boundary (a row of a ``Shard(0)`` weight, N:M groups
    that the shards do not cut) or each group spans dim ``d`` whole (a whole tensor, a row of a
    ``Shard(1)`` weight).
    ``Partial`` placements are reduced first.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    if any(isinstance(pl, Partial) for pl in w.placements):
        w = w.redistribute(w.device_mesh, [Replicate() if isinstance(pl, Partial) else pl for pl in w.placements])
    mesh, placements, shape = w.device_mesh, tuple(w.placements), tuple(w.shape)
    numel = w.numel()

    def rebuild(y_local):
        return DTensor.from_local(y_local.reshape(w.to_local().shape), mesh, placements, run_check=False,
                                  shape=w.shape, stride=w.stride())

    sharded = [(m, pl) for m, pl in enumerate(placements) if not isinstance(pl, Replicate)]
    local = w.to_local()
    if not sharded:
        return ShardedGroups(local.reshape(-1, group_size), None, rebuild)
    if len(sharded) > 1 or type(sharded[0][1]) is not Shard:
        raise NotImplementedError(f"{fn}: a tensor sharded as {placements} on a {mesh.ndim}-d mesh; supported are "
                                  "placements that shard one tensor dim over one mesh dim (FSDP2, or 1-d tensor parallel)")
    mesh_dim, placement = sharded[0]
    d = placement.dim % len(shape)
    inner = 1
    for s in shape[d + 1:]:
        inner *= s
    span = inner * shape[d]
    chunk = -(-shape[d] // mesh.size(mesh_dim))  # rows of dim d per rank (torch's Shard: the last ones may be fewer)
    if group_size and span % group_size == 0 and (chunk * inner) % group_size == 0:
        # every shard boundary is a group boundary: each group is whole on one rank
        return ShardedGroups(local.reshape(-1, group_size), None, rebuild)
    if group_size and group_size % span == 0:
        groups = numel // group_size
        return ShardedGroups(local.reshape(groups, local.numel() // groups), mesh.get_group(mesh_dim), rebuild)
    raise NotImplementedError(f"{fn}: groups of {group_size} entries of a {shape} tensor sharded along dim {d} "
                              "would be cut by the shards' boundaries")


@torch.no_grad()
def sharded_allocation(tensors: list, keep: int) -> list[int]:
    """How many of the ``keep`` globally largest magnitudes each tensor holds, for tensors that
    are DTensors (sharded or replicated) on one mesh, or plain tensors (the same on every rank).
    Ties at the threshold go to earlier tensors first."""
    from torch.distributed.tensor import Shard

    meshes = [t.device_mesh for t in tensors if is_dtensor(t)]
    mesh = meshes[0]
    if mesh.ndim != 1 or any(m != mesh for m in meshes):
        raise NotImplementedError(f"global_allocation: expected every sharded tensor (DTensor) on one 1-d device mesh, "
                                  f"got meshes {sorted({str(m) for m in meshes})}")
    group = mesh.get_group(0)
    first = dist.get_rank(group) == 0
    parts = []
    for t in tensors:  # this rank's keys: its shard, or a replicated tensor on the group's first rank only
        if is_dtensor(t) and any(isinstance(pl, Shard) for pl in t.placements):
            parts.append(t.to_local().detach().abs().reshape(-1).to(torch.float64))
        else:
            local = t.to_local() if is_dtensor(t) else t
            parts.append(local.detach().abs().reshape(-1).to(torch.float64) if first else local.new_empty(0, dtype=torch.float64))
    keys = torch.cat(parts).unsqueeze(0)
    sel = sharded_kth_largest(keys, torch.tensor([keep], device=keys.device), group)
    tk = sel.tk[0]
    counts = torch.stack([torch.stack([(p > tk).sum(), (p == tk).sum()]) for p in parts]).reshape(-1)
    counts = _all_reduce(counts, dist.ReduceOp.SUM, group).view(-1, 2)
    ties_left = keep - int(counts[:, 0].sum())
    out = []
    for gt, eq in counts.tolist():
        share = min(eq, ties_left)
        ties_left -= share
        out.append(gt + share)
    return out


def dtensor_along_dim(x, dim: int, local_fn, spread_fn, fn: str):
    """A top-k along ``dim`` of a DTensor, as a DTensor placed like ``x``.

    Where every slice along ``dim`` is whole on its rank (``x`` replicated, or sharded along
    another dim), ``local_fn(local_tensor)`` computes this rank's part; where ``dim`` itself is
    sharded, ``spread_fn(rows, group)`` gets the local part as ``[slices, entries on this rank]``
    and the process group the slices are spread over.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    if any(isinstance(pl, Partial) for pl in x.placements):
        x = x.redistribute(x.device_mesh, [Replicate() if isinstance(pl, Partial) else pl for pl in x.placements])
    mesh, placements = x.device_mesh, tuple(x.placements)
    sharded = [(m, pl) for m, pl in enumerate(placements) if not isinstance(pl, Replicate)]
    local = x.to_local()
    if len(sharded) > 1 or (sharded and type(sharded[0][1]) is not Shard):
        raise NotImplementedError(f"{fn}: a DTensor placed as {placements} on a {mesh.ndim}-d mesh; supported are "
                                  "placements that shard one tensor dim over one mesh dim")
    if not sharded or sharded[0][1].dim % x.dim() != dim:
        y = local_fn(local)
    else:
        moved = local.movedim(dim, -1)
        slices = 1
        for size in moved.shape[:-1]:
            slices *= size
        y = spread_fn(moved.reshape(slices, moved.shape[-1]), mesh.get_group(sharded[0][0]))
        y = y.reshape(moved.shape).movedim(-1, dim)
    return DTensor.from_local(y, mesh, placements, run_check=False, shape=x.shape, stride=x.stride())
