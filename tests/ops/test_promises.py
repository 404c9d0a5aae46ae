"""The promises every path keeps, PAV and Dykstra and the hard ops alike: a row holding a NaN or
Inf gives NaN (outputs and gradients) and leaves the other rows alone; k and lam given as CPU
tensors are checked on the host like Python numbers; where they cannot be (under torch.compile,
on a device) an invalid value gives NaN; second derivatives raise; every shape compiles with
fullgraph=True; empty inputs run forward and backward."""

from __future__ import annotations

import pytest
import torch

import smoothprune as sp

ALGORITHMS = ("pav", "dykstra")
SMOOTH = {"mask": sp.soft_topk_mask, "mag": sp.soft_topk_mag}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("op", SMOOTH)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_row_holding_nan_or_inf_gives_nan_and_leaves_the_others(algorithm, op, bad):
    clean = torch.tensor([[0.3, -0.2, 0.1, 0.5]])
    x = torch.cat([torch.tensor([[0.4, bad, 0.0, 0.2]]), clean]).requires_grad_()
    y = SMOOTH[op](x, 2, lam=0.5, p=2.0, algorithm=algorithm)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.isnan(y[0]).all() and torch.isnan(x.grad[0]).all()
    expected = SMOOTH[op](clean, 2, lam=0.5, p=2.0, algorithm=algorithm)
    torch.testing.assert_close(y[1:], expected)
    assert torch.isfinite(x.grad[1]).all()


@pytest.mark.parametrize("call", [
    lambda x, k: sp.soft_topk_mask(x, k, algorithm="pav"),
    lambda x, k: sp.soft_topk_mag(x, k, algorithm="dykstra"),
    lambda x, k: sp.hard_topk_mask(x, k),
    lambda x, k: sp.hard_topk_mag(x, k),
], ids=["mask-pav", "mag-dykstra", "hard-mask", "hard-mag"])
@pytest.mark.parametrize("k", [7, -1])
def test_a_cpu_tensor_k_out_of_range_raises(call, k):
    with pytest.raises(ValueError, match=rf"expected 0 <= k <= 3 along dim -1, got k={k}$"):
        call(torch.rand(3), torch.tensor(k))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("lam", [0.0, -1.0, float("inf"), float("nan")])
def test_a_cpu_tensor_lam_that_is_not_positive_and_finite_raises(algorithm, lam):
    with pytest.raises(ValueError, match=r"soft_topk_mag: expected lam to be a finite float > 0, got lam="):
        sp.soft_topk_mag(torch.rand(3), 1, lam=torch.tensor(lam), algorithm=algorithm)


@pytest.mark.parametrize("op", [sp.hard_topk_mask, sp.hard_topk_mag], ids=["hard-mask", "hard-mag"])
@pytest.mark.parametrize("k", [2, torch.tensor(2)], ids=["int-k", "tensor-k"])
def test_hard_ops_give_nan_on_a_row_holding_nan_or_inf(op, k):
    x = torch.tensor([[0.4, float("nan"), 0.0, 0.2], [0.3, -float("inf"), 0.1, 0.5], [0.3, -0.2, 0.1, 0.5]],
                     requires_grad=True)
    y = op(x, k)
    assert torch.isnan(y[:2]).all()
    torch.testing.assert_close(y[2], op(x[2].detach(), 2))
    if op is sp.hard_topk_mag:  # (the mask has no gradient)
        y.sum().backward()
        assert torch.isnan(x.grad[:2]).all() and torch.equal(x.grad[2], torch.tensor([1.0, 0.0, 0.0, 1.0]))


@pytest.mark.slow  # compiles
@pytest.mark.usefixtures("fresh_dynamo")
def test_where_k_cannot_be_checked_an_invalid_tensor_k_gives_nan():
    """Under torch.compile the values are not read on the host (that would guard on them):
    the hard ops and Dykstra give NaN for a k outside [0, n], as the CUDA kernels do."""
    x = torch.rand(2, 3)
    hard = torch.compile(lambda t, k: sp.hard_topk_mag(t, k), fullgraph=True)
    dykstra = torch.compile(lambda t, k: sp.soft_topk_mask(t, k, algorithm="dykstra"), fullgraph=True)
    for fn in (hard, dykstra):
        assert torch.isnan(fn(x, torch.tensor(7))).all()
        good = fn(x, torch.tensor(2))
        assert torch.isfinite(good).all()
    torch.testing.assert_close(hard(x, torch.tensor(2)), sp.hard_topk_mag(x, 2))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("p", [2.0, 4 / 3])
@pytest.mark.parametrize("op", SMOOTH)
def test_second_derivatives_raise(algorithm, p, op):
    x = torch.rand(6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(SMOOTH[op](x, 2, lam=0.5, p=p, algorithm=algorithm).pow(2).sum(), x,
                               create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("shape", [(1,), (2,), (3,), (4,), (2, 1), (3, 2), (2, 4)])
@pytest.mark.parametrize("op", SMOOTH)
@pytest.mark.slow  # compiles
@pytest.mark.usefixtures("fresh_dynamo")
def test_dykstra_compiles_fullgraph_for_every_shape(shape, op):
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    k = shape[-1] // 2 + (shape[-1] == 1)
    fn = lambda t: SMOOTH[op](t, k, lam=0.3, algorithm="dykstra")  # noqa: E731
    y = torch.compile(fn, fullgraph=True)(x)
    (grad,) = torch.autograd.grad((y * torch.arange(float(x.numel())).view_as(x)).sum(), x)
    x_eager = x.detach().clone().requires_grad_()
    y_eager = fn(x_eager)
    (grad_eager,) = torch.autograd.grad((y_eager * torch.arange(float(x.numel())).view_as(x)).sum(), x_eager)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(grad, grad_eager)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("op", SMOOTH)
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3)])
def test_empty_inputs_run_forward_and_backward(algorithm, op, shape):
    x = torch.zeros(shape, requires_grad=True)
    y = SMOOTH[op](x, 0, algorithm=algorithm)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
