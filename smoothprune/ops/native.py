"""The unchecked entry to the native exact solver (`torch.ops.smoothprune.soft_topk_forward`),
shared by the public wrappers (`smoothprune.ops.soft_topk`), the pruning parametrizations and the
top-k across shards (`smoothprune.ops.sharded`). Its autograd is registered in C++."""

from __future__ import annotations

import torch

from smoothprune import _native  # noqa: F401  (loads the op library)

__all__ = ["soft_topk_last_dim"]


def soft_topk_last_dim(x, k, lam, p: float, magnitude: bool, debias: bool):
    """The exact native solver along the last dim, without the wrappers' Python checks.

    For callers whose arguments are valid by construction (the pruning parametrizations call it
    for every weight at every step): ``x`` a floating tensor with >= 1 dim, ``k`` and ``lam``
    0-d tensors (int64, float64) on the CPU or, for a CUDA ``x``, on x's device; ``p > 1``. The
    kernel still checks the values of k and lam: CPU values raise, device values it cannot raise
    for give NaN (as a row holding a NaN does).
    """
    return torch.ops.smoothprune.soft_topk_forward(x, k, lam, p, magnitude, debias, False)[0]
