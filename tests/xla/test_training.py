"""Training loops on torch_xla's CPU device: a smoothly pruned MLP and a model with the smooth
expert-choice router. Each step is one graph: it compiles in the first steps, then never again
(the torch_xla CompileTime samples stop growing), with no CPU fallback, also when the sparsity
(k) and lam change through the pruning buffers."""

import pytest
import torch
import torch_xla

import smoothprune as sp
from smoothprune.nn import SparseMoE

STEPS = 5


def _train(model, batches, device, xla, on_step=None):
    """Plain SGD steps, one torch_xla.sync() (= one graph) per step; returns the number of
    compilations seen after each step and the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # built after prune_
    compilations, losses = [], []
    for step, (x, y) in enumerate(batches):
        if on_step is not None:
            on_step(step)
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch_xla.sync()
        compilations.append(xla.compilations())
        losses.append(loss)
    return compilations, [float(loss.detach().cpu()) for loss in losses]


def _batches(dim, classes, seed=0, tokens=None):
    g = torch.Generator().manual_seed(seed)
    shape = (16, dim) if tokens is None else (16, tokens, dim)
    return [(torch.randn(shape, generator=g), torch.randint(0, classes, (16,), generator=g)) for _ in range(STEPS)]


def _assert_steady(compilations):
    """Compilations happen in steps 0 and 1 only (step 1 sees the optimizer's momentum buffers
    for the first time), at most one in step 1, and none after. (torch_xla caches compiled
    graphs per process, so every test builds models of sizes no other test uses.)"""
    assert compilations[0] >= 1
    assert compilations[1] - compilations[0] <= 1, compilations
    assert len(set(compilations[1:])) == 1, compilations


@pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p43"])
@pytest.mark.parametrize("change", [False, True], ids=["fixed", "k_and_lam_change"])
def test_pruned_mlp_trains_with_one_graph_per_step(xla, device, p, change):
    torch.manual_seed(0)
    hidden = 40 + 4 * change + 2 * (p == 2.0)  # a size of its own: a graph no other test compiled
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)).to(device)
    pruned = sp.prune_(model, 0.8, lam=1e-2, p=p)  # algorithm "auto": Dykstra on XLA
    assert pruned == ["0.weight", "2.weight"]

    def schedule(step):  # what the SmoothPruning callback does between steps
        if change and step >= 2:
            sp.set_sparsity_(model, 0.8 + 0.05 * (step - 1))
            sp.set_lam_(model, 1e-2 / step)

    compilations, losses = _train(model, _batches(64, 4), device, xla, schedule)
    _assert_steady(compilations)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert xla.fallbacks() == []
    # the buffers hold the last values, and hardening gives the exact sparsity on the device
    expected = 0.8 + 0.05 * (STEPS - 2) if change else 0.8
    sp.harden_(model)
    torch_xla.sync()
    weight = model[0].weight.detach().cpu()
    assert int((weight != 0).sum()) == round((1 - expected) * weight.numel())


def test_pruned_mlp_on_xla_matches_the_same_training_on_cpu(xla, device):
    """Five steps on XLA (Dykstra, 100 iterations: converged at this lam) against the same steps
    on CPU with the exact PAV: same losses and weights to float32 accuracy."""
    results = {}
    for dev, algorithm in ((device, "auto"), (torch.device("cpu"), "pav")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3)).to(dev)
        sp.prune_(model, 0.7, lam=1e-3, p=2, algorithm=algorithm, num_iter=100 if algorithm == "auto" else None)
        _, losses = _train(model, _batches(32, 3, seed=1), dev, xla)
        results[dev.type] = (losses, model[0].weight.detach().cpu())
    (loss_xla, w_xla), (loss_cpu, w_cpu) = results["xla"], results["cpu"]
    assert loss_xla == pytest.approx(loss_cpu, rel=1e-4)
    assert torch.allclose(w_xla, w_cpu, atol=1e-5)


@pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p43"])
def test_smooth_expert_choice_router_trains_with_one_graph_per_step(xla, device, p):
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = SparseMoE(16, 32 + 2 * (p == 2.0), num_experts=4, topk="dykstra", lam=1e-2, p=p, num_iter=10)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.head((x + self.moe(x)).mean(1))

    model = Tiny().to(device)
    compilations, losses = _train(model, _batches(16, 3, tokens=12), device, xla)
    _assert_steady(compilations)
    assert all(torch.isfinite(torch.tensor(losses)))
    # the router's gate learns through the smooth mask on XLA too
    assert model.moe.router.gate.weight.grad is not None
    assert float(model.moe.router.gate.weight.grad.abs().sum().cpu()) > 0
    assert xla.fallbacks() == []
