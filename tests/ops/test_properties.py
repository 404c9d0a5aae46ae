"""Hypothesis property tests of the smooth operators."""

import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import smoothprune as sp

P = st.sampled_from([2.0, 4 / 3, 1.5, 3.0])
LAM = st.floats(1e-4, 10.0)
ROWS = st.lists(st.floats(-10, 10, allow_nan=False, width=64), min_size=1, max_size=30)
# rows with many exact ties
TIED_ROWS = st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), min_size=1, max_size=30)


def _k(data, n):
    return data.draw(st.integers(0, n))


@given(ROWS | TIED_ROWS, P, LAM, st.data())
def test_mask_is_in_unit_box_and_sums_to_k(row, p, lam, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    y = sp.soft_topk_mask(x, k, lam=lam, p=p)
    assert torch.all(y >= -1e-12) and torch.all(y <= 1 + 1e-12)
    assert abs(float(y.sum()) - k) < 1e-9 * max(1, k)


@given(ROWS | TIED_ROWS, P, LAM, st.data())
def test_sparsity_outside_the_top_region(row, p, lam, data):
    x = torch.tensor(row, dtype=torch.float64)
    n = len(row)
    k = _k(data, n)
    assume(0 < k < n)
    # mask: every entry <= t_k - lam is exactly 0 (t_k the k-th largest value)
    t_k = torch.sort(x, descending=True).values[k - 1]
    y = sp.soft_topk_mask(x, k, lam=lam, p=p)
    assert torch.all(y[x <= t_k - lam] == 0)
    # magnitude: every |entry| <= v(t_k) is exactly 0, v the kept value s = v + lam v^(p-1)
    a_k = torch.sort(x.abs(), descending=True).values[k - 1].item()
    lo, hi = 0.0, a_k
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mid + lam * mid ** (p - 1) < a_k else (lo, mid)
    y = sp.soft_topk_mag(x, k, lam=lam, p=p)
    assert torch.all(y[x.abs() < lo * (1 - 1e-12)] == 0)
    # and at most as many nonzeros as entries inside or above the window
    assert int((y != 0).sum()) <= int((x.abs() > lo * (1 - 1e-12)).sum())


@given(ROWS | TIED_ROWS, P, LAM, st.data())
def test_permutation_equivariance(row, p, lam, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    perm = torch.from_numpy(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(len(row)))
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        assert torch.allclose(op(x[perm], k, lam=lam, p=p), op(x, k, lam=lam, p=p)[perm], atol=1e-12, rtol=0)


@given(TIED_ROWS, P, LAM, st.data())
def test_equal_inputs_get_equal_outputs(row, p, lam, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        y = op(x, k, lam=lam, p=p)
        for v in set(row):
            group = y[x == v]
            assert torch.allclose(group, group[0].expand_as(group), atol=1e-12, rtol=0)


@given(ROWS, P, LAM, st.floats(0.01, 100.0), st.floats(-50, 50), st.data())
def test_scaling_and_translation(row, p, lam, c, shift, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    mask = sp.soft_topk_mask(x, k, lam=lam, p=p)
    # mask(c x; c lam) = mask(x; lam), mask(x + shift) = mask(x)
    assert torch.allclose(sp.soft_topk_mask(c * x, k, lam=c * lam, p=p), mask, atol=1e-8, rtol=0)
    assert torch.allclose(sp.soft_topk_mask(x + shift, k, lam=lam, p=p), mask, atol=1e-8, rtol=0)
    # mag(c x; lam c^(2-p)) = c mag(x; lam)
    for debias in (True, False):
        mag = sp.soft_topk_mag(x, k, lam=lam, p=p, debias=debias)
        scaled = sp.soft_topk_mag(c * x, k, lam=lam * c ** (2 - p), p=p, debias=debias)
        assert torch.allclose(scaled, c * mag, atol=1e-8 * max(1.0, c), rtol=1e-9)


@given(ROWS, P, st.data())
def test_lam_to_zero_limit(row, p, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    srt = torch.sort(x.abs(), descending=True).values
    if 0 < k < len(row):
        assume(srt[k - 1] - srt[k] > 1e-6)  # the hard operator is unique
        srtx = torch.sort(x, descending=True).values
        assume(srtx[k - 1] - srtx[k] > 1e-6)
    assert torch.equal(sp.soft_topk_mask(x, k, lam=1e-10, p=p), sp.hard_topk_mask(x, k))
    assert torch.allclose(sp.soft_topk_mag(x, k, lam=1e-10, p=p), sp.hard_topk_mag(x, k), atol=1e-8, rtol=0)


@given(ROWS | TIED_ROWS, LAM, st.data())
def test_magnitude_is_odd_and_sign_preserving(row, lam, data):
    x = torch.tensor(row, dtype=torch.float64)
    k = _k(data, len(row))
    y = sp.soft_topk_mag(x, k, lam=lam, p=4 / 3)
    assert torch.allclose(sp.soft_topk_mag(-x, k, lam=lam, p=4 / 3), -y, atol=1e-12, rtol=0)
    assert torch.all(y * x >= 0)
    assert torch.all(y.abs() <= x.abs() * (1 + 1e-12))
