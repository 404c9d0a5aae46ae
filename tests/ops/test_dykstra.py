"""The Dykstra path (p = 2, pure tensor ops) against the exact PAV."""

import pytest
import torch

import smoothprune as sp
from smoothprune.ops.dykstra import isotonic_dykstra

OPS = [
    ("mask", lambda x, k, **kw: sp.soft_topk_mask(x, k, p=2, **kw)),
    ("mag", lambda x, k, **kw: sp.soft_topk_mag(x, k, p=2, **kw)),
    ("mag_raw", lambda x, k, **kw: sp.soft_topk_mag(x, k, p=2, debias=False, **kw)),
]


def _weights(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)


def test_isotonic_dykstra_converges_to_the_isotonic_regression():
    torch.manual_seed(0)
    target = torch.randn(5, 9, dtype=torch.float64)
    weight = torch.rand(5, 9, dtype=torch.float64) + 0.5
    v = isotonic_dykstra(target, weight, 3000)
    assert torch.all(v[:, :-1] >= v[:, 1:] - 1e-12)  # monotone
    # optimality: weighted residuals sum to zero on every block and partial sums are >= 0
    r = (weight * (target - v)).numpy()
    for row_r, row_v in zip(r, v.numpy()):
        start = 0
        for i in range(1, len(row_v) + 1):
            if i == len(row_v) or row_v[i] < row_v[i - 1] - 1e-12:
                block = row_r[start:i]
                assert abs(block.sum()) < 1e-9
                assert all(block[: j + 1].sum() <= 1e-9 for j in range(len(block)))
                start = i


@pytest.mark.parametrize("name,op", OPS, ids=[o[0] for o in OPS])
def test_converged_dykstra_equals_pav(name, op):
    torch.manual_seed(1)
    x = torch.randn(6, 15, dtype=torch.float64)
    for k in (0, 1, 6, 14, 15):
        for lam in (1e-3, 0.1, 1.0, 10.0):
            exact = op(x, k, lam=lam)
            approx = op(x, k, lam=lam, algorithm="dykstra", num_iter=2000)
            assert (exact - approx).abs().max() < 1e-9, (k, lam)


@pytest.mark.parametrize("name,op", OPS, ids=[o[0] for o in OPS])
def test_converged_dykstra_backward_equals_pav_backward(name, op):
    torch.manual_seed(2)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(4, 12, dtype=torch.float64)
    for k, lam in [(3, 0.5), (6, 2.0), (1, 0.05), (12, 1.0), (0, 1.0)]:
        (g_exact,) = torch.autograd.grad(op(x, k, lam=lam), x, cot)
        (g_dyk,) = torch.autograd.grad(op(x, k, lam=lam, algorithm="dykstra", num_iter=2000), x, cot)
        assert (g_exact - g_dyk).abs().max() < 1e-9, (k, lam)


# Accuracy at the paper's pruning scale: the README's table (benchmarks/dykstra_accuracy.py)
# reports these errors; here are the bounds it must stay under (max |dykstra - pav|).
ACCURACY_BOUNDS = [
    # (shape, k, lam, num_iter, mask bound, magnitude bound)
    ((32, 400), 28, 1e-4, 10, 1e-9, 1e-9),
    ((32, 400), 28, 1e-3, 100, 1e-9, 1e-9),
    ((32, 400), 28, 1e-2, 10, 0.5, 1e-3),
    ((512, 100), 3, 1e-3, 10, 1e-5, 1e-9),
    ((512, 100), 3, 1e-2, 100, 1e-9, 1e-9),
]


@pytest.mark.parametrize("shape,k,lam,num_iter,mask_bound,mag_bound", ACCURACY_BOUNDS)
def test_accuracy_table_bounds(shape, k, lam, num_iter, mask_bound, mag_bound):
    x = _weights(shape)
    for op, bound in ((sp.soft_topk_mask, mask_bound), (sp.soft_topk_mag, mag_bound)):
        err = (op(x, k, lam=lam, p=2) - op(x, k, lam=lam, p=2, algorithm="dykstra", num_iter=num_iter)).abs().max()
        assert err < bound


def test_more_iterations_never_hurt():
    x = _weights((8, 300), seed=3)
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        exact = op(x, 30, lam=0.01, p=2)
        errs = [(exact - op(x, 30, lam=0.01, p=2, algorithm="dykstra", num_iter=t)).abs().max().item() for t in (10, 30, 100, 300, 1000)]
        assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:])), errs


def test_dykstra_output_properties():
    x = _weights((16, 200), seed=4).float()
    y = sp.soft_topk_mask(x, 20, lam=0.05, p=2, algorithm="dykstra")
    assert y.dtype == torch.float32 and torch.all((y >= 0) & (y <= 1))
    ym = sp.soft_topk_mag(x, 20, lam=0.05, p=2, algorithm="dykstra")
    assert torch.all(ym * x >= 0) and torch.all(ym.abs() <= x.abs() * (1 + 1e-6))
    yh = sp.soft_topk_mag(x.half(), 20, lam=0.05, p=2, algorithm="dykstra")
    assert yh.dtype == torch.float16 and torch.isfinite(yh).all()
    # k and lam as tensors give the same result
    yt = sp.soft_topk_mask(x, torch.tensor(20), lam=torch.tensor(0.05), p=2, algorithm="dykstra")
    assert torch.allclose(yt, y)


def test_dykstra_dim_and_gradients_finite():
    x = _weights((5, 7, 30), seed=5).requires_grad_()
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        y = op(x, 4, lam=0.3, p=2, dim=1, algorithm="dykstra")
        assert y.shape == x.shape
        (g,) = torch.autograd.grad(y, x, torch.randn_like(y))
        assert torch.isfinite(g).all()
