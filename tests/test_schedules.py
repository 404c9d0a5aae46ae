"""Schedules: values, YAML-style construction, state, argument errors."""

import math

import pytest

from smoothprune import schedules


def test_constant_linear_cosine_values():
    assert [schedules.Constant(0.3)(t) for t in (0, 5, 10**9)] == [0.3, 0.3, 0.3]
    lin = schedules.Linear(start=0.0, final=0.8, begin=10, end=20)
    assert [lin(t) for t in (0, 10, 15, 20, 99)] == [0.0, 0.0, pytest.approx(0.4), 0.8, 0.8]
    cos = schedules.Cosine(start=1.0, final=0.0, begin=0, end=100)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == 0.0 and cos(25) > 0.5


def test_cubic_is_zhu_gupta_with_frequency():
    cub = schedules.Cubic(init=0.0, final=0.9, begin=100, end=1100, frequency=100)
    for t in range(0, 1500, 37):
        q = min(max(t, 100), 1100)
        q = 100 + (q - 100) // 100 * 100 if t < 1100 else 1100
        want = 0.9 + (0.0 - 0.9) * (1 - (q - 100) / 1000) ** 3
        assert cub(t) == pytest.approx(want, abs=1e-12), t
    values = [cub(t) for t in range(0, 1200)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone
    assert len(set(values)) == 11  # changes only every `frequency` steps


def test_exponential_is_geometric():
    exp = schedules.Exponential(start=1e-2, final=1e-6, begin=0, end=4)
    assert [exp(t) for t in range(5)] == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5, 1e-6], rel=1e-12)
    ratios = [exp(t + 1) / exp(t) for t in range(4)]
    assert max(ratios) - min(ratios) < 1e-12


def test_stateful_like_an_lr_scheduler():
    s = schedules.Linear(0.0, 1.0, 0, 10)
    for _ in range(4):
        s.step()
    assert s.value == pytest.approx(0.4)
    state = s.state_dict()
    t = schedules.Linear(0.0, 1.0, 0, 10)
    t.load_state_dict(state)
    assert t.value == s.value and t.step() == pytest.approx(0.5)


def test_build_from_yaml_style_mappings():
    assert isinstance(schedules.build(0.5), schedules.Constant)
    s = schedules.build({"name": "Cubic", "final": 0.9, "end": 10})
    assert isinstance(s, schedules.Cubic) and s(10) == pytest.approx(0.9)
    s = schedules.build({"_target_": "ignored", "name": "exponential", "start": 1e-2, "final": 1e-4, "end": 2})
    assert s(1) == pytest.approx(1e-3)
    same = schedules.Linear(0, 1, 0, 1)
    assert schedules.build(same) is same
    assert "final=0.9" in repr(schedules.build({"name": "cubic", "final": 0.9, "end": 10}))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: schedules.build({"name": "step"}), "schedules.build: expected name in ('constant', 'linear', 'cubic', 'cosine', 'exponential'), got 'step'"),
        (lambda: schedules.build({"name": "linear", "stop": 3}), "schedules.build: bad arguments for 'linear'"),
        (lambda: schedules.build("0.5"), "schedules.build: expected a float, a Schedule or a mapping"),
        (lambda: schedules.Linear(0, 1, begin=10, end=5), "Linear: expected end >= begin, got begin=10, end=5"),
        (lambda: schedules.Cubic(0, 1, 0, 10, frequency=0), "Cubic: expected frequency to be an int >= 1, got frequency=0"),
        (lambda: schedules.Cubic(0, 1, -1, 10), "Cubic: expected begin to be an int >= 0, got begin=-1"),
        (lambda: schedules.Exponential(0.0, 1e-3, 0, 10), "Exponential: expected start to be a finite float > 0, got start=0.0"),
        (lambda: schedules.Constant(math.nan), "Constant: expected value to be a finite float, got value=nan"),
        (lambda: schedules.Linear(0, 1, 0, 10).load_state_dict({}), "Linear.load_state_dict: expected a dict with an int 'last_step'"),
        (lambda: schedules.Cubic(0, 1, 0, 10).load_state_dict({"last_step": "3"}), "Cubic.load_state_dict: expected a dict with an int 'last_step'"),
        (lambda: schedules.Constant(1.0).load_state_dict(None), "Constant.load_state_dict: expected a dict with an int 'last_step'"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_ramps_between_the_extremes_of_float64_stay_finite():
    """start * (1 - t) + final * t: final - start would overflow to inf."""
    assert schedules.Linear(-1.7e308, 1.7e308, 0, 10).at(5) == 0.0
    for ramp in (schedules.Linear(-1.7e308, 1.7e308, 0, 10), schedules.Cubic(-1.7e308, 1.7e308, 0, 10),
                 schedules.Cosine(-1.7e308, 1.7e308, 0, 10)):
        values = [ramp.at(step) for step in range(11)]
        assert all(math.isfinite(v) for v in values) and values == sorted(values)
        assert values[0] == -1.7e308 and values[-1] == 1.7e308
