"""Expert-choice routing: the router's mask and dispatch, the MoE layer against a per-expert loop
reference, gather/scatter against the one-hot einsum formulation, gradients reaching the router."""

import math

import pytest
import torch

import smoothprune as sp
from smoothprune.nn import ExpertChoiceRouter, SparseMoE

TOPKS = ["hard", "dykstra", "pav"]


def make_moe(topk, *, dim=8, hidden=12, experts=4, capacity_factor=1.0, lam=1e-2, dispatch="gather", seed=0):
    torch.manual_seed(seed)
    return SparseMoE(dim, hidden, experts, topk=topk, capacity_factor=capacity_factor, lam=lam,
                     dispatch=dispatch).double()


def loop_reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Expert choice written out: every expert takes its C tokens with the largest mask entries
    and adds gate * mask * expert(token) to them, one token at a time."""
    gates = torch.softmax(x @ moe.router.gate.weight.t(), dim=-1)
    capacity = moe.router.capacity(x.shape[1])
    mask = moe.router.select(gates, capacity)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for e in range(moe.router.num_experts):
            for s in mask[b, :, e].detach().topk(capacity).indices.tolist():
                h = torch.nn.functional.gelu(x[b, s] @ moe.w1[e] + moe.b1[e])
                out[b, s] += gates[b, s, e] * mask[b, s, e] * (h @ moe.w2[e] + moe.b2[e])
    return out


@pytest.mark.parametrize("topk", TOPKS)
def test_moe_matches_the_per_expert_loop(topk):
    moe = make_moe(topk)
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(moe(x), loop_reference(moe, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("topk", TOPKS)
@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_gather_dispatch_equals_the_one_hot_einsum_reference(topk, capacity_factor):
    gather = make_moe(topk, capacity_factor=capacity_factor)
    einsum = make_moe(topk, capacity_factor=capacity_factor, dispatch="einsum")
    einsum.load_state_dict(gather.state_dict())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = gather(xa), einsum(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
    for (name, pa), pb in zip(gather.named_parameters(), einsum.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("tokens,experts,factor,expected", [(10, 4, 1.0, 3), (16, 8, 1.0, 2), (17, 8, 2.0, 5),
                                                            (5, 8, 1.0, 1), (4, 2, 8.0, 4)])
def test_capacity_is_ceil_s_c_over_e_clipped_to_the_tokens(tokens, experts, factor, expected):
    router = ExpertChoiceRouter(4, experts, capacity_factor=factor)
    assert router.capacity(tokens) == expected == max(1, min(tokens, math.ceil(tokens * factor / experts)))


def test_hard_router_picks_each_experts_top_c_gates():
    torch.manual_seed(0)
    router = ExpertChoiceRouter(8, 4, topk="hard")
    routing = router(torch.randn(3, 10, 8))
    C = routing.capacity
    assert torch.equal(routing.mask.sum(dim=1), torch.full((3, 4), float(C)))
    assert float(routing.nnz_per_capacity()) == 1.0
    expected = routing.gates.topk(C, dim=1).indices.transpose(1, 2).sort(dim=-1).values
    assert torch.equal(routing.index.sort(dim=-1).values, expected)
    torch.testing.assert_close(routing.weight, routing.gates.gather(1, routing.index.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("topk", ["dykstra", "pav"])
def test_smooth_mask_sums_to_c_and_may_exceed_c_nonzeros(topk):
    torch.manual_seed(0)
    router = ExpertChoiceRouter(8, 4, topk=topk, lam=0.05).double()
    routing = router(torch.randn(16, 10, 8, dtype=torch.float64))
    C = routing.capacity
    tol = 1e-9 if topk == "pav" else 1e-3  # Dykstra at 10 iterations is approximate
    torch.testing.assert_close(routing.mask.sum(dim=1), torch.full((16, 4), float(C), dtype=torch.float64),
                               rtol=0, atol=tol)
    nnz = (routing.mask != 0).sum(dim=1)
    assert (nnz >= C).all() and (nnz > C).any()
    assert float(routing.nnz_per_capacity()) > 1.0
    # the dispatched tokens are the C largest mask entries
    top = routing.mask.topk(C, dim=1).values
    torch.testing.assert_close(routing.mask.gather(1, routing.index.transpose(1, 2)).sort(dim=1).values,
                               top.sort(dim=1).values)


def test_coverage_counts_tokens_dispatched_at_least_once():
    torch.manual_seed(0)
    routing = ExpertChoiceRouter(8, 4, topk="hard", capacity_factor=0.5)(torch.randn(5, 12, 8))
    hit = torch.zeros(5, 12)
    for b in range(5):
        for e in range(4):
            hit[b, routing.index[b, e]] = 1
    assert float(routing.coverage()) == pytest.approx(float(hit.mean()))


def test_dykstra_router_matches_pav_router_at_small_lam():
    dyk, pav = make_moe("dykstra", lam=1e-3), make_moe("pav", lam=1e-3)
    pav.load_state_dict(dyk.state_dict())
    x = torch.randn(4, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(dyk(x), pav(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("topk", TOPKS)
def test_gradient_reaches_the_router_through_the_mask_only_when_smooth(topk):
    """Gate gradient with the mask differentiated vs held constant: equal for the hard top-k
    (its mask is piecewise constant), different for the smooth one."""
    moe = make_moe(topk, lam=0.05)
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    moe(x).square().sum().backward()
    full = moe.router.gate.weight.grad.clone()
    moe.zero_grad()
    select = moe.router.select
    moe.router.select = lambda gates, c: select(gates, c).detach()
    moe(x).square().sum().backward()
    frozen = moe.router.gate.weight.grad
    assert torch.isfinite(full).all() and full.abs().sum() > 0
    if topk == "hard":
        torch.testing.assert_close(full, frozen, rtol=1e-12, atol=1e-12)
    else:
        assert (full - frozen).abs().max() > 1e-3 * full.abs().max()


def test_gradcheck_through_the_smooth_router():
    moe = make_moe("pav", dim=4, hidden=5, experts=3, lam=0.1)
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    # the dispatched set is piecewise constant in x; small perturbations keep it
    assert torch.autograd.gradcheck(lambda t: moe(t), (x,), eps=1e-7, atol=1e-6)


@pytest.mark.slow  # trains a model
def test_router_inside_a_model_trains_and_stays_finite():
    torch.manual_seed(0)
    moe = SparseMoE(8, 16, 4, topk="dykstra", lam=1e-2)
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    x, target = torch.randn(8, 10, 8), torch.randn(8, 10, 8)
    losses = []
    for _ in range(30):
        loss = (moe(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(topk="soft"), r"expected topk in \('hard', 'dykstra', 'pav'\), got topk='soft'"),
    (dict(topk="dykstra", p=1.5), r"topk='dykstra' supports p=2 and p=4/3 only, got p=1.5"),
    (dict(capacity_factor=0), r"expected capacity_factor to be a finite float > 0, got capacity_factor=0"),
    (dict(lam=-1.0), r"expected lam to be a finite float > 0"),
    (dict(num_iter=0), r"expected num_iter to be an int >= 1, got num_iter=0"),
    (dict(p=1.0), r"expected p to be a finite float > 1, got p=1.0"),
])
def test_bad_router_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match="ExpertChoiceRouter: " + match):
        ExpertChoiceRouter(8, 4, **kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, tokens, dim\], got shape \(10, 8\)"):
        ExpertChoiceRouter(8, 4)(torch.randn(10, 8))
    with pytest.raises(ValueError, match="SparseMoE: expected dispatch in"):
        SparseMoE(8, 16, 4, dispatch="dense")
    with pytest.raises(ValueError, match="SparseMoE: expected hidden to be an int >= 1"):
        SparseMoE(8, 0, 4)


def test_public_names():
    assert sp.nn.ExpertChoiceRouter is ExpertChoiceRouter and sp.nn.SparseMoE is SparseMoE
