"""The selection shortcut (sort and solve only the window around t_k) against full-sort PAV."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import smoothprune  # noqa: F401  (registers the ops)

_FWD = torch.ops.smoothprune.soft_topk_forward
_BWD = torch.ops.smoothprune.soft_topk_backward

P = st.sampled_from([2.0, 4 / 3, 1.5, 3.0])
LAM = st.sampled_from([1e-12, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 1e6])
VALUES = st.one_of(
    st.floats(-1, 1, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 0.05, -0.05, 0.1, 1e-30]),  # exact ties and zeros
)


def _run(x, k, lam, p, magnitude, debias, full_sort):
    kt, lt = torch.tensor(k), torch.tensor(lam, dtype=torch.float64)
    y, perm, blocks, gamma = _FWD(x, kt, lt, p, magnitude, debias, full_sort)
    g = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype).expand_as(x).contiguous()
    gx = _BWD(g, x, perm, blocks, gamma, kt, lt, p, magnitude, debias)
    return y, gx


# (each example in both dtypes: hypothesis reports the failing example; the dtype loop stays so
# that the examples, which hypothesis derives from the test's source, stay the same)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 300)), elements=VALUES), P, LAM, st.booleans(), st.booleans(), st.data())
def test_selection_is_bit_identical_to_full_sort(x_np, p, lam, magnitude, debias, data):
    n = x_np.shape[-1]
    k = data.draw(st.integers(0, n))
    for dtype in (torch.float64, torch.float32):
        x = torch.from_numpy(x_np).to(dtype)
        y_sel, g_sel = _run(x, k, lam, p, magnitude, debias, False)
        y_full, g_full = _run(x, k, lam, p, magnitude, debias, True)
        assert torch.equal(y_sel, y_full)
        assert torch.equal(g_sel, g_full)


MAGNITUDE = pytest.mark.parametrize("magnitude", [False, True], ids=["mask", "mag"])
P_2_43 = pytest.mark.parametrize("p", [2.0, 4 / 3], ids=["p2", "p4/3"])


@MAGNITUDE
@P_2_43
@pytest.mark.parametrize("lam", [1e-4, 1e-3, 1e-2, 1.0])
def test_selection_on_pruning_scale_rows(lam, p, magnitude):
    torch.manual_seed(0)
    x = 0.05 * torch.randn(2, 25_088, dtype=torch.float64)
    y_sel, g_sel = _run(x, 2509, lam, p, magnitude, True, False)
    y_full, g_full = _run(x, 2509, lam, p, magnitude, True, True)
    assert torch.equal(y_sel, y_full) and torch.equal(g_sel, g_full)


@functools.cache
def _adversarial_rows(dtype):
    """Rows that stress the value-bucket selection: clustered keys (a narrow range far from 0,
    so bucket edges round), heavy ties, a huge dynamic range, subnormal ranges, and two-point
    masses around t_k."""
    g = torch.Generator().manual_seed(1)
    n = 3000
    rows = [
        1.0 + 1e-7 * torch.rand(n, generator=g, dtype=torch.float64),              # clustered
        1e3 + torch.randint(0, 7, (n,), generator=g).double(),                     # 7 distinct values
        torch.exp(8 * torch.randn(n, generator=g, dtype=torch.float64)),          # huge range
        torch.where(torch.rand(n, generator=g) < 0.5, 0.25, -0.75).double(),       # two points
        0.05 * torch.randn(n, generator=g, dtype=torch.float64).round(decimals=3),  # many ties
    ]
    tiny = torch.finfo(dtype).tiny
    rows.append(tiny * torch.rand(n, generator=g, dtype=torch.float64))           # subnormal
    rows.append(tiny * (1 + torch.randint(0, 3, (n,), generator=g).double()))     # a few subnormal steps
    return torch.stack(rows).to(dtype)


@pytest.mark.slow  # 128 cases of 7 x 3,000 entries, selection and full sort
@MAGNITUDE
@P_2_43
@pytest.mark.parametrize("lam", [1e-9, 1e-6, 1e-3, 1.0])
@pytest.mark.parametrize("k", [12, 300, 1500, 2988])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_selection_on_adversarial_rows(dtype, k, lam, p, magnitude):
    x = _adversarial_rows(dtype)
    assert torch.isfinite(x).all()
    y_sel, g_sel = _run(x, k, lam, p, magnitude, True, False)
    y_full, g_full = _run(x, k, lam, p, magnitude, True, True)
    assert torch.equal(y_sel, y_full)
    assert torch.equal(g_sel, g_full)


@functools.cache
def _long_rows():
    g = torch.Generator().manual_seed(2)
    n = 300_000
    rows = torch.stack([
        0.05 * torch.randn(n, generator=g),
        (0.05 * torch.randn(n, generator=g)).round(decimals=3),  # heavy ties across chunks
        1.0 + 1e-6 * torch.rand(n, generator=g),                 # clustered
    ]).double()
    rows[2, 123_456] = float("nan")  # one NaN row: every output and gradient NaN
    return rows


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # rows of 300,000 entries
@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("lam,p,magnitude", [(1e-3, 2.0, True), (1e-2, 4 / 3, False), (1e3, 2.0, True)],
                         ids=["lam1e-3-p2-mag", "lam1e-2-p4/3-mask", "lam1e3-p2-mag"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows,k", [(slice(0, 1), 30_000), (slice(1, 2), 150_000), (slice(0, 3), 7)],
                         ids=["normal-k30000", "ties-k150000", "all-with-nan-k7"])
def test_long_rows_split_across_threads_are_bit_identical(rows, k, dtype, lam, p, magnitude):
    """Fewer rows than threads: each long row's passes run in chunks on several threads (rows of
    >= 2 * 8,192 entries). Outputs, saved state and gradients must not depend on the split."""
    x = _long_rows()[rows].to(dtype)
    results = {}
    for threads in (1, 4):
        torch.set_num_threads(threads)
        for full_sort in (False, True):
            kt, lt = torch.tensor(k), torch.tensor(lam, dtype=torch.float64)
            out = _FWD(x, kt, lt, p, magnitude, True, full_sort)
            gx = _BWD(torch.ones_like(x), x, *out[1:], kt, lt, p, magnitude, True)
            results[threads, full_sort] = (*out, gx)
    same = lambda a, b: torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))  # noqa: E731
    for (threads, full_sort), result in results.items():
        # the saved state is identical whatever the split (perm's order differs
        # between the selection and the full sort, not between thread counts)
        assert all(same(a, b) for a, b in zip(result, results[1, full_sort])), (threads, full_sort)
        y, gx = result[0], result[-1]
        assert same(y, results[1, True][0]) and same(gx, results[1, True][-1]), (threads, full_sort)
