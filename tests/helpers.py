"""Shared test helpers: apply a 1-D float64 oracle along a dim of a tensor."""

from __future__ import annotations

import numpy as np
import torch

import smoothprune as sp

P_VALUES = (2.0, 4 / 3, 1.5, 3.0)
# (name, operator, oracle keyword arguments)
MODES = (
    ("mask", lambda x, k, **kw: sp.soft_topk_mask(x, k, **kw), dict(magnitude=False)),
    ("mag", lambda x, k, **kw: sp.soft_topk_mag(x, k, **kw), dict(magnitude=True, debias=True)),
    ("mag_raw", lambda x, k, **kw: sp.soft_topk_mag(x, k, debias=False, **kw), dict(magnitude=True, debias=False)),
)


def apply_oracle(oracle, x: torch.Tensor, k: int, lam: float, p: float, dim: int, **kw) -> np.ndarray:
    xs = np.ascontiguousarray(x.detach().to(torch.float64).movedim(dim, -1).numpy())
    out = np.empty(xs.shape)
    flat_in = xs.reshape(-1, xs.shape[-1])
    flat_out = out.reshape(-1, xs.shape[-1])
    for r in range(flat_in.shape[0]):
        flat_out[r] = oracle(flat_in[r], k, lam, p, **kw)
    return np.moveaxis(out, -1, dim)


def rel_err(got, want, x) -> float:
    got = np.asarray(got, dtype=np.float64)
    scale = np.maximum(1.0, np.abs(np.asarray(x, dtype=np.float64)))
    return float(np.max(np.abs(got - want) / scale, initial=0.0))


def random_case(rng, max_dims=3, max_n=40):
    ndim = int(rng.integers(1, max_dims + 1))
    shape = tuple(int(s) for s in rng.integers(1, 6, size=ndim))
    dim = int(rng.integers(-ndim, ndim))
    shape = list(shape)
    shape[dim] = int(rng.integers(1, max_n))
    n = shape[dim]
    k = int(rng.integers(0, n + 1))
    lam = float(10 ** rng.uniform(-4, 1))
    return tuple(shape), dim, k, lam
