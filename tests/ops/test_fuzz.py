"""Fuzz of the exact solver against the arbitrary-precision oracle (tests/oracle.py,
`mp_threshold_oracle`): random rows, k, p in [1.01, 50], lam in [1e-12, 1e12] and magnitudes from
1e-300 to 1e300, with ties. Invariants: the mask lies in [0, 1] and sums to k; every output agrees
with the oracle within the problem's own conditioning (the oracle's outputs at gamma -+ 1e-11 of
the block's natural unit, lam or lam gamma^(p-1)); nothing is NaN or infinite for finite input."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import smoothprune as sp
from tests.oracle import mp_threshold_oracle

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def problems(draw):
    n = draw(st.integers(2, 7))
    k = draw(st.integers(0, n))
    p = draw(st.one_of(st.sampled_from([2.0, 4 / 3, 1.5, 3.0]), st.floats(1.01, 50.0)))
    lam = 10.0 ** draw(st.floats(-12.0, 12.0))
    exponent = draw(st.sampled_from([-300.0, -150.0, -20.0, 0.0, 20.0, 150.0, 300.0]))
    # keys within a few decades of 10^exponent, some repeated (ties), signs mixed
    pool = [draw(st.floats(-3.0, 3.0)) for _ in range(draw(st.integers(1, n)))]
    mags = [10.0 ** (exponent + pool[draw(st.integers(0, len(pool) - 1))]) for _ in range(n)]
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(n)]
    x = np.array([m * s_ for m, s_ in zip(mags, signs)])
    x = np.clip(x, -1.7e308, 1.7e308)
    return x, k, p, lam


def _bounds(x, k, lam, p, magnitude):
    y_ref, g, outputs = mp_threshold_oracle(x, k, lam, p, magnitude=magnitude)
    with mpmath.workprec(2400):
        unit = mpmath.mpf(lam) * (abs(g) ** (mpmath.mpf(p) - 1) if magnitude else 1)
        delta = unit * mpmath.mpf("1e-11")
        lo, hi = outputs(g + delta), outputs(max(g - delta, mpmath.mpf(0)) if magnitude else g - delta)
    y_lo = np.minimum(np.abs(lo), np.abs(hi))
    y_hi = np.maximum(np.abs(lo), np.abs(hi))
    return y_ref, y_lo, y_hi


def _check_against_oracle(y, x, k, lam, p, magnitude):
    y_ref, y_lo, y_hi = _bounds(x, k, lam, p, magnitude)
    scale = np.abs(x) if magnitude else np.ones_like(x)
    slack = 1e-12 * scale + 1e-300
    ok = (np.abs(y) >= y_lo - slack) & (np.abs(y) <= y_hi + slack)
    assert ok.all(), (f"x={x.tolist()} k={k} lam={lam} p={p} magnitude={magnitude}\n"
                      f"got      {y.tolist()}\noracle   {y_ref.tolist()}\nbounds   {y_lo.tolist()} .. {y_hi.tolist()}")
    if magnitude:  # the sign of x is kept, zeros stay zero
        assert (np.sign(y) * np.sign(x) >= 0).all()


@FUZZ
@given(problems())
def test_mask_matches_oracle(problem):
    x, k, p, lam = problem
    y = sp.soft_topk_mask(torch.tensor(x), k, lam=lam, p=p).numpy()
    assert np.isfinite(y).all(), (x.tolist(), k, lam, p, y.tolist())
    assert ((y >= 0) & (y <= 1)).all()
    assert math.isclose(y.sum(), k, abs_tol=1e-9 * max(k, 1)), (x.tolist(), k, lam, p, y.tolist())
    _check_against_oracle(y, x, k, lam, p, magnitude=False)


@FUZZ
@given(problems(), st.booleans())
def test_magnitude_matches_oracle(problem, debias):
    x, k, p, lam = problem
    y = sp.soft_topk_mag(torch.tensor(x), k, lam=lam, p=p, debias=debias).numpy()
    assert np.isfinite(y).all(), (x.tolist(), k, lam, p, y.tolist())
    if debias:
        # (raw outputs may underflow: for huge lam |x|^(p-2) they lie below 1e-308)
        assert np.count_nonzero(y) >= min(k, np.count_nonzero(x))
        _check_against_oracle(y, x, k, lam, p, magnitude=True)
    else:
        y_ref, _, _ = mp_threshold_oracle(x, k, lam, p, magnitude=True, debias=False)
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


def test_general_p_gradients_pass_gradcheck():
    """The closed-form backward in the row's frame, for p outside {2, 4/3} and lam across
    scales (random rows: away from the kinks where a key crosses the block's edge)."""
    gen = torch.Generator().manual_seed(0)
    for p in (1.5, 3.0, 7.0):
        for lam in (1e-3, 1.0, 1e3):
            for magnitude, debias in ((False, True), (True, True), (True, False)):
                x = (torch.randn(3, 6, generator=gen, dtype=torch.float64) * lam).requires_grad_()
                fn = (lambda t: sp.soft_topk_mag(t, 3, lam=lam, p=p, debias=debias)) if magnitude else (
                    lambda t: sp.soft_topk_mask(t, 3, lam=lam, p=p))
                assert torch.autograd.gradcheck(fn, (x,), eps=1e-7 * lam, atol=1e-6, rtol=1e-5), (p, lam, magnitude)
