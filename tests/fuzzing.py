"""The fuzz of the exact solver against the arbitrary-precision oracle, shared by the CPU fuzz
(tests/ops/test_fuzz.py) and the CUDA one (tests/ops/test_cuda.py): the hypothesis settings, the
problem strategy and the check of an output against the oracle's bounds."""

from __future__ import annotations

import mpmath
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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


def oracle_lam(x, k, lam, p, magnitude):
    """The lam the oracle is evaluated at. The magnitude's frame lam is lam c^(p-2) (c the k-th
    largest |x|); below 1e-280 float64 keys cannot tell it apart from any smaller one (only exact
    ties pool, and they split the same way: the solver floors it there, pav.h make_frame). The
    oracle's bracket for the block value is about that wide relative to c, which 2400 bits cannot
    resolve below ~1e-720: there it is evaluated at the floor, which it resolves."""
    s = np.sort(np.abs(x))[::-1]
    if not magnitude or not 0 < k < len(x) or not s[k - 1] > 0:
        return lam
    with mpmath.workprec(2400):
        c = mpmath.mpf(float(s[k - 1]))
        floor = mpmath.mpf("1e-280") * c ** (2 - mpmath.mpf(p))
        return max(mpmath.mpf(lam), floor)


def _bounds(x, k, lam, p, magnitude):
    lam = oracle_lam(x, k, lam, p, magnitude)
    y_ref, g, outputs = mp_threshold_oracle(x, k, lam, p, magnitude=magnitude)
    with mpmath.workprec(2400):
        unit = mpmath.mpf(lam) * (abs(g) ** (mpmath.mpf(p) - 1) if magnitude else 1)
        delta = unit * mpmath.mpf("1e-11")
        lo, hi = outputs(g + delta), outputs(max(g - delta, mpmath.mpf(0)) if magnitude else g - delta)
    y_lo = np.minimum(np.abs(lo), np.abs(hi))
    y_hi = np.maximum(np.abs(lo), np.abs(hi))
    return y_ref, y_lo, y_hi


def check_against_oracle(y, x, k, lam, p, magnitude):
    y_ref, y_lo, y_hi = _bounds(x, k, lam, p, magnitude)
    scale = np.abs(x) if magnitude else np.ones_like(x)
    slack = 1e-12 * scale + 1e-300
    ok = (np.abs(y) >= y_lo - slack) & (np.abs(y) <= y_hi + slack)
    assert ok.all(), (f"x={x.tolist()} k={k} lam={lam} p={p} magnitude={magnitude}\n"
                      f"got      {y.tolist()}\noracle   {y_ref.tolist()}\nbounds   {y_lo.tolist()} .. {y_hi.tolist()}")
    if magnitude:  # the sign of x is kept, zeros stay zero
        assert (np.sign(y) * np.sign(x) >= 0).all()
