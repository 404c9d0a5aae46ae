"""The Dykstra path (p = 2 and 4/3, pure tensor ops) against the exact PAV."""

import functools

import pytest
import torch

import smoothprune as sp
from smoothprune.ops.dykstra import cubic_root, dual_ascent, free_z
from tests.helpers import ACCURACY_BOUNDS, ACCURACY_IDS, pruning_weights


def _pool_pairs(v, u, offset):
    """Weighted projection onto {v[offset] >= v[offset+1], v[offset+2] >= v[offset+3], ...}."""
    v = v.clone()
    for i in range(offset, v.shape[-1] - 1, 2):
        a, b, wa, wb = v[..., i], v[..., i + 1], u[..., i], u[..., i + 1]
        mean = (wa * a + wb * b) / (wa + wb)
        violated = a < b
        v[..., i], v[..., i + 1] = torch.where(violated, mean, a), torch.where(violated, mean, b)
    return v


def isotonic_dykstra(target, weight, num_iter):
    """Textbook Dykstra (alternating projections with correction terms) onto the monotone cone,
    written independently of the library's dual formulation."""
    v, p, q = target, torch.zeros_like(target), torch.zeros_like(target)
    for _ in range(num_iter):
        y = _pool_pairs(v + p, weight, 0)
        p = v + p - y
        v = _pool_pairs(y + q, weight, 1)
        q = y + q - v
    return v

OPS = [
    (f"{name}_p{label}", functools.partial(fn, p=p, **kw))
    for p, label in ((2.0, "2"), (4 / 3, "43"))
    for name, fn, kw in (
        ("mask", sp.soft_topk_mask, {}),
        ("mag", sp.soft_topk_mag, {}),
        ("mag_raw", sp.soft_topk_mag, {"debias": False}),
    )
]


@pytest.mark.slow  # thousands of textbook Dykstra iterations
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


@pytest.mark.slow  # thousands of textbook Dykstra iterations
@pytest.mark.parametrize("magnitude", [False, True])
@pytest.mark.parametrize("num_iter", [1, 3, 8])
def test_p2_dual_ascent_iterates_are_dykstras(magnitude, num_iter):
    """For p = 2, block coordinate ascent on the dual is Dykstra's algorithm, iterate by iterate
    (checked before convergence, where any difference would show)."""
    torch.manual_seed(5)
    s = torch.randn(4, 11, dtype=torch.float64).sort(-1, descending=True).values
    k, lam = 4, torch.tensor(0.7, dtype=torch.float64)
    w = (torch.arange(11) < k).to(s.dtype).expand_as(s)
    mu = dual_ascent(s, w, lam, 2, magnitude, num_iter)
    v = s - lam * free_z(mu[..., 1:] - mu[..., :-1], s, w, lam, 2, magnitude)
    u = 1 + lam * w if magnitude else torch.ones_like(s)
    target = s / u if magnitude else s - lam * w
    expected = isotonic_dykstra(target, u, num_iter)
    assert (v - expected).abs().max() < 1e-12
    # far from converged, so agreement is not just both reaching the solution
    assert (expected - isotonic_dykstra(target, u, 2000)).abs().max() > 1e-3


def test_cubic_root_is_the_real_root():
    torch.manual_seed(6)
    P = torch.cat((torch.rand(200, dtype=torch.float64) * 10.0 ** torch.randint(-12, 6, (200,)), torch.zeros(5)))
    Q = torch.cat((torch.randn(200, dtype=torch.float64) * 10.0 ** torch.randint(-12, 6, (200,)), torch.tensor([0.0, 1.0, -8.0, 1e-30, -1e20])))
    t = cubic_root(P, Q)
    residual = t**3 + P * t + Q
    scale = (t.abs() ** 3 + P * t.abs() + Q.abs()).clamp(min=1e-300)
    assert torch.all(residual.abs() <= 1e-14 * scale)
    assert cubic_root(torch.zeros(1, dtype=torch.float64), torch.tensor([-8.0], dtype=torch.float64)).item() == pytest.approx(2.0)


@pytest.mark.slow  # 2000 iterations
@pytest.mark.parametrize("lam", [1e-3, 0.3, 10.0])
@pytest.mark.parametrize("k", [0, 1, 6, 14, 15])
@pytest.mark.parametrize("name,op", OPS, ids=[o[0] for o in OPS])
def test_converged_dykstra_equals_pav(name, op, k, lam):
    torch.manual_seed(1)
    x = torch.randn(6, 15, dtype=torch.float64)
    exact = op(x, k, lam=lam)
    approx = op(x, k, lam=lam, algorithm="dykstra", num_iter=2000)
    assert (exact - approx).abs().max() < 1e-9


@pytest.mark.slow  # 2000 iterations
@pytest.mark.parametrize("k,lam", [(3, 0.5), (6, 2.0), (1, 0.05), (12, 1.0), (0, 1.0)])
@pytest.mark.parametrize("name,op", OPS, ids=[o[0] for o in OPS])
def test_converged_dykstra_backward_equals_pav_backward(name, op, k, lam):
    torch.manual_seed(2)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(4, 12, dtype=torch.float64)
    (g_exact,) = torch.autograd.grad(op(x, k, lam=lam), x, cot)
    (g_dyk,) = torch.autograd.grad(op(x, k, lam=lam, algorithm="dykstra", num_iter=2000), x, cot)
    assert (g_exact - g_dyk).abs().max() < 1e-9


# Accuracy at the paper's pruning scale: the bounds of the README's table (tests/helpers.py).
@pytest.mark.slow  # up to 100 iterations on 51,200 entries
@pytest.mark.parametrize("magnitude", [False, True], ids=["mask", "mag"])
@pytest.mark.parametrize("p,shape,k,lam,num_iter,mask_bound,mag_bound", ACCURACY_BOUNDS, ids=ACCURACY_IDS)
def test_accuracy_table_bounds(p, shape, k, lam, num_iter, mask_bound, mag_bound, magnitude):
    x = pruning_weights(shape)
    op, bound = (sp.soft_topk_mag, mag_bound) if magnitude else (sp.soft_topk_mask, mask_bound)
    err = (op(x, k, lam=lam, p=p) - op(x, k, lam=lam, p=p, algorithm="dykstra", num_iter=num_iter)).abs().max()
    assert err < bound


@pytest.mark.slow  # up to 1000 iterations
@pytest.mark.parametrize("op", [sp.soft_topk_mask, sp.soft_topk_mag], ids=["mask", "mag"])
def test_more_iterations_never_hurt(op):
    x = pruning_weights((8, 300), seed=3)
    exact = op(x, 30, lam=0.01, p=2)
    errs = [(exact - op(x, 30, lam=0.01, p=2, algorithm="dykstra", num_iter=t)).abs().max().item() for t in (10, 30, 100, 300, 1000)]
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:])), errs


def test_dykstra_output_properties():
    x = pruning_weights((16, 200), seed=4).float()
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
    x = pruning_weights((5, 7, 30), seed=5).requires_grad_()
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        y = op(x, 4, lam=0.3, p=2, dim=1, algorithm="dykstra")
        assert y.shape == x.shape
        (g,) = torch.autograd.grad(y, x, torch.randn_like(y))
        assert torch.isfinite(g).all()
