"""The smooth top-k Fenchel-Young loss and its stance on the shift direction."""

import numpy as np
import pytest
import torch

import smoothprune as sp


def _data(seed=0, n=16, c=10, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype), torch.randint(0, c, (n,), generator=g)


def _project_onto_permutahedron(v, k):
    """Euclidean projection of each row of ``v`` onto {y in [0, 1]^C, sum y = k}, by bisection
    on the shift tau of y = clip(v - tau, 0, 1) (float64, independent of the library)."""
    lo, hi = (v.min(-1, keepdim=True).values - 1.0), v.max(-1, keepdim=True).values
    for _ in range(200):
        tau = (lo + hi) / 2
        too_much = (v - tau).clamp(0, 1).sum(-1, keepdim=True) > k
        lo, hi = torch.where(too_much, tau, lo), torch.where(too_much, hi, tau)
    return (v - (lo + hi) / 2).clamp(0, 1)


def _target(logits, target, k, fill):
    onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
    if fill == "none":
        return onehot
    if fill == "uniform":
        return _project_onto_permutahedron(onehot, k)
    return _completed_target(logits, target, k)


def _completed_target(logits, target, k):
    t = torch.zeros_like(logits)
    t[torch.arange(len(target)), target] = 1.0
    others = logits.masked_fill(t.bool(), -np.inf)
    if k > 1:
        t.scatter_(-1, others.topk(k - 1, -1).indices, 1.0)
    return t


@pytest.mark.parametrize("p", [2.0, 4 / 3])
@pytest.mark.parametrize("fill", ["uniform", "topk", "none"])
def test_gradient_is_ystar_minus_target(p, fill):
    logits, target = _data()
    logits.requires_grad_()
    for k in (1, 3, 5):
        loss = sp.soft_topk_loss(logits, target, k, lam=0.7, p=p, reduction="sum", fill=fill)
        (g,) = torch.autograd.grad(loss, logits)
        y = sp.soft_topk_mask(logits.detach(), k, lam=0.7, p=p)
        t = _target(logits.detach(), target, k, fill)
        assert torch.allclose(g, y - t, atol=1e-12)


@pytest.mark.parametrize("p", [2.0, 4 / 3, 3.0])
def test_gradient_matches_finite_differences(p):
    logits, target = _data(1, n=4, c=6)
    logits.requires_grad_()
    for fill in ("uniform", "topk", "none"):
        fn = lambda z: sp.soft_topk_loss(z, target, 3, lam=0.5, p=p, reduction="sum", fill=fill)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("fill", ["uniform", "topk"])
def test_filled_targets_are_bounded_below_and_shift_invariant(fill, k, scale):
    logits, target = _data(2)
    loss = sp.soft_topk_loss(scale * logits, target, k, reduction="none", fill=fill)
    assert torch.all(loss >= -1e-12)
    for c in (-100.0, 3.0, 1e4):
        shifted = sp.soft_topk_loss(scale * logits + c, target, k, reduction="none", fill=fill)
        assert torch.allclose(shifted, loss, atol=1e-9 * max(1, abs(c))), c


def test_default_target_is_uniform_the_projection_of_the_label_onto_the_permutahedron():
    logits, target = _data(6)
    for k in (1, 2, 3, 10):
        onehot = torch.nn.functional.one_hot(target, 10).double()
        t = _project_onto_permutahedron(onehot, k)
        expected = onehot + (k - 1) / 9 * (1 - onehot)  # the label at 1, the rest spread evenly
        assert torch.allclose(t, expected, atol=1e-12)
        assert torch.equal(sp.soft_topk_loss(logits, target, k, reduction="none"),
                           sp.soft_topk_loss(logits, target, k, reduction="none", fill="uniform"))
    assert sp.SoftTopKLoss(3).fill == "uniform"


def test_uniform_target_loss_is_zero_only_for_the_label_first_and_the_others_tied():
    lam, k = 0.5, 3
    tied = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(sp.soft_topk_loss(tied, torch.tensor([1]), k, lam=lam)) == pytest.approx(0.0, abs=1e-12)
    # label first with a margin, but the others not tied: a positive loss pushing them together
    untied = torch.tensor([[0.0, 9.0, 1.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    loss = sp.soft_topk_loss(untied, torch.tensor([1]), k, lam=lam)
    (g,) = torch.autograd.grad(loss, untied)
    assert float(loss) > 0 and g[0, 2] > 0 > g[0, 4] and g[0, 1] == 0
    # the label in the top k but second: the loss pushes the class above it down (the topk fill
    # is 0 here: the label is confidently in the top 3)
    second = torch.tensor([[9.0, 8.0, 1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = sp.soft_topk_loss(second, torch.tensor([1]), k, lam=0.1)
    (g,) = torch.autograd.grad(loss, second)
    assert float(loss) > 0 and g[0, 0] > 0 > g[0, 3] and g[0, 1] == 0
    assert float(sp.soft_topk_loss(second, torch.tensor([1]), k, lam=0.1, fill="topk")) == 0.0


def test_raw_one_hot_loss_is_unbounded_along_the_shift_for_k_above_one():
    logits, target = _data(3)
    k = 3
    base = sp.soft_topk_loss(logits, target, k, reduction="none", fill="none")
    for c in (1.0, 10.0, 1000.0):
        shifted = sp.soft_topk_loss(logits - c, target, k, reduction="none", fill="none")
        assert torch.allclose(shifted, base - c * (k - 1), atol=1e-9 * c)
    # k = 1: both stances coincide and are shift invariant
    assert torch.allclose(
        sp.soft_topk_loss(logits, target, 1, fill="none"), sp.soft_topk_loss(logits, target, 1, fill="topk")
    )


def test_topk_fill_is_zero_once_label_is_confidently_in_top_k_and_hinge_limit():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0], [5.0, 4.0, 0.0, -1.0]], dtype=torch.float64)
    target = torch.tensor([1, 2])
    loss = sp.soft_topk_loss(logits, target, 2, lam=0.1, reduction="none", fill="topk")
    assert loss[0] == 0.0 and loss[1] > 0
    # lam -> 0: the top-k hinge max(0, theta_[k] - theta_label)
    logits, target = _data(4)
    hinge = (logits.topk(3, -1).values[:, -1] - logits.gather(1, target[:, None])[:, 0]).clamp(min=0)
    assert torch.allclose(sp.soft_topk_loss(logits, target, 3, lam=1e-9, reduction="none", fill="topk"), hinge,
                          atol=1e-8)


def test_reductions_module_and_dtypes():
    logits, target = _data(5, dtype=torch.float32)
    per = sp.soft_topk_loss(logits, target, 3, reduction="none")
    assert per.shape == (16,)
    assert torch.allclose(sp.soft_topk_loss(logits, target, 3), per.mean())
    assert torch.allclose(sp.soft_topk_loss(logits, target, 3, reduction="sum"), per.sum())
    module = sp.SoftTopKLoss(3)
    assert torch.allclose(module(logits, target), per.mean())
    assert "k=3" in repr(module)
    half = sp.soft_topk_loss(logits.half(), target, 3)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    # batched leading dims: [B, T, C] logits with [B, T] targets
    logits3 = logits.reshape(4, 4, 10)
    assert torch.allclose(sp.soft_topk_loss(logits3, target.reshape(4, 4), 3, reduction="none").flatten(), per)


BAD = [
    (lambda l, t: sp.soft_topk_loss(l, t[:5], 3), "expected target of shape (16,) for logits of shape (16, 10)"),
    (lambda l, t: sp.soft_topk_loss(l, t.float(), 3), "expected target to be an integer tensor"),
    (lambda l, t: sp.soft_topk_loss(l, t, 11), "expected k to be an int in [1, 10] (the number of classes), got k=11"),
    (lambda l, t: sp.soft_topk_loss(l, t, 0), "got k=0"),
    (lambda l, t: sp.soft_topk_loss(l, t + 10, 3), "expected target values in [0, 9]"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, lam=0.0), "expected lam to be a finite float > 0, got lam=0.0"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, p=1.0), "expected p to be a finite float > 1, got p=1.0"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, reduction="avg"), "expected reduction in"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, fill="centered"), "expected fill in"),
    (lambda l, t: sp.soft_topk_loss(l.long(), t, 3), "expected logits of dtype"),
    (lambda l, t: sp.SoftTopKLoss(0), "SoftTopKLoss: expected k to be an int >= 1, got k=0"),
    (lambda l, t: sp.SoftTopKLoss(2, lam=-1), "SoftTopKLoss: expected lam to be a finite float > 0, got lam=-1"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, algorithm="pav", num_iter=5), "soft_topk_loss: num_iter applies to algorithm='dykstra'"),
    (lambda l, t: sp.soft_topk_loss(l, t, 3, p=1.5, algorithm="dykstra"), "soft_topk_loss: algorithm='dykstra' supports p=2 and p=4/3 only, got p=1.5"),
    (lambda l, t: sp.SoftTopKLoss(2, algorithm="sinkhorn"), "SoftTopKLoss: expected algorithm in"),
    (lambda l, t: sp.SoftTopKLoss(2, num_iter=0), "SoftTopKLoss: expected num_iter to be an int >= 1, got num_iter=0"),
]


@pytest.mark.slow  # converged Dykstra
@pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p43"])
def test_dykstra_solver_gives_the_same_loss_once_converged(p):
    """The loss with the accelerator solver (what "auto" runs on XLA) equals the exact one when
    Dykstra has converged, values and gradients; with too few iterations it differs."""
    logits, target = _data()
    logits = logits.double().requires_grad_()
    exact = sp.soft_topk_loss(logits, target, 3, lam=1.0, p=p, reduction="none")
    (g_exact,) = torch.autograd.grad(exact.sum(), logits)
    module = sp.SoftTopKLoss(3, lam=1.0, p=p, reduction="none", algorithm="dykstra", num_iter=3000)
    approx = module(logits, target)
    (g_approx,) = torch.autograd.grad(approx.sum(), logits)
    assert torch.allclose(approx, exact, atol=1e-9) and torch.allclose(g_approx, g_exact, atol=1e-9)
    rough = sp.soft_topk_loss(logits, target, 3, lam=1.0, p=p, reduction="none", algorithm="dykstra", num_iter=2)
    assert (rough - exact).abs().max() > 1e-4
    assert "num_iter=3000" in repr(module)


@pytest.mark.parametrize("call,message", BAD, ids=[m for _, m in BAD])
def test_bad_loss_arguments(call, message):
    logits, target = _data()
    with pytest.raises(ValueError) as info:
        call(logits, target)
    assert message in str(info.value)
