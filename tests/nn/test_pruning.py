"""prune_, the parametrizations (every scope and method), harden_, sparsity_report, targets."""

import pytest
import torch

import smoothprune as sp
from smoothprune.nn import HardTopKMag, SoftTopKMag, StraightThroughTopKMag
from smoothprune.nn.pruned import latent, specs_of
from smoothprune.pruning import pruned_tensors, refresh_global_


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 32),
        torch.nn.LayerNorm(32),
        torch.nn.Linear(32, 10),
    )


def _kept(t):
    return int((t != 0).sum())


SCOPES = ["layer", "row", "nm", "1:4", "global"]


@pytest.mark.parametrize("method", ["smooth", "hard", "ste"])
@pytest.mark.parametrize("scope", SCOPES)
def test_every_scope_and_method_hardens_to_the_exact_pattern(scope, method):
    model = _model()
    sparsity = {"nm": None, "1:4": 0.75}.get(scope, 0.8)
    names = sp.prune_(model, sparsity, lam=1e-3, scope=scope, method=method)
    assert names == ["0.weight", "3.weight", "5.weight"]  # never biases or norms
    x = torch.randn(4, 4, 8, 8)
    model(x).square().sum().backward()
    originals = {q: latent(m, n) for q, _, m, n in pruned_tensors(model)}
    before = {q: o.detach().clone() for q, o in originals.items()}
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in originals.values())
    sp.harden_(model)
    assert not pruned_tensors(model)
    weights = {"0.weight": model[0].weight, "3.weight": model[3].weight, "5.weight": model[5].weight}
    for q, w in weights.items():
        assert w is originals[q]  # the same Parameter object: optimizers stay valid
        assert torch.equal(w[w != 0], before[q][w != 0])  # kept entries are W' exactly
    if scope == "layer":
        for w in weights.values():
            assert _kept(w) == round(0.2 * w.numel())
    elif scope == "row":
        for w in weights.values():
            rows = w.reshape(w.shape[0], -1)
            assert all(_kept(r) == round(0.2 * rows.shape[1]) for r in rows)
    elif scope in ("nm", "1:4"):
        n = 2 if scope == "nm" else 1
        for w in weights.values():
            groups = w.reshape(-1, 4)
            assert torch.all((groups != 0).sum(1) == n)
    else:  # global: exactly the global magnitude top-k
        flat = torch.cat([before[q].abs().reshape(-1) for q in weights])
        keep = round(0.2 * flat.numel())
        threshold = flat.topk(keep).values[-1]
        assert sum(_kept(w) for w in weights.values()) == keep
        for q, w in weights.items():
            assert torch.equal(w != 0, before[q].abs() >= threshold)


def test_smooth_parametrization_is_soft_topk_mag_of_each_group():
    model = _model()
    sp.prune_(model, 0.5, lam=0.05, p=4 / 3, scope="row")
    layer = model[3]
    w_prime = layer._parameters["weight"]
    assert torch.equal(layer.weight, sp.soft_topk_mag(w_prime, w_prime.shape[1] // 2, lam=0.05, p=4 / 3, dim=1))


@pytest.mark.parametrize("scope", ["layer", "row", "2:4"])
def test_parametrization_fast_path_matches_the_public_operator(scope):
    """The parametrizations call the native op without the wrapper's checks: same values, same
    gradients as `soft_topk_mag` on each group."""
    torch.manual_seed(3)
    model = _model()
    sp.prune_(model, 0.5, lam=0.02, p=2.0, scope=scope)
    layer = model[3]
    original = layer._parameters["weight"]
    group = {"layer": original.numel(), "row": original.shape[1], "2:4": 4}[scope]
    g = torch.randn_like(original)
    (fast,) = torch.autograd.grad(layer.weight, original, g)
    x = original.detach().clone().requires_grad_()
    y = sp.soft_topk_mag(x.reshape(-1, group), group // 2, lam=0.02, p=2.0).reshape(x.shape)
    (public,) = torch.autograd.grad(y, x, g)
    assert torch.equal(layer.weight, y)
    assert torch.equal(fast, public)


def test_ste_forward_is_hard_and_gradient_is_smooth():
    torch.manual_seed(1)
    w = torch.randn(6, 10)
    g = torch.randn(6, 10)
    grads = {}
    for cls in (SoftTopKMag, HardTopKMag, StraightThroughTopKMag):
        param = cls(w.shape, w.numel(), 0.7, 0.3, 2.0, "layer")
        x = w.clone().requires_grad_()
        y = param(x)
        (grads[cls],) = torch.autograd.grad(y, x, g)
        if cls is not SoftTopKMag:
            assert torch.equal(y, sp.hard_topk_mag(w.reshape(1, -1), 18).reshape(w.shape))
    assert torch.equal(grads[StraightThroughTopKMag], grads[SoftTopKMag])
    assert not torch.equal(grads[HardTopKMag], grads[SoftTopKMag])
    assert torch.equal(grads[HardTopKMag], g * (sp.hard_topk_mag(w.reshape(1, -1), 18).reshape(w.shape) != 0))


def test_updates_are_in_place_and_change_the_output():
    model = _model()
    sp.prune_(model, 0.5, lam=1e-3)
    param = specs_of(model[3])["weight"]
    buffers = {name: b for name, b in param.named_buffers()}
    sp.set_sparsity_(model, 0.9)
    sp.set_lam_(model, 0.02)
    assert all(b is buffers[name] for name, b in param.named_buffers())  # same tensors, new values
    assert int(param.k) == round(0.1 * model[3].weight.numel()) and float(param.lam) == 0.02
    assert sp.sparsity_report(model).hard_total == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="set_sparsity_: expected sparsity to be a float in \\[0, 1\\], got sparsity=1.5"):
        sp.set_sparsity_(model, 1.5)
    with pytest.raises(ValueError, match="set_lam_: expected lam to be a finite float > 0, got lam=0"):
        sp.set_lam_(model, 0)


def test_global_allocation_follows_the_weights():
    model = _model()
    sp.prune_(model, 0.9, scope="global")
    ks = [int(p.k) for _, p, _, _ in pruned_tensors(model)]
    with torch.no_grad():
        model[5]._parameters["weight"].mul_(100.0)  # the last layer now dominates
    refresh_global_(model)
    ks_after = [int(p.k) for _, p, _, _ in pruned_tensors(model)]
    assert sum(ks) == sum(ks_after)
    assert ks_after[2] == model[5].weight.numel() or ks_after[2] > ks[2]


def test_targets_pairs_names_regex_and_exclude():
    model = _model()
    assert sp.prune_(model, 0.5, targets=[(model[3], "weight"), "5.weight"]) == ["3.weight", "5.weight"]
    model = _model()
    assert sp.prune_(model, 0.5, targets=["re:.*weight"], exclude=["re:4\\..*", "0.weight"]) == ["3.weight", "5.weight"]
    model = _model()
    assert sp.prune_(model, 0.5, exclude="re:5\\..*") == ["0.weight", "3.weight"]
    model = _model()
    assert sp.prune_(model, 0.5, targets="3.bias") == ["3.bias"]


BAD = [
    (dict(sparsity=1.2), "prune_: expected sparsity to be a float in [0, 1], got sparsity=1.2"),
    (dict(sparsity=None), "prune_: expected sparsity to be a float in [0, 1], got sparsity=None"),
    (dict(lam=-1.0), "prune_: expected lam to be a finite float > 0, got lam=-1.0"),
    (dict(p=1.0), "prune_: expected p to be a finite float > 1, got p=1.0"),
    (dict(method="magic"), "prune_: expected method in ('smooth', 'hard', 'ste'), got method='magic'"),
    (dict(scope="block"), "prune_: expected scope in ('layer', 'global', 'row', 'nm'), an 'N:M' string with 0 < N <= M or a 'block:RxC' string"),
    (dict(scope="5:4"), "an 'N:M' string with 0 < N <= M or a 'block:RxC' string with R, C > 0, got scope='5:4'"),
    (dict(scope="2:4", sparsity=0.9), "prune_: expected sparsity 0.5 (or None) for scope '2:4', got sparsity=0.9"),
    (dict(scope="2:7", sparsity=None), "prune_: expected rows whose size is a multiple of M=7 for scope '2:7', got '0.weight'"),
    (dict(targets=["nope.weight"]), "prune_: expected a tensor name of the model in targets, got 'nope.weight'"),
    (dict(targets=["re:zzz.*"]), "prune_: expected the pattern 're:zzz.*' to match a tensor of the model"),
    (dict(targets=[(torch.nn.Linear(2, 2), "weight")]), "prune_: expected targets to name tensors of this model"),
    (dict(targets=[3]), "prune_: expected targets to be None, a tensor name, a 're:<regex>' pattern, a (module, name) pair or a list of those, got targets=[3]"),
    (dict(exclude="re:.*"), "prune_: expected at least one tensor to prune, the targets matched none"),
    (dict(algorithm="newton"), "prune_: expected algorithm in ('auto', 'pav', 'dykstra'), got algorithm='newton'"),
    (dict(algorithm="pav", num_iter=5), "prune_: num_iter applies to algorithm='dykstra' (or 'auto' on XLA) only"),
    (dict(num_iter=0), "prune_: expected num_iter to be an int >= 1, got num_iter=0"),
    (dict(algorithm="dykstra", p=1.5), "prune_: algorithm='dykstra' supports p=2 and p=4/3 only, got p=1.5"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments(kwargs, message):
    kwargs = {"sparsity": 0.5} | kwargs
    sparsity = kwargs.pop("sparsity")
    with pytest.raises(ValueError) as info:
        sp.prune_(_model(), sparsity, **kwargs)
    assert message in str(info.value)


def test_pruning_twice_is_an_error():
    model = _model()
    sp.prune_(model, 0.5)
    with pytest.raises(ValueError, match="'0.weight' is already pruned"):
        sp.prune_(model, 0.5)


def test_report_before_and_after_hardening():
    model = _model()
    dense = sp.sparsity_report(model)
    assert dense.total == 0 and [t.name for t in dense.tensors] == ["0.weight", "3.weight", "5.weight"]
    sp.prune_(model, 0.75, lam=0.5, p=4 / 3)
    report = sp.sparsity_report(model)
    assert report.hard_total == pytest.approx(0.75, abs=1e-3)
    assert report.total <= report.hard_total  # the smooth weights have at least k nonzeros
    assert "total" in str(report) and "smooth" in str(report)
    sp.harden_(model)
    assert sp.sparsity_report(model).total == pytest.approx(0.75, abs=1e-3)


@pytest.mark.slow  # compiles
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("method", ["smooth", "ste"])
def test_compiled_parametrized_model_matches_eager_without_recompiling(method):
    from torch._dynamo.testing import CompileCounterWithBackend

    model = _model()
    sp.prune_(model, 0.5, lam=1e-2, method=method)
    x = torch.randn(4, 4, 8, 8)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)

    def grads(m):
        model.zero_grad()
        out = m(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_eager, g_eager = grads(model)
    out_c, g_c = grads(compiled)
    assert torch.allclose(out_c, out_eager, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_c, g_eager))
    frames = counter.frame_count
    for s, lam in [(0.6, 0.02), (0.7, 0.005), (0.8, 0.001)]:
        sp.set_sparsity_(model, s)
        sp.set_lam_(model, lam)
        out_eager, _ = grads(model)
        out_c, _ = grads(compiled)
        assert torch.allclose(out_c, out_eager, atol=1e-5)
    assert counter.frame_count == frames  # new sparsity and lam: no recompilation
    # hard fine-tuning: one more graph (the hard forward), matching eager; then new k compile nothing
    sp.set_hard_training_(model, True)
    out_eager, g_eager = grads(model)
    out_c, g_c = grads(compiled)
    assert torch.allclose(out_c, out_eager, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_c, g_eager))
    frames = counter.frame_count
    sp.set_sparsity_(model, 0.9)
    out_eager, _ = grads(model)
    out_c, _ = grads(compiled)
    assert torch.allclose(out_c, out_eager, atol=1e-5)
    assert counter.frame_count == frames


def test_any_in_place_change_of_k_or_lam_reaches_the_operator():
    # eager forward reads k and lam from host-side copies refreshed on every buffer change
    torch.manual_seed(0)
    param = SoftTopKMag((4, 50), group_size=50, sparsity=0.5, lam=1e-2, p=2.0, scope="row")
    w = torch.randn(4, 50)
    assert int((param(w) != 0).sum(dim=1).max()) <= 25 + 1
    param.k.fill_(10)  # a raw in-place write, not through set_sparsity
    assert torch.equal(param(w), sp.soft_topk_mag(w, 10, lam=1e-2, p=2.0))
    state = {name: buf.clone() for name, buf in param.state_dict().items()}
    state["k"].fill_(40)
    state["lam"].fill_(0.5)
    param.load_state_dict(state)
    assert torch.equal(param(w), sp.soft_topk_mag(w, 40, lam=0.5, p=2.0))
    param.lam.copy_(torch.tensor(1e-3, dtype=torch.float64))
    assert torch.equal(param(w), sp.soft_topk_mag(w, 40, lam=1e-3, p=2.0))


@pytest.mark.parametrize("p", [4 / 3, 3.0])
def test_relative_lam_makes_pruning_scale_equivariant(p):
    """soft_topk_mag(c W, c^(2-p) lam) = c soft_topk_mag(W, lam): a relative lam (multiplied by
    rms(W')^(2-p)) prunes a tensor scaled by c exactly as the unscaled one, scaled by c."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(40, 30).double() for _ in range(3)]
    w = layers[0].weight.detach().clone()
    for c, layer in zip([1.0, 1e-3, 50.0], layers):
        with torch.no_grad():
            layer.weight.copy_(c * w)
        sp.prune_(layer, 0.8, lam=0.5, p=p, relative_lam=True)
    reference = layers[0].weight
    for c, layer in zip([1e-3, 50.0], layers[1:]):
        torch.testing.assert_close(layer.weight, c * reference, rtol=1e-10, atol=0)
    assert int((reference != 0).sum()) > round(0.2 * reference.numel())  # smooth: a window around the k-th
    # the absolute lam is not: the same lam on the scaled tensor gives another pattern
    absolute = torch.nn.Linear(40, 30).double()
    with torch.no_grad():
        absolute.weight.copy_(1e-3 * w)
    sp.prune_(absolute, 0.8, lam=0.5, p=p)
    assert not torch.allclose(absolute.weight, 1e-3 * reference, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="prune_: expected relative_lam to be a bool, got relative_lam='yes'"):
        sp.prune_(torch.nn.Linear(4, 4), 0.5, relative_lam="yes")


def test_hard_training_reads_the_hardened_weight_and_trains_the_kept_entries():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    sp.prune_(layer, 0.75, lam=0.5, p=4 / 3, relative_lam=True)
    latent = layer._parameters["weight"]
    hard = sp.pruning.hardened_weight(pruned_tensors(layer)[0][1], latent)
    assert not torch.equal(layer.weight, hard)  # smooth while training
    sp.set_hard_training_(layer, True)
    assert torch.equal(layer.weight, hard)
    layer(torch.randn(4, 16)).square().sum().backward()
    assert torch.all(latent.grad[hard == 0] == 0) and torch.all(latent.grad[hard != 0] != 0)
    sp.set_hard_training_(layer, False)
    assert not torch.equal(layer.weight, hard)
    with pytest.raises(ValueError, match="set_hard_training_: expected hard to be a bool, got hard=1"):
        sp.set_hard_training_(layer, 1)
