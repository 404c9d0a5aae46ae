"""Shared test helpers (test modules import from here, never from one another): the modes and
p values of the operators, a 1-D float64 oracle applied along a dim, random cases, weights at
pruning scale with the Dykstra accuracy bounds, CUDA graph capture, and the repository's paths."""

from __future__ import annotations

import os

import numpy as np
import torch

import smoothprune as sp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(REPO, "conf")

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


def pruning_weights(shape, seed=0, dtype=torch.float64):
    """Weights at pruning scale, ~ N(0, 0.05^2), drawn in float64 (the same values for every dtype)."""
    g = torch.Generator().manual_seed(seed)
    return (0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


# Accuracy of the Dykstra path at the paper's pruning scale: the README's table
# (benchmarks/dykstra_accuracy.py) reports these errors; here are the bounds it must stay under
# (max |dykstra - pav| on `pruning_weights(shape)`), asserted on CPU (tests/ops/test_dykstra.py)
# and on torch_xla (tests/xla/test_ops.py).
ACCURACY_BOUNDS = [
    # (p, shape, k, lam, num_iter, mask bound, magnitude bound)
    (2.0, (32, 400), 28, 1e-4, 10, 1e-9, 1e-9),
    (2.0, (32, 400), 28, 1e-3, 100, 1e-9, 1e-9),
    (2.0, (32, 400), 28, 1e-2, 10, 0.5, 1e-3),
    (2.0, (512, 100), 3, 1e-3, 10, 1e-5, 1e-9),
    (2.0, (512, 100), 3, 1e-2, 100, 1e-9, 1e-9),
    (4 / 3, (32, 400), 28, 1e-4, 10, 1e-9, 1e-9),
    (4 / 3, (32, 400), 28, 1e-3, 100, 1e-9, 1e-9),
    (4 / 3, (32, 400), 28, 1e-2, 100, 1e-2, 1e-7),
    (4 / 3, (512, 100), 3, 1e-2, 100, 1e-9, 1e-9),
]
ACCURACY_IDS = [f"p{p:.3g}-{r}x{n}-k{k}-lam{lam:g}-{t}it" for p, (r, n), k, lam, t, _, _ in ACCURACY_BOUNDS]
