"""Sparse smooth top-k operators: `soft_topk_mask` and `soft_topk_mag`.

The exact solver is the native op `torch.ops.smoothprune.soft_topk_forward` (PAV, any p > 1); its
backward is the native op `soft_topk_backward` (the closed-form block Jacobian of docs/design.md
§5), and their autograd is registered in C++ (csrc/autograd.cpp: Python autograd glue
would cost more than the op on small tensors). Both get a fake kernel (for torch.compile / meta
tensors) here, beside the wrappers. `algorithm="dykstra"` runs the pure-tensor path of
`smoothprune.ops.dykstra`.
"""

from __future__ import annotations

import torch

from smoothprune.ops._scalars import as_scalar_tensor, native_scalar_device
from smoothprune.ops.dykstra import dykstra_soft_topk
from smoothprune.ops.native import soft_topk_last_dim  # (importing it loads the op library)
from smoothprune.ops.sharded import dtensor_along_dim, is_dtensor, sharded_soft_topk
from smoothprune.validation import check_algorithm, check_bool, check_dim, check_input, check_k, check_lam, check_p

__all__ = ["soft_topk_mask", "soft_topk_mag"]


# ----------------------------------------------------------------------------------------------
# fake kernels of the native ops (their autograd is registered in C++: csrc/autograd.cpp)
# ----------------------------------------------------------------------------------------------
@torch.library.register_fake("smoothprune::soft_topk_forward")
def _soft_topk_forward_fake(x, k, lam, p, magnitude, debias, full_sort=False):
    batch = x.shape[:-1]
    return (
        x.new_empty(x.shape),
        x.new_empty(x.shape, dtype=torch.int32),
        x.new_empty((*batch, 2), dtype=torch.int64),
        x.new_empty(batch, dtype=torch.float64),
    )


@torch.library.register_fake("smoothprune::soft_topk_backward")
def _soft_topk_backward_fake(grad, x, perm, blocks, gamma, k, lam, p, magnitude, debias):
    return x.new_empty(x.shape)


# ----------------------------------------------------------------------------------------------
# the unchecked native path, and the public wrappers
# ----------------------------------------------------------------------------------------------
def _soft_topk(fn, x, k, lam, p, dim, algorithm, num_iter, magnitude, debias):
    check_input(fn, x)
    d = check_dim(fn, x, dim)
    n = x.shape[d]
    k = check_k(fn, k, n, dim, x)
    lam = check_lam(fn, lam, x)
    p = check_p(fn, p)
    algorithm = check_algorithm(fn, algorithm, p, num_iter, x.device)
    if is_dtensor(x):
        return _soft_topk_dtensor(fn, x, k, lam, p, d, algorithm, num_iter, magnitude, debias)
    last = d == x.dim() - 1
    x_last = x if last else x.movedim(d, -1)  # (a movedim view is an extra autograd node)
    if algorithm == "dykstra":
        y = dykstra_soft_topk(x_last, k, lam, p, magnitude, debias, 10 if num_iter is None else num_iter)
    else:
        # k and lam travel to the native op as 0-d tensors, on the CPU or on x's GPU (see there)
        k_t = as_scalar_tensor(k, torch.int64, native_scalar_device(x, k))
        lam_t = as_scalar_tensor(lam, torch.float64, native_scalar_device(x, lam))
        y = soft_topk_last_dim(x_last, k_t, lam_t, p, magnitude, debias)
    return y if last else y.movedim(-1, d)


def _soft_topk_dtensor(fn, x, k, lam, p, d, algorithm, num_iter, magnitude, debias):
    """A DTensor: each rank solves its slices, or the exact top-k across shards where ``d`` is sharded."""
    op = soft_topk_mag if magnitude else soft_topk_mask
    extra = {"debias": debias} if magnitude else {}

    def local_fn(local):
        return op(local, k, lam=lam, p=p, dim=d, algorithm=algorithm, num_iter=num_iter, **extra)

    def spread_fn(rows, group):
        if algorithm == "dykstra":
            raise NotImplementedError(f"{fn}: algorithm='dykstra' along a sharded dim (the exact top-k across "
                                      "shards solves by PAV)")
        return sharded_soft_topk(rows, int(k), lam=float(lam), p=p, magnitude=magnitude, debias=debias, group=group)

    return dtensor_along_dim(x, d, local_fn, spread_fn, fn)


def soft_topk_mask(x, k, *, lam=0.1, p=4 / 3, dim=-1, algorithm="auto", num_iter=None):
    """Sparse smooth top-k mask along ``dim``.

    Solves ``y* = argmax {<x, y> - (lam/p) sum |y_i|^p : y in [0, 1]^n, sum y = k}`` for every
    slice. The result sums to ``k``, is exactly 0 below the top region and exactly 1 on
    confidently kept entries; ties are split evenly; ``lam -> 0`` gives the hard top-k mask.

    Args:
        x: floating tensor (float16, bfloat16, float32 or float64); computed in float64.
        k: number of entries to keep per slice, an int or a 0-d integer tensor, ``0 <= k <= n``.
        lam: regularization strength ``> 0``, a float or a 0-d tensor (not differentiated).
        p: regularization exponent ``> 1``; ``p = 2`` and ``p = 4/3`` have closed-form solvers.
        dim: the dimension along which to select.
        algorithm: ``"pav"`` (exact, native), ``"dykstra"`` (approximate, pure tensor ops,
            ``p = 2`` or ``4/3``) or ``"auto"`` (Dykstra on XLA devices, PAV elsewhere).
        num_iter: Dykstra iterations (default 10); with ``"dykstra"``, or with ``"auto"``
            (used on XLA, ignored elsewhere).

    Returns:
        A tensor like ``x``. Slices holding a NaN or Inf give NaN in every position (and NaN
        gradients).

    Raises:
        ValueError: on a non-floating ``x``, ``dim`` out of range, ``k`` outside ``[0, n]``,
            ``lam <= 0``, ``p <= 1``, an unknown ``algorithm``, ``"dykstra"`` with another
            ``p`` than 2 or 4/3, or ``num_iter`` with ``"pav"``.

    Example:
        >>> import torch, smoothprune as sp
        >>> sp.soft_topk_mask(torch.tensor([-5., -2., 3., 1.]), k=2, lam=1e-2)
        tensor([0., 0., 1., 1.])
    """
    return _soft_topk("soft_topk_mask", x, k, lam, p, dim, algorithm, num_iter, False, False)


def soft_topk_mag(x, k, *, lam=0.1, p=4 / 3, dim=-1, algorithm="auto", num_iter=None, debias=True):
    """Sparse smooth top-k in magnitude along ``dim`` (smooth magnitude pruning).

    The smooth counterpart of ``x * topk_mask(|x|)``: entries below the top region are exactly
    0, and ``lam -> 0`` gives the hard operator. With ``debias=True`` (default) confidently kept
    entries equal ``x`` exactly; ``debias=False`` returns the raw gradient form, whose kept
    entries shrink (by ``1 / (1 + lam)`` for ``p = 2``).

    Args:
        x: floating tensor; computed in float64.
        k: entries to keep per slice, an int or a 0-d integer tensor, ``0 <= k <= n``.
        lam: regularization strength ``> 0`` (float or 0-d tensor).
        p: regularization exponent ``> 1``.
        dim: the dimension along which to select.
        algorithm: ``"pav"``, ``"dykstra"`` (``p = 2`` or ``4/3``) or ``"auto"``.
        num_iter: Dykstra iterations (default 10); with ``"dykstra"`` or ``"auto"`` (on XLA).
        debias: return the de-biased output (see above).

    Returns:
        A tensor like ``x`` (NaN on slices holding a NaN or Inf).

    Raises:
        ValueError: as :func:`soft_topk_mask`.

    Example:
        >>> import torch, smoothprune as sp
        >>> sp.soft_topk_mag(torch.tensor([-5., -2., 3., 1.]), k=2, lam=1e-2)
        tensor([-5., 0., 3., 0.])
    """
    debias = check_bool("soft_topk_mag", "debias", debias)
    return _soft_topk("soft_topk_mag", x, k, lam, p, dim, algorithm, num_iter, True, debias)
