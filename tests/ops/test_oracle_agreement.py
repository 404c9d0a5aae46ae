"""The native PAV agrees with the independent float64 oracles (tests/oracle.py)."""

import numpy as np
import pytest
import torch

from tests.helpers import MODES, P_VALUES, apply_oracle, random_case, rel_err
from tests.oracle import pav_oracle, qp_bruteforce_p2, threshold_oracle

# The oracle tests run on every device: CUDA ones are marked and skipped without a GPU.
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


def test_oracles_agree_with_each_other(rng):
    for trial in range(150):
        n = int(rng.integers(1, 30))
        k = int(rng.integers(0, n + 1))
        lam = float(10 ** rng.uniform(-3, 1))
        p = P_VALUES[trial % len(P_VALUES)]
        x = rng.normal(size=n)
        for _, _, kw in MODES:
            a = pav_oracle(x, k, lam, p, **kw)
            b = threshold_oracle(x, k, lam, p, **kw)
            assert rel_err(a, b, x) < 1e-12, (x, k, lam, p, kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", P_VALUES, ids=lambda p: f"p={p:.3g}")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_float64_matches_oracles(mode, p, device, rng):
    _, op, kw = mode
    for _ in range(25):
        shape, dim, k, lam = random_case(rng)
        x = torch.from_numpy(rng.normal(size=shape) * 10 ** rng.uniform(-2, 1))
        y = op(x.to(device), k, lam=lam, p=p, dim=dim)
        assert y.device.type == device
        y = y.cpu().numpy()
        for oracle in (pav_oracle, threshold_oracle):
            want = apply_oracle(oracle, x, k, lam, p, dim, **kw)
            assert rel_err(y, want, x.numpy()) < 1e-9, (shape, dim, k, lam, oracle.__name__)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", P_VALUES, ids=lambda p: f"p={p:.3g}")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_float32_matches_oracle(mode, p, device, rng):
    _, op, kw = mode
    for _ in range(25):
        shape, dim, k, lam = random_case(rng)
        x = torch.from_numpy(rng.normal(size=shape)).float()
        y = op(x.to(device), k, lam=lam, p=p, dim=dim)
        assert y.dtype == torch.float32
        want = apply_oracle(threshold_oracle, x, k, lam, p, dim, **kw)
        assert rel_err(y.cpu().numpy(), want, x.numpy()) < 2e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_half_precision_is_the_rounded_float64_result(mode, dtype, device, rng):
    _, op, kw = mode
    eps = torch.finfo(dtype).eps
    for p in (2.0, 4 / 3):
        for _ in range(5):
            shape, dim, k, lam = random_case(rng)
            x = torch.from_numpy(rng.normal(size=shape)).to(dtype)
            y = op(x.to(device), k, lam=lam, p=p, dim=dim)
            assert y.dtype == dtype
            want = apply_oracle(threshold_oracle, x, k, lam, p, dim, **kw)
            # computed in float64, rounded once to the output dtype
            assert rel_err(y.double().cpu().numpy(), want, x.double().numpy()) <= eps


@pytest.mark.parametrize("magnitude", [False, True])
def test_p2_matches_bruteforce_qp(magnitude, rng):
    op = MODES[1][1] if magnitude else MODES[0][1]
    for _ in range(120):
        n = int(rng.integers(1, 7))
        k = int(rng.integers(0, n + 1))
        lam = float(10 ** rng.uniform(-3, 1))
        x = rng.normal(size=n)
        y = op(torch.from_numpy(x), k, lam=lam, p=2.0).numpy()
        want = qp_bruteforce_p2(x, k, lam, magnitude=magnitude)
        assert rel_err(y, want, x) < 1e-9, (x, k, lam)


@pytest.mark.slow  # 27 rows of 3 x 3,000 against the oracle
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
@pytest.mark.parametrize("lam", [1e-3, 0.3, 30.0])
@pytest.mark.parametrize("p", [2.0, 4 / 3, 3.0], ids=lambda p: f"p={p:.3g}")
def test_large_rows_use_radix_sort_and_agree(rng, p, lam, mode):
    # rows above the radix-sort threshold, with many exact ties and zeros
    _, op, kw = mode
    x = np.round(rng.normal(size=(3, 3000)) * 20) / 20
    y = op(torch.from_numpy(x), 500, lam=lam, p=p).numpy()
    want = apply_oracle(threshold_oracle, torch.from_numpy(x), 500, lam, p, -1, **kw)
    assert rel_err(y, want, x) < 1e-9
