"""All operators under torch.compile(fullgraph=True), with bounded recompilation."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import smoothprune as sp


# every test compiles (Dynamo + Inductor: seconds to a minute each): the slow tier
pytestmark = [pytest.mark.usefixtures("fresh_dynamo"), pytest.mark.slow]


CASES = {
    "mask_pav_p43": lambda x, k, lam: sp.soft_topk_mask(x, k, lam=lam, p=4 / 3),
    "mag_pav_p2": lambda x, k, lam: sp.soft_topk_mag(x, k, lam=lam, p=2, dim=0),
    "mag_dykstra": lambda x, k, lam: sp.soft_topk_mag(x, k, lam=lam, p=2, algorithm="dykstra", num_iter=3),
    "mask_dykstra": lambda x, k, lam: sp.soft_topk_mask(x, k, lam=lam, p=2, algorithm="dykstra", num_iter=3),
    "mag_dykstra_p43": lambda x, k, lam: sp.soft_topk_mag(x, k, lam=lam, p=4 / 3, algorithm="dykstra", num_iter=3),
    "mask_dykstra_p43": lambda x, k, lam: sp.soft_topk_mask(x, k, lam=lam, p=4 / 3, algorithm="dykstra", num_iter=3),
}


@pytest.mark.parametrize("name", CASES)
def test_fullgraph_forward_backward_matches_eager(name):
    fn = CASES[name]
    compiled = torch.compile(fn, fullgraph=True)
    x = torch.randn(6, 40, requires_grad=True)
    y_eager = fn(x, 5, 0.2)
    (g_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    y = compiled(x, 5, 0.2)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.allclose(y, y_eager, atol=1e-6) and torch.allclose(g, g_eager, atol=1e-5)


def _compilations(counter, calls):
    """Compilations caused by `calls`: the first call compiles; later growth means recompiles.

    (Counted this way because the first compile of an autograd.Function may reach the backend
    twice without any recompilation.)"""
    calls[0]()
    first = counter.frame_count
    assert first >= 1
    for call in calls[1:]:
        call()
    return 1 + counter.frame_count - first


@pytest.mark.parametrize("name", ["mask_pav_p43", "mag_pav_p2", "mag_dykstra", "mask_dykstra_p43"])
def test_ten_values_of_k_or_lam_compile_at_most_twice(name):
    fn = CASES[name]
    x = torch.randn(30, 30, requires_grad=True)

    def compiled_sum():
        counter = CompileCounterWithBackend("inductor")
        return counter, torch.compile(lambda x, k, lam: fn(x, k, lam).sum(), fullgraph=True, backend=counter)

    counter, f = compiled_sum()
    assert _compilations(counter, [lambda k=k: f(x, k, 0.1).backward() for k in range(1, 11)]) <= 2
    counter, f = compiled_sum()
    assert _compilations(counter, [lambda i=i: f(x, 4, 0.01 * i).backward() for i in range(1, 11)]) <= 2
    # k and lam as tensors: one compilation for every value
    counter, f = compiled_sum()
    calls = [lambda i=i: f(x, torch.tensor(i), torch.tensor(0.02 * i, dtype=torch.float64)).backward() for i in range(1, 11)]
    assert _compilations(counter, calls) == 1


@pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p43"])
def test_compiled_dykstra_equals_pav_where_converged(p):
    """At the pruning scale (weights ~ N(0, 0.05^2), lam = 1e-4) ten iterations are exact (the
    README's accuracy table): the compiled Dykstra path equals the PAV path, outputs and
    gradients, in float64."""
    x = (0.05 * torch.randn(32, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).requires_grad_()
    cot = torch.randn(32, 400, dtype=torch.float64)
    for op in (sp.soft_topk_mag, sp.soft_topk_mask):
        compiled = torch.compile(lambda x, k, lam: op(x, k, lam=lam, p=p, algorithm="dykstra", num_iter=10), fullgraph=True)
        y = compiled(x, torch.tensor(28), torch.tensor(1e-4, dtype=torch.float64))
        (g,) = torch.autograd.grad(y, x, cot)
        y_pav = op(x, 28, lam=1e-4, p=p)
        (g_pav,) = torch.autograd.grad(y_pav, x, cot)
        assert (y - y_pav).abs().max() < 1e-9
        assert (g - g_pav).abs().max() < 1e-9 * g_pav.abs().max()


def test_compiled_dykstra_is_one_loop_whatever_the_iteration_count(fresh_dynamo):
    """Dynamo captures the iterations as one while_loop: the graph is the same for 10 and 300."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    sizes = {}
    for num_iter in (10, 300):
        fresh_dynamo()
        backend = EagerAndRecordGraphs()
        f = torch.compile(lambda x: sp.soft_topk_mag(x, 5, lam=0.1, p=2, algorithm="dykstra", num_iter=num_iter),
                          fullgraph=True, backend=backend)
        f(torch.randn(4, 30))
        (graph,) = backend.graphs
        targets = [node.target for node in graph.graph.nodes]
        assert torch.ops.higher_order.while_loop in targets
        sizes[num_iter] = len(targets)
    assert sizes[10] == sizes[300]


def test_loss_and_hard_ops_compile():
    counter = CompileCounterWithBackend("inductor")
    loss_fn = torch.compile(lambda z, t, k: sp.soft_topk_loss(z, t, k, lam=0.5), fullgraph=True, backend=counter)
    logits = torch.randn(8, 20, requires_grad=True)
    target = torch.randint(0, 20, (8,))

    def step(k):
        loss = loss_fn(logits, target, k)
        assert torch.allclose(loss, sp.soft_topk_loss(logits, target, k, lam=0.5))
        loss.backward()

    assert _compilations(counter, [lambda k=k: step(k) for k in range(1, 11)]) <= 2
    hard = torch.compile(lambda x: sp.hard_topk_mag(x, 3) + sp.hard_topk_mask(x, torch.tensor(2)), fullgraph=True)
    x = torch.randn(5, 9)
    assert torch.equal(hard(x), sp.hard_topk_mag(x, 3) + sp.hard_topk_mask(x, torch.tensor(2)))
