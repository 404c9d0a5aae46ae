"""Hand-computed cases, limits, special inputs and argument errors."""

import pytest
import torch

import smoothprune as sp


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


@pytest.mark.parametrize("p", [2.0, 4 / 3])
def test_issue_examples(p):
    x = torch.tensor([-5.0, -2.0, 3.0, 1.0])
    assert close(sp.soft_topk_mask(x, k=2, lam=1e-2, p=p), [0, 0, 1, 1])
    assert close(sp.soft_topk_mag(x, k=2, lam=1e-2, p=p), [-5, 0, 3, 0])


def test_ties_are_split_evenly():
    y = sp.soft_topk_mask(torch.tensor([0.0, 0.0, -5.0, 5.0]), k=2, lam=1e-2, p=2)
    assert close(y, [0.5, 0.5, 0, 1])
    y = sp.soft_topk_mask(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), k=1, lam=1e-3, p=4 / 3)
    assert close(y, [1 / 3] * 3, 1e-12)
    y = sp.soft_topk_mag(torch.tensor([2.0, -2.0, 0.5]), k=1, lam=1e-3, p=2)
    assert y[0] == -y[1] and y[2] == 0


def test_hand_computed_pooled_block():
    # s = (3, 1, -2, -5), k = 2, lam = 5: 1-5 < -2 pools {1, -2} at gamma = -3
    y = sp.soft_topk_mask(torch.tensor([-5.0, -2.0, 3.0, 1.0], dtype=torch.float64), k=2, lam=5.0, p=2)
    assert close(y, [0, 0.2, 1, 0.8], 1e-15)
    # magnitude p = 2: kept singleton shrinks by 1 / (1 + lam) without de-biasing
    y = sp.soft_topk_mag(torch.tensor([4.0, 0.1], dtype=torch.float64), k=1, lam=0.25, p=2, debias=False)
    assert close(y, [4 / 1.25, 0], 1e-15)


@pytest.mark.parametrize("p", [2.0, 4 / 3, 1.5, 3.0])
def test_small_lam_gives_hard_operator(p):
    torch.manual_seed(0)
    x = torch.randn(8, 50, dtype=torch.float64)
    for k in (0, 1, 7, 49, 50):
        assert torch.equal(sp.soft_topk_mask(x, k, lam=1e-9, p=p), sp.hard_topk_mask(x, k))
        assert torch.equal(sp.soft_topk_mag(x, k, lam=1e-9, p=p), sp.hard_topk_mag(x, k))


def test_k_and_lam_as_tensors_match_python_scalars():
    x = torch.randn(4, 30)
    a = sp.soft_topk_mag(x, 5, lam=0.1, p=2)
    b = sp.soft_topk_mag(x, torch.tensor(5), lam=torch.tensor(0.1, dtype=torch.float64), p=2)
    assert torch.equal(a, b)
    assert torch.equal(sp.hard_topk_mask(x, torch.tensor(5)), sp.hard_topk_mask(x, 5))


def test_non_contiguous_and_empty_inputs():
    x = torch.randn(6, 5, 4).transpose(0, 2)
    y = sp.soft_topk_mask(x, 2, lam=0.1, dim=1)
    assert torch.allclose(y.sum(1), torch.full((4, 6), 2.0), atol=1e-6)
    assert sp.soft_topk_mask(torch.empty(0, 7), 3, lam=0.1).shape == (0, 7)
    assert sp.soft_topk_mask(torch.empty(3, 0), 0, lam=0.1).shape == (3, 0)


def test_nan_and_inf_rows_return_nan_and_leave_other_rows_alone():
    x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    bad = x.detach().clone()
    bad[1, 3] = float("nan")
    bad[2, 0] = float("inf")
    bad[3, 5] = float("-inf")
    bad.requires_grad_()
    for op in (sp.soft_topk_mask, sp.soft_topk_mag):
        y = op(bad, 3, lam=0.5, p=4 / 3)
        assert torch.isnan(y[1:]).all()
        assert torch.equal(y[0], op(x[0], 3, lam=0.5, p=4 / 3))
        (g,) = torch.autograd.grad(y[0].sum() + y[1:].nan_to_num().sum(), bad)
        assert torch.isfinite(g[0]).all() and torch.isnan(g[1:]).all()


BAD_CALLS = [
    (lambda: sp.soft_topk_mask(torch.randn(5), -1), "expected 0 <= k <= 5 along dim -1, got k=-1"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 7), "expected 0 <= k <= 5 along dim -1, got k=7"),
    (lambda: sp.soft_topk_mag(torch.randn(3, 5), 4, dim=0), "expected 0 <= k <= 3 along dim 0, got k=4"),
    (lambda: sp.soft_topk_mask(torch.randn(5), torch.tensor(9)), "expected 0 <= k <= 5"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2.5), "expected k to be an int"),
    (lambda: sp.soft_topk_mask(torch.randn(5), torch.tensor(2.0)), "expected k to be an int"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, lam=0.0), "expected lam to be a finite float > 0, got lam=0.0"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, lam=-1.0), "expected lam to be a finite float > 0, got lam=-1.0"),
    (lambda: sp.soft_topk_mag(torch.randn(5), 2, lam=torch.tensor(-0.5)), "expected lam to be a finite float > 0, got lam=-0.5"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, p=1.0), "expected p to be a finite float > 1, got p=1.0"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, p=0.5), "expected p to be a finite float > 1, got p=0.5"),
    (lambda: sp.soft_topk_mask(torch.arange(5), 2), "expected x of dtype float16, bfloat16, float32 or float64, got torch.int64"),
    (lambda: sp.soft_topk_mag(torch.randn(2, 5), 2, dim=2), "expected dim in [-2, 1] for a 2-d input, got dim=2"),
    (lambda: sp.soft_topk_mask(torch.randn(2, 5), 2, dim=-3), "expected dim in [-2, 1] for a 2-d input, got dim=-3"),
    (lambda: sp.soft_topk_mask(torch.tensor(1.0), 0), "expected x with at least 1 dimension"),
    (lambda: sp.soft_topk_mask([1.0, 2.0], 1), "expected x to be a torch.Tensor, got list"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, algorithm="sinkhorn"), "expected algorithm in"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, p=1.5, algorithm="dykstra"), "supports p=2 and p=4/3 only, got p=1.5"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, p=2, algorithm="dykstra", num_iter=0), "expected num_iter to be an int >= 1, got num_iter=0"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, num_iter=5, algorithm="pav"), "num_iter applies to algorithm='dykstra' (or 'auto' on XLA) only, got num_iter=5 with algorithm='pav'"),
    (lambda: sp.soft_topk_mask(torch.randn(5), 2, num_iter=0), "expected num_iter to be an int >= 1, got num_iter=0"),
    (lambda: sp.hard_topk_mag(torch.randn(5), 6), "hard_topk_mag: expected 0 <= k <= 5 along dim -1, got k=6"),
    (lambda: sp.hard_topk_mask(torch.arange(5), 2), "hard_topk_mask: expected x of dtype"),
    (lambda: sp.hard_topk_mag(torch.tensor([True, False]), 1), "hard_topk_mag: expected x of dtype float16, bfloat16, float32 or float64, got torch.bool"),
    (lambda: sp.soft_topk_mag(torch.randn(3), 1, debias="False"), "soft_topk_mag: expected debias to be a bool, got debias='False'"),
    (lambda: sp.soft_topk_mask(torch.randn(3), torch.tensor(1, device="meta")), "soft_topk_mask: expected k on the CPU or on x's device (cpu), got a tensor on meta"),
    (lambda: sp.soft_topk_mag(torch.randn(3), 1, lam=torch.tensor(0.1, device="meta")), "soft_topk_mag: expected lam on the CPU or on x's device (cpu), got a tensor on meta"),
    (lambda: sp.hard_topk_mask(torch.randn(3), torch.tensor(1, device="meta")), "hard_topk_mask: expected k on the CPU or on x's device (cpu), got a tensor on meta"),
    (lambda: sp.soft_topk_loss(torch.randn(2, 5), torch.tensor([1, 2], device="meta"), 2), "soft_topk_loss: expected target on the device of logits (cpu), got meta"),
    (lambda: sp.prune_(torch.nn.Linear(2, 2), 0.5, targets=["re:("]), "prune_: expected a valid regular expression in targets, got 're:('"),
    (lambda: sp.prune_(torch.nn.Linear(2, 2), 0.5, exclude=["re:("]), "prune_: expected a valid regular expression in exclude, got 're:('"),
    (lambda: sp.prune_({}, 0.5), "prune_: expected model to be an nn.Module, got dict"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_native_op_checks_its_own_arguments():
    ops = torch.ops.smoothprune
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"soft_topk_forward: expected 0 <= k <= 5 .* got k=6"):
        ops.soft_topk_forward(x, torch.tensor(6), torch.tensor(0.1, dtype=torch.float64), 2.0, False, False)
    with pytest.raises(ValueError, match="expected lam > 0 and finite, got lam=nan"):
        ops.soft_topk_forward(x, torch.tensor(2), torch.tensor(float("nan"), dtype=torch.float64), 2.0, False, False)
    with pytest.raises(ValueError, match="expected p > 1 and finite, got p=1"):
        ops.soft_topk_forward(x, torch.tensor(2), torch.tensor(0.1, dtype=torch.float64), 1.0, False, False)
    with pytest.raises(ValueError, match="expected x of dtype float16, bfloat16, float32 or float64, got Int"):
        ops.soft_topk_forward(x.int(), torch.tensor(2), torch.tensor(0.1, dtype=torch.float64), 2.0, False, False)


def test_rounding_never_flips_the_sign_of_a_magnitude_output():
    # found by hypothesis: PAV pooled the key 0 with gamma ~ 1e-85 (rounding), which gave
    # y = -1e-85 for x = 0; outputs are clamped to the exact solution's sign
    x = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 4.9615479246562973e-29, 1.175494351e-38], dtype=torch.float64)
    for k in range(8):
        y = sp.soft_topk_mag(x, k, lam=1.0, p=4 / 3)
        assert torch.all(y * x >= 0) and torch.all(y >= 0), (k, y)


@pytest.mark.parametrize("p, lam", [(1.5, 1.0), (1.2, 1e10), (1.01, 1.0)])
def test_raw_kept_value_below_the_smallest_subnormal_rounds_to_zero(p, lam):
    # found by the oracle fuzz: a kept key 1e-300 with v + lam v^(p-1) = 1e-300 has v ~ 1e-600,
    # which float64 rounds to 0; the root search returned the bracket's other end, 4.9e-324
    x = torch.tensor([-1e-300, -1e-300, 1e-300], dtype=torch.float64)
    y = sp.soft_topk_mag(x, 3, lam=lam, p=p, debias=False)
    assert torch.equal(y, torch.zeros(3, dtype=torch.float64)), y.tolist()
    assert torch.equal(torch.signbit(y), torch.signbit(x))  # the sign of x is kept, as -0.0


def test_raw_kept_value_near_the_smallest_normal_keeps_its_digits():
    # the same equation where v is representable: v + v^0.5 = s with v = 1e-300 exactly solvable
    v = 1e-300
    s = v + v**0.5
    y = sp.soft_topk_mag(torch.tensor([s, s], dtype=torch.float64), 2, lam=1.0, p=1.5, debias=False)
    assert torch.allclose(y, torch.full((2,), v, dtype=torch.float64), rtol=1e-12, atol=0), y.tolist()
