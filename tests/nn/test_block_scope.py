"""The block scope ("block:RxC"): the smooth top-k in magnitude over the norms of a 2-D weight's
R×C tiles, each tile scaled by its kept factor, hardening to whole zero tiles."""

import pytest
import torch

import smoothprune as sp
from smoothprune.nn.pruned import latent
from smoothprune.pruning import pruned_tensors


def _tile_norms(w, rows, cols):
    return w.reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols).square().sum((1, 3)).sqrt()


def _nonzero_tiles(w, rows, cols):
    tiles = w.reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols)
    return (tiles != 0).any(dim=3).any(dim=1)


@pytest.mark.parametrize("method", ["smooth", "hard", "ste"])
def test_hardens_to_the_largest_tiles_exactly(method):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    assert sp.prune_(model, 0.75, lam=1e-3, scope="block:8x4", method=method) == ["0.weight", "2.weight"]
    model(torch.randn(5, 48)).square().sum().backward()
    originals = {q: latent(m, n) for q, _, m, n in pruned_tensors(model)}
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in originals.values())
    before = {q: o.detach().clone() for q, o in originals.items()}
    sp.harden_(model)
    for q, w in {"0.weight": model[0].weight, "2.weight": model[2].weight}.items():
        norms = _tile_norms(before[q], 8, 4)
        keep = round(0.25 * norms.numel())
        kept = _nonzero_tiles(w, 8, 4)
        assert int(kept.sum()) == keep
        assert torch.equal(kept.reshape(-1), torch.zeros_like(kept.reshape(-1)).index_fill_(
            0, norms.reshape(-1).topk(keep).indices, True))  # the largest-norm tiles
        assert torch.equal(w[w != 0], before[q][w != 0])  # kept tiles are W' exactly
    report = sp.sparsity_report(model)
    assert report.total == pytest.approx(0.75)


def test_smooth_weight_scales_each_tile_by_its_kept_factor():
    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 16)
    sp.prune_(layer, 0.5, lam=0.05, scope="block:4x4")
    w_latent = latent(layer, "weight").detach().clone()
    w = layer.weight.detach()  # training mode: the smooth weight
    norms = _tile_norms(w_latent, 4, 4).reshape(1, -1)
    factor = (sp.soft_topk_mag(norms, 8, lam=0.05, p=2.0) / norms).reshape(4, 1, 4, 1)
    want = (w_latent.reshape(4, 4, 4, 4) * factor).reshape(16, 16)
    assert torch.allclose(w, want, atol=1e-7)
    kept = _nonzero_tiles(w, 4, 4)
    assert 8 <= int(kept.sum()) < 16  # exactly zero outside the top tiles and the pooled window
    layer.eval()
    assert int(_nonzero_tiles(layer.weight.detach(), 4, 4).sum()) == 8  # eval reads the hardened weight


@pytest.mark.parametrize("scope, match", [
    ("block:5x4", r"multiples of the block for scope 'block:5x4', got '0.weight' of shape \(32, 48\)"),
    ("block:0x4", "a 'block:RxC' string with R, C > 0, got scope='block:0x4'"),
    ("block:4", "a 'block:RxC' string"),
])
def test_bad_block_scopes_are_refused(scope, match):
    model = torch.nn.Sequential(torch.nn.Linear(48, 32))
    with pytest.raises(ValueError, match=match):
        sp.prune_(model, 0.5, scope=scope)


def test_block_scope_refuses_convolutions():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3))
    with pytest.raises(ValueError, match=r"expected 2-D tensors .* got '0.weight' of shape \(8, 4, 3, 3\)"):
        sp.prune_(model, 0.5, scope="block:4x4")


def test_block_scope_gradient_passes_gradcheck():
    """Through the tile norms, the smooth operator and the scaling (float64, away from ties)."""
    from smoothprune.nn.parametrizations import SoftTopKMag

    torch.manual_seed(3)
    spec = SoftTopKMag((8, 8), group_size=4, sparsity=0.5, lam=0.3, p=2.0, scope="block:4x4", block=(4, 4))
    spec = spec.double()
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).repeat_interleave(4, 0).repeat_interleave(4, 1)
    w = (torch.randn(8, 8, dtype=torch.float64) * scale).requires_grad_()  # distinct tile norms
    assert torch.autograd.gradcheck(spec.smooth, (w,), eps=1e-6, atol=1e-6)


def test_hardened_tiles_hold_positive_zeros():
    layer = torch.nn.Linear(16, 16)
    with torch.no_grad():
        layer.weight.copy_(-torch.rand(16, 16) - 0.1)  # all negative
    sp.prune_(layer, 0.5, scope="block:4x4")
    sp.harden_(layer)
    zeros = layer.weight[layer.weight == 0]
    assert zeros.numel() == 128 and not torch.signbit(zeros).any()
