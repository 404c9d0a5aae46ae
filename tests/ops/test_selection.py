"""The selection shortcut (sort and solve only the window around t_k) against full-sort PAV."""

import numpy as np
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


def test_selection_on_pruning_scale_rows():
    torch.manual_seed(0)
    x = 0.05 * torch.randn(2, 25_088, dtype=torch.float64)
    for lam in (1e-4, 1e-3, 1e-2, 1.0):
        for p in (2.0, 4 / 3):
            for magnitude in (False, True):
                y_sel, g_sel = _run(x, 2509, lam, p, magnitude, True, False)
                y_full, g_full = _run(x, 2509, lam, p, magnitude, True, True)
                assert torch.equal(y_sel, y_full) and torch.equal(g_sel, g_full)


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


def test_selection_on_adversarial_rows():
    for dtype in (torch.float32, torch.float64):
        x = _adversarial_rows(dtype)
        assert torch.isfinite(x).all()
        for k in (12, 300, 1500, 2988):
            for lam in (1e-9, 1e-6, 1e-3, 1.0):
                for p in (2.0, 4 / 3):
                    for magnitude in (False, True):
                        y_sel, g_sel = _run(x, k, lam, p, magnitude, True, False)
                        y_full, g_full = _run(x, k, lam, p, magnitude, True, True)
                        assert torch.equal(y_sel, y_full), (dtype, k, lam, p, magnitude)
                        assert torch.equal(g_sel, g_full), (dtype, k, lam, p, magnitude)


def test_long_rows_split_across_threads_are_bit_identical():
    """Fewer rows than threads: each long row's passes run in chunks on several threads (rows of
    >= 2 * 8,192 entries). Outputs, saved state and gradients must not depend on the split."""
    g = torch.Generator().manual_seed(2)
    n = 300_000
    rows = torch.stack([
        0.05 * torch.randn(n, generator=g),
        (0.05 * torch.randn(n, generator=g)).round(decimals=3),  # heavy ties across chunks
        1.0 + 1e-6 * torch.rand(n, generator=g),                 # clustered
    ]).double()
    rows[2, 123_456] = float("nan")  # one NaN row: every output and gradient NaN
    cases = [(rows[:1], 30_000), (rows[1:2], 150_000), (rows, 7)]
    before = torch.get_num_threads()
    try:
        for x64, k in cases:
            for dtype in (torch.float32, torch.float64):
                x = x64.to(dtype)
                for lam, p, magnitude in ((1e-3, 2.0, True), (1e-2, 4 / 3, False), (1e3, 2.0, True)):
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
                        case = (threads, full_sort, dtype, k, lam, p)
                        # the saved state is identical whatever the split (perm's order differs
                        # between the selection and the full sort, not between thread counts)
                        assert all(same(a, b) for a, b in zip(result, results[1, full_sort])), case
                        y, gx = result[0], result[-1]
                        assert same(y, results[1, True][0]) and same(gx, results[1, True][-1]), case
    finally:
        torch.set_num_threads(before)
