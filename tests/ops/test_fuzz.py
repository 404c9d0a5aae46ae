"""Fuzz of the exact solver against the arbitrary-precision oracle (tests/oracle.py,
`mp_threshold_oracle`): random rows, k, p in [1.01, 50], lam in [1e-12, 1e12] and magnitudes from
1e-300 to 1e300, with ties. Invariants: the mask lies in [0, 1] and sums to k; every output agrees
with the oracle within the problem's own conditioning (the oracle's outputs at gamma -+ 1e-11 of
the block's natural unit, lam or lam gamma^(p-1)); nothing is NaN or infinite for finite input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import smoothprune as sp
from tests.fuzzing import FUZZ, problems
# (under their former names: hypothesis derives each test's examples from its source, kept as it was)
from tests.fuzzing import check_against_oracle as _check_against_oracle
from tests.fuzzing import oracle_lam as _oracle_lam
from tests.oracle import mp_threshold_oracle


@pytest.mark.slow  # the 2400-bit oracle
@FUZZ
@given(problems())
def test_mask_matches_oracle(problem):
    x, k, p, lam = problem
    y = sp.soft_topk_mask(torch.tensor(x), k, lam=lam, p=p).numpy()
    assert np.isfinite(y).all(), (x.tolist(), k, lam, p, y.tolist())
    assert ((y >= 0) & (y <= 1)).all()
    assert math.isclose(y.sum(), k, abs_tol=1e-9 * max(k, 1)), (x.tolist(), k, lam, p, y.tolist())
    _check_against_oracle(y, x, k, lam, p, magnitude=False)


@pytest.mark.slow  # the 2400-bit oracle
@FUZZ
@given(problems(), st.booleans())
# found by this fuzz: tied keys where the frame's lam is ~1e99 (the p = 4/3 cubic overflowed),
# and a kept value below the resolution of the offset (the bracket's end missed the root)
@example((np.array([-1e-149, -1e-149, -1e-149]), 1, 4 / 3, 1.0), True)
@example((np.array([-1e-150, -1e-150, -1e-151]), 1, 1.5, 1.0), False)
# a tie whose frame lam (1e-900) is below what the 2400-bit oracle resolves (see _oracle_lam)
@example((np.array([-1e-300, -1e-300]), 1, 5.0, 1.0), False)
def test_magnitude_matches_oracle(problem, debias):
    x, k, p, lam = problem
    y = sp.soft_topk_mag(torch.tensor(x), k, lam=lam, p=p, debias=debias).numpy()
    assert np.isfinite(y).all(), (x.tolist(), k, lam, p, y.tolist())
    if debias:
        # (raw outputs may underflow: for huge lam |x|^(p-2) they lie below 1e-308)
        assert np.count_nonzero(y) >= min(k, np.count_nonzero(x))
        _check_against_oracle(y, x, k, lam, p, magnitude=True)
    else:
        y_ref, _, _ = mp_threshold_oracle(x, k, _oracle_lam(x, k, lam, p, True), p, magnitude=True, debias=False)
        assert np.allclose(y, y_ref, rtol=1e-9, atol=0), (x.tolist(), k, lam, p, y.tolist(), y_ref.tolist())
        assert (np.abs(y) <= np.abs(x)).all()  # shrinks, never grows


@FUZZ
@given(problems(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_low_precision_dtypes_keep_the_invariants(problem, dtype):
    x, k, p, lam = problem
    xt = torch.tensor(x).to(dtype)
    finite = torch.isfinite(xt).all()
    y = sp.soft_topk_mask(xt, k, lam=lam, p=p).double()
    if not finite:  # the cast overflowed: a row holding Inf gives NaN
        assert torch.isnan(y).all()
        return
    assert torch.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    eps = torch.finfo(dtype).eps
    assert math.isclose(float(y.sum()), k, abs_tol=4 * eps * len(x) + 1e-9)


# (p, lam, magnitude, debias) in the order the rows of one generator (seed 0) are drawn for them
GENERAL_P_CASES = [(p, lam, magnitude, debias) for p in (1.5, 3.0, 7.0) for lam in (1e-3, 1.0, 1e3)
                   for magnitude, debias in ((False, True), (True, True), (True, False))]


@functools.cache
def _general_p_rows():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 6, generator=gen, dtype=torch.float64) for _ in GENERAL_P_CASES]


@pytest.mark.parametrize("case", range(len(GENERAL_P_CASES)),
                         ids=[f"p{p:g}-lam{lam:g}-{'mag' if m else 'mask'}{'' if d else '-raw'}"
                              for p, lam, m, d in GENERAL_P_CASES])
@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
def test_general_p_gradients_pass_gradcheck(device, case):
    """The closed-form backward in the row's frame, for p outside {2, 4/3} and lam across
    scales (random rows: away from the kinks where a key crosses the block's edge)."""
    p, lam, magnitude, debias = GENERAL_P_CASES[case]
    x = (_general_p_rows()[case] * lam).to(device).requires_grad_()
    fn = (lambda t: sp.soft_topk_mag(t, 3, lam=lam, p=p, debias=debias)) if magnitude else (
        lambda t: sp.soft_topk_mask(t, 3, lam=lam, p=p))
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-7 * lam, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# every op and algorithm on random layouts: shapes, dims, strides, dtypes
# ------------------------------------------------------------------------------------------------
@st.composite
def layouts(draw):
    """A random tensor (1-3 dims, maybe non-contiguous: transposed or strided), a dim and a k."""
    dims = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 6)) for _ in range(dims)]
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]))
    seed = draw(st.integers(0, 2**16))
    scale = 10.0 ** draw(st.integers(-3, 3))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    if draw(st.booleans()):  # repeated values: ties
        x = x.round(decimals=1)
    x = x.to(dtype)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and dims > 1:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same values, other strides
    elif layout == "strided":
        x = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]  # every other element
    dim = draw(st.integers(-dims, dims - 1))
    k = draw(st.integers(0, x.shape[dim]))
    return x, dim, k


def _row_by_row(fn, x, dim):
    """fn applied to each 1-d slice along dim of a contiguous copy: the reference layout."""
    moved = x.movedim(dim, -1).contiguous()
    rows = moved.reshape(-1, moved.shape[-1])
    out = torch.stack([fn(r) for r in rows]) if rows.shape[0] else rows.clone()
    return out.reshape(moved.shape).movedim(-1, dim)


@FUZZ
@given(layouts(), st.sampled_from([2.0, 4 / 3, 3.0]), st.sampled_from([1e-2, 0.3, 5.0]))
def test_pav_ops_are_layout_independent(layout, p, lam):
    x, dim, k = layout
    for fn in (lambda t: sp.soft_topk_mask(t, k, lam=lam, p=p, dim=-1),
               lambda t: sp.soft_topk_mag(t, k, lam=lam, p=p, dim=-1)):
        y = fn(x.movedim(dim, -1)).movedim(-1, dim)  # a non-contiguous view, batched
        reference = _row_by_row(fn, x, dim)
        assert y.shape == x.shape and y.dtype == x.dtype
        torch.testing.assert_close(y, reference, rtol=0, atol=0)
    y = sp.soft_topk_mask(x, k, lam=lam, p=p, dim=dim).double()
    assert torch.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    eps = torch.finfo(x.dtype).eps
    torch.testing.assert_close(y.sum(dim), torch.full_like(y.sum(dim), float(k)), rtol=0,
                               atol=4 * eps * x.shape[dim] + 1e-9)
    torch.testing.assert_close(sp.soft_topk_mask(x, k, lam=lam, p=p, dim=dim),
                               _row_by_row(lambda r: sp.soft_topk_mask(r, k, lam=lam, p=p), x, dim), rtol=0, atol=0)


@pytest.mark.slow  # 200 Dykstra sweeps per example
@FUZZ
@given(layouts(), st.sampled_from([2.0, 4 / 3]), st.sampled_from([0.1, 1.0]), st.booleans())
def test_dykstra_keeps_the_invariants_and_approaches_pav(layout, p, lam, magnitude):
    x, dim, k = layout
    op = sp.soft_topk_mag if magnitude else sp.soft_topk_mask
    y = op(x, k, lam=lam, p=p, dim=dim, algorithm="dykstra", num_iter=200).double()
    exact = op(x.double(), k, lam=lam, p=p, dim=dim).double()
    assert y.shape == x.shape and torch.isfinite(y).all()
    if magnitude:
        assert (y * x.double() >= 0).all()  # the sign of x is kept
    else:
        assert ((y >= 0) & (y <= 1)).all()
    # 200 sweeps on rows of <= 6 entries: converged to the low-precision rounding of the inputs
    tol = 1e-4 if x.dtype in (torch.float64, torch.float32) else 3e-2
    scale = x.double().abs().amax() if magnitude and x.numel() else 1.0
    torch.testing.assert_close(y, exact, rtol=0, atol=tol * float(max(scale, 1.0)))


@FUZZ
@given(layouts())
def test_hard_ops_keep_exactly_k_per_slice(layout):
    x, dim, k = layout
    mask = sp.hard_topk_mask(x, k, dim=dim)
    assert (mask.sum(dim) == k).all() and ((mask == 0) | (mask == 1)).all()
    # every kept entry is at least every dropped one along the slice
    kept_min = torch.where(mask.bool(), x, torch.full_like(x, float("inf"))).amin(dim)
    dropped_max = torch.where(mask.bool(), torch.full_like(x, -float("inf")), x).amax(dim)
    assert (kept_min >= dropped_max).all()
    mag = sp.hard_topk_mag(x, k, dim=dim)
    assert ((mag == 0) | (mag == x)).all() and ((mag != 0).sum(dim) <= k).all()
    assert torch.equal(sp.hard_topk_mask(x, torch.tensor(k), dim=dim).sum(dim), mask.sum(dim))


@FUZZ
@given(st.integers(1, 5), st.integers(2, 8), st.integers(0, 2**16), st.sampled_from([2.0, 4 / 3]),
       st.sampled_from([0.1, 1.0, 10.0]), st.sampled_from(["uniform", "topk", "none"]))
def test_topk_loss_is_finite_and_nonnegative_for_a_target_in_the_polytope(batch, classes, seed, p, lam, fill):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, classes, (batch,), generator=gen)
    k = int(torch.randint(1, classes + 1, (), generator=gen))
    loss = sp.soft_topk_loss(logits, target, k, lam=lam, p=p, fill=fill, reduction="none")
    assert loss.shape == (batch,) and torch.isfinite(loss).all()
    if fill != "none":  # the target lies in the polytope: a Fenchel-Young loss is >= 0
        assert (loss >= -1e-9).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.floats(1.1, 10.0), st.floats(-2.0, 2.0), st.integers(0, 2**16), st.booleans())
def test_gradcheck_over_p_and_lam(p, log_lam, seed, magnitude):
    lam = 10.0 ** log_lam
    x = (torch.randn(2, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * lam)
    x.requires_grad_()
    op = sp.soft_topk_mag if magnitude else sp.soft_topk_mask
    assert torch.autograd.gradcheck(lambda t: op(t, 2, lam=lam, p=p), (x,), eps=1e-7 * lam, atol=1e-5, rtol=1e-4)
