"""CUDA kernels: CPU/CUDA agreement, edge cases, streams, opcheck, compile, pruning on CUDA.

The oracle tests (test_oracle_agreement.py) and gradcheck (test_gradients.py) also run on CUDA,
with the same tolerances, through their `device` parameter. Every CUDA test is marked `cuda` and
skipped on machines without a GPU (CI); they run on a lent GPU through the `device` tool. The
build-side check (the kernels compile) is in CI itself.
"""

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smoothprune as sp
from smoothprune.bench import capture_cuda_graph
from tests.fuzzing import FUZZ, check_against_oracle, problems
from tests.helpers import MODES

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def test_extension_was_built_with_cuda():
    assert "cuda" in sp._native.build_info()


EQUAL_CPU_CASES = [  # (rows, n, k, lam, scale): short rows, pruning-scale long rows, whole-row blocks
    (512, 100, 3, 1e-3, 0.05),
    (32, 400, 28, 1e-2, 0.05),
    (3, 3000, 300, 1e-3, 1.0),
    (1, 25_088, 2_509, 1e-3, 0.05),
    (4, 64, 10, 100.0, 1.0),
    (2, 5_000, 500, 100.0, 1.0),  # long rows (one CUDA block each), whole-row block
    (1, 300_000, 30_000, 0.1, 0.05),  # a block of ~100k entries
]


@functools.cache
def _equal_cpu_inputs():
    """(x, cotangent) in float64 per case, drawn in the cases' order from one generator."""
    rng = np.random.default_rng(11)
    return [(rng.normal(size=(rows, n)) * scale, rng.normal(size=(rows, n)))
            for rows, n, _, _, scale in EQUAL_CPU_CASES]


@pytest.mark.parametrize("case", range(len(EQUAL_CPU_CASES)),
                         ids=[f"{rows}x{n}-k{k}-lam{lam:g}" for rows, n, k, lam, _ in EQUAL_CPU_CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [2.0, 4 / 3, 3.0])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_outputs_and_gradients_equal_cpu(mode, p, dtype, case):
    _, op, _ = mode
    rows, n, k, lam, _ = EQUAL_CPU_CASES[case]
    x_np, g_np = _equal_cpu_inputs()[case]
    x = torch.from_numpy(x_np).to(dtype)
    g = torch.from_numpy(g_np).to(dtype)
    outs = {}
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        y = op(xd, k, lam=lam, p=p)
        (gx,) = torch.autograd.grad(y, xd, g.to(device))
        outs[device] = (y.detach().cpu().double(), gx.cpu().double())
    tol_y = 1e-12 if dtype == torch.float64 else 2e-6
    assert torch.allclose(outs["cuda"][0], outs["cpu"][0], rtol=tol_y, atol=tol_y)
    # The gradient carries a 1/lam factor on the pooled block: compare relative to its scale.
    # float64: the oracle tolerance (1e-9); the two devices sum blocks of up to ~1e5 terms in
    # different orders, and for p > 2 the slopes |s_i - gamma|^(q-2) amplify that rounding.
    scale_g = outs["cpu"][1].abs().max().clamp_min(1.0)
    err = (outs["cuda"][1] - outs["cpu"][1]).abs().max() / scale_g
    assert err < (1e-9 if dtype == torch.float64 else 1e-4), float(err)


@functools.cache
def _edge_inputs():
    rng = np.random.default_rng(5)
    ties = np.round(rng.normal(size=(4, 50)) * 3) / 3
    zeros = np.concatenate([np.zeros((4, 25)), rng.normal(size=(4, 25))], axis=1)
    return {"ties": ties, "zeros": zeros, "one_column": rng.normal(size=(4, 1))}


@pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p4/3"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
@pytest.mark.parametrize("k", [0, 1, "n"])
@pytest.mark.parametrize("inputs", ["ties", "zeros", "one_column"])
def test_edge_cases_match_cpu(inputs, k, mode, p):
    _, op, _ = mode
    x_np = _edge_inputs()[inputs]
    kk = x_np.shape[-1] if k == "n" else min(k, x_np.shape[-1])
    x = torch.from_numpy(x_np)
    want = op(x, kk, lam=0.3, p=p)
    got = op(x.to(CUDA), kk, lam=0.3, p=p).cpu()
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def _check_extreme_row(x, k, lam, p, magnitude, y):
    assert np.isfinite(y).all(), (x.tolist(), k, lam, p, y.tolist())
    if not magnitude:
        assert ((y >= 0) & (y <= 1)).all()
        assert math.isclose(y.sum(), k, abs_tol=1e-9 * max(k, 1)), (k, lam, p, y.sum())
    check_against_oracle(y, x, k, lam, p, magnitude=magnitude)


@FUZZ
@given(problems(), st.booleans())
def test_short_rows_at_any_p_and_extreme_values_match_the_oracle(problem, magnitude):
    """The fuzz of tests/ops/test_fuzz.py on the one-thread-per-row kernel."""
    x, k, p, lam = problem
    op = sp.soft_topk_mag if magnitude else sp.soft_topk_mask
    y = op(torch.tensor(x, device=CUDA), k, lam=lam, p=p).cpu().numpy()
    _check_extreme_row(x, k, lam, p, magnitude, y)


@FUZZ
@given(problems(), st.booleans(), st.integers(0, 2**16))
def test_long_rows_at_any_p_and_extreme_values_match_the_oracle(problem, magnitude, seed):
    """The same problems inside rows of 2,100+ entries (one CUDA block per row): the fuzz row
    plus filler entries that are pruned whatever the solution (below every key by more than lam
    for the mask, zeros for the magnitude), scattered at random. The filler changes neither the
    threshold nor the fuzz row's outputs, so the short row's oracle holds for the long row."""
    x, k, p, lam = problem
    fill = 2100 if seed % 2 else 4096  # long rows sorted by torch's sort, and by cub's radix sort
    if magnitude:
        filler = 0.0
    else:
        filler = max(float(np.min(x)) - 4.0 * lam - abs(float(np.min(x))), -1.79e308)
    long = np.concatenate([x, np.full(fill, filler)])
    order = np.random.default_rng(seed).permutation(len(long))
    op = sp.soft_topk_mag if magnitude else sp.soft_topk_mask
    y_long = op(torch.tensor(long[order], device=CUDA), k, lam=lam, p=p).cpu().numpy()
    y = np.empty_like(y_long)
    y[order] = y_long
    assert (y[len(x):] == 0).all()
    _check_extreme_row(x, k, lam, p, magnitude, y[: len(x)])


def test_rows_with_nan_or_inf_give_nan_like_cpu():
    x = torch.randn(4, 10, dtype=torch.float64)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3, 9] = -float("inf")
    for _, op, _ in MODES:
        xc = x.to(CUDA).requires_grad_()
        y = op(xc, 3, lam=0.1, p=2.0)
        (g,) = torch.autograd.grad(y.sum(), xc)
        assert torch.isnan(y[1:]).all() and torch.isfinite(y[0]).all()
        assert torch.isnan(g[1:]).all() and torch.isfinite(g[0]).all()


def test_empty_and_strided_inputs():
    x = torch.randn(0, 7, device=CUDA)
    assert sp.soft_topk_mask(x, 2, lam=0.1).shape == (0, 7)
    base = torch.randn(6, 40, dtype=torch.float64)
    got = sp.soft_topk_mag(base.to(CUDA).t(), 3, lam=0.05, p=4 / 3, dim=0).cpu()  # non-contiguous
    assert torch.allclose(got, sp.soft_topk_mag(base.t(), 3, lam=0.05, p=4 / 3, dim=0), rtol=1e-12, atol=1e-12)


def test_runs_on_the_current_stream_and_device():
    x = torch.randn(64, 300, device=CUDA, requires_grad=True)
    want = sp.soft_topk_mag(x, 30, lam=1e-2, p=2.0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs = x.detach().clone().requires_grad_()  # produced on `stream`
        y = sp.soft_topk_mag(xs, 30, lam=1e-2, p=2.0)
        (g,) = torch.autograd.grad(y.sum(), xs)
    stream.synchronize()
    assert torch.equal(y, want) and torch.isfinite(g).all()
    if torch.cuda.device_count() > 1:
        x1 = x.detach().to("cuda:1")
        assert torch.equal(sp.soft_topk_mag(x1, 30, lam=1e-2, p=2.0).cpu(), want.cpu())


def test_opcheck_cuda():
    torch.manual_seed(0)
    for (p, magnitude, debias), dtype in itertools.product(
        [(2.0, False, False), (4 / 3, True, True), (3.0, True, False)], [torch.float32, torch.float64]
    ):
        x = torch.randn(3, 20, dtype=dtype, device=CUDA, requires_grad=True)
        args = (x, torch.tensor(5), torch.tensor(0.05, dtype=torch.float64), p, magnitude, debias)
        torch.library.opcheck(torch.ops.smoothprune.soft_topk_forward.default, args)
        _, perm, blocks, gamma = torch.ops.smoothprune.soft_topk_forward(*args)
        torch.library.opcheck(
            torch.ops.smoothprune.soft_topk_backward.default,
            (torch.randn_like(x), x.detach(), perm, blocks, gamma, *args[1:]),
        )


@pytest.mark.usefixtures("fresh_dynamo")
def test_compile_fullgraph_on_cuda():
    fn = lambda t: sp.soft_topk_mag(t, 5, lam=0.2, p=4 / 3)  # noqa: E731
    x = torch.randn(6, 40, device=CUDA, requires_grad=True)
    y_eager = fn(x)
    (g_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    y = torch.compile(fn, fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.allclose(y, y_eager, atol=1e-6) and torch.allclose(g, g_eager, atol=1e-5)


def test_pruning_on_cuda_hardens_to_the_magnitude_top_k():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).to(CUDA)
    sp.prune_(model, 0.9, lam=1e-2, p=2.0)
    out = model(torch.randn(8, 64, device=CUDA))
    out.square().sum().backward()
    sp.harden_(model)
    for layer in (model[0], model[2]):
        w = layer.weight.detach()
        assert w.is_cuda and int((w != 0).sum()) == round(0.1 * w.numel())


# ---- k and lam on the device: no host synchronisation, CUDA graphs, torch.compile --------------
@pytest.mark.parametrize("k_dtype, lam_dtype", [(torch.int64, torch.float64), (torch.int32, torch.float32)])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_k_and_lam_on_the_device_give_the_host_result_without_a_sync(mode, k_dtype, lam_dtype):
    _, op, _ = mode
    for n, k in ((300, 30), (5000, 500)):  # a short row (thread per row) and a long one (block per row)
        x = 0.05 * torch.randn(4, n, device=CUDA, requires_grad=True)
        lam = 1e-3 if lam_dtype == torch.float64 else 2.0**-10  # exact in float32
        want = op(x, k, lam=lam, p=4 / 3)
        (want_grad,) = torch.autograd.grad(want.square().sum(), x)
        k_dev = torch.tensor(k, dtype=k_dtype, device=CUDA)
        lam_dev = torch.tensor(lam, dtype=lam_dtype, device=CUDA)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call below raises
        try:
            got = op(x, k_dev, lam=lam_dev, p=4 / 3)
            (grad,) = torch.autograd.grad(got.square().sum(), x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(got, want) and torch.equal(grad, want_grad)


@pytest.mark.parametrize("k, lam", [(301, 0.1), (-1, 0.1), (30, 0.0), (30, -1.0), (30, float("nan"))])
def test_invalid_k_or_lam_on_the_device_give_nan(k, lam):
    # A kernel cannot raise: device values it finds invalid make every row NaN, outputs and
    # gradients, as a row holding a NaN does. The same values on the host raise ValueError
    # (test_hand_cases.py; not repeated here: on the lent GPU machine's torch 2.11 image an
    # exception thrown by our C++ checks aborts the process, which our pinned torch does not do).
    x = torch.randn(3, 300, device=CUDA, requires_grad=True)
    k_dev = torch.tensor(k, device=CUDA)
    lam_dev = torch.tensor(lam, dtype=torch.float64, device=CUDA)
    y = sp.soft_topk_mag(x, k_dev, lam=lam_dev, p=2.0)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.isnan().all() and g.isnan().all()


def _pruned_mlp(sparsity=0.5, p=4 / 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10)).to(CUDA)
    sp.prune_(model, sparsity, lam=1e-2, p=p)
    return model


def test_eager_pruned_step_never_synchronises():
    model = _pruned_mlp()
    x = torch.randn(16, 64, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sparsity in (0.5, 0.8):
            sp.set_sparsity_(model, sparsity)
            model(x).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_replays_follow_set_sparsity_and_set_lam():
    model = _pruned_mlp()
    params = list(model.parameters())
    static_x = torch.randn(16, 64, device=CUDA)

    def forward_backward():
        loss = model(static_x).square().sum()
        loss.backward()
        return loss

    graph, static_loss = capture_cuda_graph(forward_backward, params)
    static_grads = [param.grad for param in params]  # allocated in the graph's pool, rewritten by replays

    losses = []
    for sparsity, lam in ((0.5, 1e-2), (0.9, 1e-2), (0.9, 0.5)):
        sp.set_sparsity_(model, sparsity)
        sp.set_lam_(model, lam)
        graph.replay()
        want = model(static_x).square().sum()  # eager, with the same buffers
        want_grads = torch.autograd.grad(want, params)
        assert torch.allclose(static_loss, want, rtol=1e-5)
        for got, expected in zip(static_grads, want_grads):
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
        losses.append(want.item())
    assert len(set(losses)) == 3  # each (sparsity, lam) changed the replayed result


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_with_cuda_graphs_follows_set_sparsity_without_recompiling():
    model = _pruned_mlp(p=2.0)
    x = torch.randn(16, 64, device=CUDA)
    compiled = torch.compile(model, mode="reduce-overhead")
    params = list(model.parameters())
    with torch._dynamo.config.patch(error_on_recompile=True), \
            torch._inductor.config.patch({"triton.cudagraph_or_error": True}):
        for sparsity in (0.5, 0.5, 0.7, 0.9, 0.9):
            sp.set_sparsity_(model, sparsity)
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(x)
            grads = torch.autograd.grad(out.square().sum(), params)
            want = model(x)
            want_grads = torch.autograd.grad(want.square().sum(), params)
            assert torch.allclose(out, want, rtol=1e-5, atol=1e-6)
            for got, expected in zip(grads, want_grads):
                assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
