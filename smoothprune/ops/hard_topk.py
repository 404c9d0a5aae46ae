"""Hard top-k operators (torch.topk + scatter): the lam -> 0 limits of the smooth operators."""

from __future__ import annotations

import torch

from smoothprune.ops.sharded import dtensor_along_dim, is_dtensor, sharded_hard_topk_mag, sharded_hard_topk_mask
from smoothprune.validation import check_dim, check_input, check_k

__all__ = ["hard_topk_mask", "hard_topk_mag", "topk_mask_of"]


def topk_mask_of(key: torch.Tensor, k, d: int) -> torch.Tensor:
    """The 0/1 mask of the ``k`` largest keys along dim ``d``, unchecked (internal callers that
    order by -inf on purpose, as the top-k loss does); NaN everywhere for a tensor ``k`` outside
    ``[0, n]``."""
    if isinstance(k, torch.Tensor):
        # A tensor k keeps one graph for every value: compare ranks with k instead of topk(k).
        key_last = key.movedim(d, -1)
        order = key_last.argsort(dim=-1, descending=True, stable=True)
        n = key_last.shape[-1]
        positions = torch.arange(n, device=key.device).expand_as(order)
        ranks = torch.empty_like(order).scatter_(-1, order, positions)
        k_dev = k.to(key.device)
        # a device k outside [0, n] (host values raise in _hard_mask) gives NaN, as the smooth ops do
        return torch.where((k_dev >= 0) & (k_dev <= n), (ranks < k_dev).to(key.dtype), torch.nan).movedim(-1, d)
    return torch.zeros_like(key).scatter(d, key.topk(k, dim=d).indices, 1.0)


def _hard_mask(fn: str, key: torch.Tensor, x: torch.Tensor, k, dim: int) -> torch.Tensor:
    """The checked 0/1 mask, NaN on slices of x holding a NaN or Inf (as the smooth operators)."""
    check_input(fn, x)
    d = check_dim(fn, x, dim)
    k = check_k(fn, k, x.shape[d], dim, x)
    mask = topk_mask_of(key, k, d).to(x.dtype)
    return torch.where(torch.isfinite(x).all(d, keepdim=True), mask, torch.nan)


def _hard_dtensor(fn: str, x, k, dim: int, magnitude: bool):
    """A DTensor: each rank selects in its slices, or across shards where ``dim`` is sharded
    (ties at the k-th key then go to lower ranks first)."""
    check_input(fn, x)
    d = check_dim(fn, x, dim)
    k = int(check_k(fn, k, x.shape[d], dim, x))
    op = hard_topk_mag if magnitude else hard_topk_mask

    def spread_fn(rows, group):
        return sharded_hard_topk_mag(rows, k, group) if magnitude else sharded_hard_topk_mask(rows.detach(), k, group)

    return dtensor_along_dim(x, d, lambda local: op(local, k, dim=d), spread_fn, fn)


def hard_topk_mask(x: torch.Tensor, k, *, dim: int = -1) -> torch.Tensor:
    """Hard top-k mask: 1 on the ``k`` largest entries of each slice along ``dim``, 0 elsewhere.

    Ties are broken by ``torch.topk`` (for a Python ``k``) or by position (for a tensor ``k``).
    Its gradient is zero almost everywhere. A slice holding a NaN or Inf gives NaN.

    Args:
        x: floating tensor.
        k: an int or a 0-d integer tensor, ``0 <= k <= n``.
        dim: the dimension along which to select.

    Returns:
        A 0/1 tensor like ``x``.

    Raises:
        ValueError: on a non-floating ``x``, ``dim`` out of range or ``k`` outside ``[0, n]``.

    Example:
        >>> import torch, smoothprune as sp
        >>> sp.hard_topk_mask(torch.tensor([-5., -2., 3., 1.]), k=2)
        tensor([0., 0., 1., 1.])
    """
    if is_dtensor(x):
        return _hard_dtensor("hard_topk_mask", x, k, dim, magnitude=False)
    return _hard_mask("hard_topk_mask", x, x, k, dim)


def hard_topk_mag(x: torch.Tensor, k, *, dim: int = -1) -> torch.Tensor:
    """Hard top-k in magnitude: ``x * hard_topk_mask(|x|)``; its gradient passes through the kept entries.

    Args:
        x: floating tensor.
        k: an int or a 0-d integer tensor, ``0 <= k <= n``.
        dim: the dimension along which to select.

    Returns:
        A tensor like ``x`` with all but the ``k`` largest-magnitude entries per slice set to 0.

    Raises:
        ValueError: as :func:`hard_topk_mask`.

    Example:
        >>> import torch, smoothprune as sp
        >>> sp.hard_topk_mag(torch.tensor([-5., -2., 3., 1.]), k=2)
        tensor([-5., 0., 3., 0.])
    """
    check_input("hard_topk_mag", x)
    if is_dtensor(x):
        return _hard_dtensor("hard_topk_mag", x, k, dim, magnitude=True)
    if isinstance(x, torch.Tensor):
        mask = _hard_mask("hard_topk_mag", x.detach().abs(), x, k, dim)
        y = torch.where(mask != 0, x, x.new_zeros(()))  # +0.0 on pruned entries (x * 0 gives -0.0)
        return torch.where(mask.isnan(), x * mask, y)  # (NaN, with NaN gradients, as the smooth ops)
    return _hard_mask("hard_topk_mag", x, x, k, dim)
