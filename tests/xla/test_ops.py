"""The operators on torch_xla's CPU device: Dykstra chosen by "auto", equal to the CPU PAV path
within the documented accuracy, lowered entirely to XLA (no fallback, no host read), one While
loop whatever the iteration count, and no recompilation when k or lam change."""

import pytest
import torch
import torch_xla

import smoothprune as sp
from tests.helpers import ACCURACY_BOUNDS, ACCURACY_IDS, pruning_weights

OPS = {"mask": sp.soft_topk_mask, "mag": sp.soft_topk_mag}
P_VALUES = {"p2": 2.0, "p43": 4 / 3}


def _value_and_grad(op, x, k, cotangent, **kw):
    x = x.detach().requires_grad_()
    y = op(x, k, **kw)
    (g,) = torch.autograd.grad(y, x, cotangent)
    return y, g


@pytest.mark.parametrize("p", P_VALUES.values(), ids=P_VALUES.keys())
@pytest.mark.parametrize("name", OPS)
def test_auto_runs_dykstra_on_xla_and_matches_the_cpu_dykstra(xla, device, name, p):
    """Same algorithm, two backends: the XLA While loop equals the eager Python loop."""
    op = OPS[name]
    x = pruning_weights((32, 400), dtype=torch.float32)
    cot = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y_cpu, g_cpu = _value_and_grad(op, x, 28, cot, lam=1e-2, p=p, algorithm="dykstra", num_iter=10)
    y_xla, g_xla = _value_and_grad(op, x.to(device), 28, cot.to(device), lam=1e-2, p=p)  # auto
    torch_xla.sync()
    assert torch.allclose(y_xla.cpu(), y_cpu, rtol=1e-4, atol=1e-5)
    assert torch.allclose(g_xla.cpu(), g_cpu, rtol=1e-4, atol=1e-4 * g_cpu.abs().max().item())
    # and it is not the exact solver: at lam = 1e-2 ten iterations have not converged (mask)
    if name == "mask":
        exact = op(x.double(), 28, lam=1e-2, p=p)
        assert (y_xla.cpu().double() - exact).abs().max() > 1e-3
    assert xla.fallbacks() == []


@pytest.mark.parametrize("p,shape,k,lam,num_iter,mask_bound,mag_bound", ACCURACY_BOUNDS, ids=ACCURACY_IDS)
def test_accuracy_table_bounds_hold_on_xla(xla, device, p, shape, k, lam, num_iter, mask_bound, mag_bound):
    """The bounds of the README's accuracy table (asserted on CPU in tests/ops/test_dykstra.py),
    in float64 on XLA against the CPU PAV path: outputs, and gradients where converged."""
    x = pruning_weights(shape)
    cot = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for op, bound in ((sp.soft_topk_mask, mask_bound), (sp.soft_topk_mag, mag_bound)):
        y_pav, g_pav = _value_and_grad(op, x, k, cot, lam=lam, p=p, algorithm="pav")
        y_xla, g_xla = _value_and_grad(op, x.to(device), k, cot.to(device), lam=lam, p=p, num_iter=num_iter)
        torch_xla.sync()
        assert (y_xla.cpu() - y_pav).abs().max() < bound
        if bound <= 1e-9:
            assert (g_xla.cpu() - g_pav).abs().max() < 1e-6 * g_pav.abs().max()
    assert xla.fallbacks() == []


@pytest.mark.parametrize("p", P_VALUES.values(), ids=P_VALUES.keys())
@pytest.mark.parametrize("name", ["mask", "mag", "mag_raw"])
def test_float32_on_xla_matches_float64_pav_when_converged(xla, device, name, p):
    """Pruning scale (lam = 1e-3, 100 iterations, converged): float32 XLA against the float64 CPU
    PAV path on the same (float32-representable) input, within 1e-5 of the largest output and
    gradient entry (measured: <= 1e-6)."""
    op = sp.soft_topk_mask if name == "mask" else sp.soft_topk_mag
    kw = {"debias": False} if name == "mag_raw" else {}
    x = pruning_weights((32, 400), dtype=torch.float32)
    cot = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    y_pav, g_pav = _value_and_grad(op, x.double(), 28, cot.double(), lam=1e-3, p=p, algorithm="pav", **kw)
    y_xla, g_xla = _value_and_grad(op, x.to(device), 28, cot.to(device), lam=1e-3, p=p, num_iter=100, **kw)
    torch_xla.sync()
    assert (y_xla.cpu().double() - y_pav).abs().max() < 1e-5 * y_pav.abs().max()
    assert (g_xla.cpu().double() - g_pav).abs().max() < 1e-5 * g_pav.abs().max()
    assert xla.fallbacks() == []


def test_one_while_loop_whatever_the_iteration_count(xla, device):
    """The iterations are an XLA While loop: the graph is the same size for 10 and 300 iterations
    (unrolled, 300 iterations would be ~30x larger), and each count compiles once."""
    x = pruning_weights((8, 64), dtype=torch.float32).to(device)
    sizes = {}
    for num_iter in (10, 300):
        y = sp.soft_topk_mag(x, 6, lam=1e-2, p=2, num_iter=num_iter)
        hlo = torch_xla._XLAC._get_xla_tensors_hlo([y])
        assert " while(" in hlo
        sizes[num_iter] = hlo.count("\n")
        torch_xla.sync()
    assert sizes[10] == sizes[300]
    assert xla.compilations() == 2


@pytest.mark.parametrize("p", P_VALUES.values(), ids=P_VALUES.keys())
def test_new_k_and_lam_do_not_recompile(xla, device, p):
    """k and lam as 0-d device tensors (as the pruning buffers are) or as Python numbers: new
    values are data, not constants of the graph."""
    x = pruning_weights((16, 100), dtype=torch.float32).to(device).requires_grad_()
    counts = []
    for k, lam in [(10, 1e-3), (11, 1e-3), (11, 5e-3), (40, 0.2)]:
        for as_tensor in (True, False):
            kk = torch.tensor(k).to(device) if as_tensor else k
            ll = torch.tensor(lam).to(device) if as_tensor else lam
            y = sp.soft_topk_mag(x, kk, lam=ll, p=p)
            (g,) = torch.autograd.grad(y.square().sum(), x)
            torch_xla.sync()
            counts.append(xla.compilations())
    assert counts[0] >= 1 and len(set(counts[2:])) == 1 and counts[-1] <= counts[0] + 1, counts
    assert xla.fallbacks() == []


def test_batched_along_any_dim_and_low_precision(xla, device):
    x = pruning_weights((5, 30, 7), dtype=torch.float32)
    y_cpu = sp.soft_topk_mask(x, 4, lam=0.05, p=2, dim=1, algorithm="dykstra")
    y_xla = sp.soft_topk_mask(x.to(device), 4, lam=0.05, p=2, dim=1)
    assert torch.allclose(y_xla.cpu(), y_cpu, atol=1e-5)
    y_bf16 = sp.soft_topk_mag(x.to(torch.bfloat16).to(device), 4, lam=0.05, p=4 / 3, dim=1)
    assert y_bf16.dtype == torch.bfloat16 and torch.isfinite(y_bf16.cpu()).all()
    torch_xla.sync()
    assert xla.fallbacks() == []


def test_loss_and_hard_ops_lower_to_xla(xla, device):
    """The top-k loss (its soft mask runs as Dykstra on XLA; lam small against the logits' gaps,
    where 10 iterations are exact) and the hard operators."""
    logits = 3 * torch.randn(16, 10, generator=torch.Generator().manual_seed(3))
    target = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))
    logits_xla = logits.to(device).requires_grad_()
    loss = sp.soft_topk_loss(logits_xla, target.to(device), 3, lam=1e-2, p=2)
    (g,) = torch.autograd.grad(loss, logits_xla)
    hard = sp.hard_topk_mag(logits.to(device), 3)
    mask = sp.hard_topk_mask(logits.to(device), 3)
    torch_xla.sync()
    logits_cpu = logits.clone().requires_grad_()
    loss_cpu = sp.soft_topk_loss(logits_cpu, target, 3, lam=1e-2, p=2)
    (g_cpu,) = torch.autograd.grad(loss_cpu, logits_cpu)
    assert torch.allclose(loss.cpu(), loss_cpu, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g.cpu(), g_cpu, atol=1e-6)
    assert torch.equal(hard.cpu(), sp.hard_topk_mag(logits, 3))
    assert torch.equal(mask.cpu(), sp.hard_topk_mask(logits, 3))
    # a larger lam needs more iterations: the module's num_iter is used on XLA
    loss_fn = sp.SoftTopKLoss(3, lam=1.0, p=4 / 3, num_iter=3000)
    big = loss_fn(logits.to(device), target.to(device))
    torch_xla.sync()
    assert torch.allclose(big.cpu(), loss_fn(logits, target), rtol=1e-5)
    assert xla.fallbacks() == []
