"""Closed-form backward: gradcheck in float64, opcheck, and finiteness everywhere."""

import functools
import itertools

import numpy as np
import pytest
import torch

import smoothprune as sp
from tests.helpers import MODES, P_VALUES, random_case


def _separated_input(rng, shape):
    # gradcheck differentiates numerically with eps=1e-6: keep entries (and |entries|) apart so
    # that no block membership changes inside the finite-difference step
    n = int(np.prod(shape))
    vals = rng.permutation(np.linspace(0.1, 3.0, n)) * rng.choice([-1.0, 1.0], size=n)
    vals += rng.uniform(-0.01, 0.01, size=n)
    return torch.from_numpy(vals.reshape(shape))


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("p", P_VALUES, ids=lambda p: f"p={p:.3g}")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_gradcheck_float64(mode, p, device, rng):
    _, op, _ = mode
    for _ in range(6):
        shape, dim, k, lam = random_case(rng, max_n=12)
        lam = float(10 ** rng.uniform(-1, 0.5))  # pooled blocks of every size
        x = _separated_input(rng, shape).to(device).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: op(t, k, lam=lam, p=p, dim=dim), (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradient_of_pooled_block_by_hand():
    # s = (3, 1, -2, -5), k = 2, lam = 5: block {1, -2}; dy/dx on the block is (I - 11^T/2)/lam
    x = torch.tensor([-5.0, -2.0, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    y = sp.soft_topk_mask(x, 2, lam=5.0, p=2)
    (g,) = torch.autograd.grad(y @ torch.tensor([0.0, 1.0, 7.0, 3.0], dtype=torch.float64), x)
    assert torch.allclose(g, torch.tensor([0.0, (1 - 2) / 5, 0.0, (3 - 2) / 5], dtype=torch.float64))


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_second_derivative_raises_instead_of_returning_zeros(mode, device):
    # The first derivative under create_graph=True is the ordinary one; differentiating it again
    # must fail loudly (without its own autograd kernel the backward op's result would be treated
    # as a constant, and p = 4/3 second derivatives would silently come out as zeros).
    _, op, _ = mode
    x = torch.randn(3, 10, dtype=torch.float64, device=device, requires_grad=True)
    (g_plain,) = torch.autograd.grad(op(x, 3, lam=0.5, p=4 / 3).pow(2).sum(), x)
    (g,) = torch.autograd.grad(op(x, 3, lam=0.5, p=4 / 3).pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(g, g_plain, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        g.sum().backward()


def test_no_gradient_flows_to_lam():
    x = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    sp.soft_topk_mag(x, 4, lam=lam, p=2).pow(2).sum().backward()
    assert x.grad is not None and lam.grad is None


def _opcheck_samples():
    torch.manual_seed(0)
    samples = []
    for (p, magnitude, debias), dtype in itertools.product(
        [(2.0, False, False), (4 / 3, False, False), (2.0, True, True), (4 / 3, True, False), (3.0, True, True)],
        [torch.float32, torch.float64],
    ):
        for shape, k, lam in [((7,), 3, 0.5), ((3, 20), 5, 0.05), ((2, 3, 9), 0, 1.0), ((4, 6), 6, 2.0)]:
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            samples.append((x, torch.tensor(k), torch.tensor(lam, dtype=torch.float64), p, magnitude, debias))
    return samples


@pytest.mark.slow  # torch.library.opcheck of 40 samples (fake tensors, autograd registration)
@pytest.mark.parametrize("args", _opcheck_samples(), ids=lambda a: f"{tuple(a[0].shape)}-{a[0].dtype}-p{a[3]:.3g}-mag{a[4]}")
def test_opcheck_forward(args):
    torch.library.opcheck(torch.ops.smoothprune.soft_topk_forward.default, args)


def test_opcheck_backward():
    torch.manual_seed(0)
    x = torch.randn(3, 11, dtype=torch.float64)
    k, lam = torch.tensor(4), torch.tensor(0.3, dtype=torch.float64)
    for p, magnitude, debias in [(2.0, False, False), (4 / 3, True, True), (1.5, True, False)]:
        _, perm, blocks, gamma = torch.ops.smoothprune.soft_topk_forward(x, k, lam, p, magnitude, debias)
        torch.library.opcheck(
            torch.ops.smoothprune.soft_topk_backward.default,
            (torch.randn_like(x), x, perm, blocks, gamma, k, lam, p, magnitude, debias),
        )


@functools.cache
def _finiteness_inputs():
    rng = np.random.default_rng(7)
    return {
        "pruning_scale": rng.normal(size=(3, 64)) * 0.05,
        "ties": np.round(rng.normal(size=(3, 64)) * 4) / 4,  # many exact ties
        "zeros": np.concatenate([np.zeros((3, 32)), rng.normal(size=(3, 32))], axis=1),  # exact zeros
        "huge": rng.normal(size=(3, 64)) * 1e4,
        "tiny": rng.normal(size=(3, 64)) * 1e-6,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
@pytest.mark.parametrize("inputs", ["pruning_scale", "ties", "zeros", "huge", "tiny"])
@pytest.mark.parametrize("p", [1.05, 1.2, 4 / 3, 1.5, 2.0, 2.5, 3.0, 6.0], ids=lambda p: f"p={p:.3g}")
def test_outputs_and_gradients_are_finite_for_every_p_and_lam(p, inputs, mode, dtype):
    # every (lam, k) of the grid is checked and every failing one reported (35 per test: one test
    # per grid point would spend more time in pytest than in the operator)
    name, op, _ = mode
    x = torch.from_numpy(_finiteness_inputs()[inputs]).to(dtype).requires_grad_()
    failures = []
    for lam, k in itertools.product(np.logspace(-8, 4, 7), (0, 1, 17, 63, 64)):
        y = op(x, k, lam=float(lam), p=p)
        (g,) = torch.autograd.grad(y, x, torch.randn_like(y))
        if not torch.isfinite(y).all():
            failures.append(f"lam={lam:g} k={k}: outputs not finite")
        if not torch.isfinite(g).all():
            failures.append(f"lam={lam:g} k={k}: gradients not finite")
    assert not failures, failures


def test_lam_near_authors_nan_point_is_finite():
    # the authors' JAX implementation returns NaN outputs around lam = 0.4 and NaN gradients for
    # p = 4/3 in magnitude mode; sweep that region densely
    torch.manual_seed(3)
    x = torch.randn(16, 50, dtype=torch.float64, requires_grad=True)
    for lam in np.linspace(0.3, 0.5, 41):
        y = sp.soft_topk_mag(x, 10, lam=float(lam), p=4 / 3)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
