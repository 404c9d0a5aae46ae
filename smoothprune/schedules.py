"""Schedules for the target sparsity and the regularization strength lam.

A schedule maps a step count to a value. Like an LR scheduler it is also stateful: `step()`
advances it, `value` is the current value, and `state_dict` / `load_state_dict` save and
restore its position (the Lightning callback checkpoints them for exact resume).

    >>> from smoothprune import schedules
    >>> sparsity = schedules.Cubic(init=0.0, final=0.9, begin=0, end=1000, frequency=10)
    >>> lam = schedules.Exponential(start=1e-2, final=1e-5, begin=0, end=1000)
    >>> sparsity(500), sparsity(1000), round(lam(500), 8), lam(1000)
    (0.7875, 0.9, 0.00031623, 1e-05)
    >>> schedules.build({"name": "cubic", "final": 0.9, "end": 1000})(500)  # from YAML
    0.7875
    >>> schedules.build(0.9)(123)  # a float is Constant
    0.9

Before ``begin`` a schedule holds its start value, after ``end`` its final value.
"""

from __future__ import annotations

import math

from smoothprune.validation import check_int, check_positive, check_real, is_int, is_real

__all__ = ["Schedule", "Constant", "Linear", "Cubic", "Cosine", "Exponential", "SCHEDULES", "build"]


class Schedule:
    """Base class: subclasses implement `at(step)`."""

    def __init__(self):
        self.last_step = 0

    def at(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.at(step)

    @property
    def value(self) -> float:
        return self.at(self.last_step)

    def step(self) -> float:
        """Advances one step and returns the new value."""
        self.last_step += 1
        return self.value

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        step = state.get("last_step") if isinstance(state, dict) else None
        if not is_int(step):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with an int 'last_step' "
                             f"(what state_dict() returns), got {state!r}")
        self.last_step = int(step)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "last_step")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """Always ``value``."""

    def __init__(self, value: float):
        super().__init__()
        self.value_ = check_real("Constant", "value", value)

    def at(self, step: int) -> float:
        return self.value_


class _Ramp(Schedule):
    """Goes from ``start`` at ``begin`` to ``end_value`` at ``end``; `shape(t)` maps [0, 1] to [0, 1]."""

    def __init__(self, name, start, final, begin, end, frequency=1, positive=False):
        super().__init__()
        value = check_positive if positive else check_real
        self.start = value(name, "start", start)
        self.final = value(name, "final", final)
        self.begin = check_int(name, "begin", begin, low=0, integral_float=True)
        self.end = check_int(name, "end", end, low=0, integral_float=True)
        self.frequency = check_int(name, "frequency", frequency, low=1, integral_float=True)
        if self.end < self.begin:
            raise ValueError(f"{name}: expected end >= begin, got begin={self.begin}, end={self.end}")

    def fraction(self, step: int) -> float:
        """Progress in [0, 1], advanced only every `frequency` steps after `begin`."""
        if step >= self.end:
            return 1.0
        if step <= self.begin:
            return 0.0
        step = self.begin + (step - self.begin) // self.frequency * self.frequency
        return (step - self.begin) / (self.end - self.begin)

    def shape(self, t: float) -> float:
        return t

    def at(self, step: int) -> float:
        t = self.shape(self.fraction(step))
        return self.start * (1.0 - t) + self.final * t  # (final - start may overflow)


class Linear(_Ramp):
    """Linear interpolation from ``start`` to ``final`` between steps ``begin`` and ``end``."""

    def __init__(self, start: float = 0.0, final: float = 0.0, begin: int = 0, end: int = 0, frequency: int = 1):
        super().__init__("Linear", start, final, begin, end, frequency)


class Cubic(_Ramp):
    """Gradual pruning of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(end - t0))^3``,
    updated every ``frequency`` steps: fast early, gentle near the final sparsity."""

    def __init__(self, init: float = 0.0, final: float = 0.0, begin: int = 0, end: int = 0, frequency: int = 1):
        super().__init__("Cubic", init, final, begin, end, frequency)

    def shape(self, t: float) -> float:
        return 1.0 - (1.0 - t) ** 3


class Cosine(_Ramp):
    """Half-cosine from ``start`` to ``final`` between ``begin`` and ``end``."""

    def __init__(self, start: float = 0.0, final: float = 0.0, begin: int = 0, end: int = 0, frequency: int = 1):
        super().__init__("Cosine", start, final, begin, end, frequency)

    def shape(self, t: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * t))


class Exponential(_Ramp):
    """Geometric interpolation ``start * (final / start)^t`` (both > 0): anneals lam toward the
    hard operator at a constant rate per step."""

    def __init__(self, start: float = 1e-2, final: float = 1e-5, begin: int = 0, end: int = 0, frequency: int = 1):
        super().__init__("Exponential", start, final, begin, end, frequency, positive=True)

    def at(self, step: int) -> float:
        return self.start * (self.final / self.start) ** self.fraction(step)


SCHEDULES = {"constant": Constant, "linear": Linear, "cubic": Cubic, "cosine": Cosine, "exponential": Exponential}


def build(spec) -> Schedule:
    """A schedule from a float (Constant), a Schedule (returned as is), or a mapping with a
    ``name`` (``constant``, ``linear``, ``cubic``, ``cosine``, ``exponential``; any case) and
    the class's keyword arguments, as written in YAML.

    Raises:
        ValueError: on an unknown name or bad keyword arguments.
    """
    if isinstance(spec, Schedule):
        return spec
    if is_real(spec):
        return Constant(spec)
    if hasattr(spec, "keys"):
        kwargs = {str(k): v for k, v in dict(spec).items()}
        kwargs.pop("_target_", None)
        name = str(kwargs.pop("name", "")).lower()
        if name not in SCHEDULES:
            raise ValueError(f"schedules.build: expected name in {tuple(SCHEDULES)}, got {name!r}")
        try:
            return SCHEDULES[name](**kwargs)
        except TypeError as exc:
            raise ValueError(f"schedules.build: bad arguments for {name!r}: {exc}") from None
    raise ValueError(f"schedules.build: expected a float, a Schedule or a mapping with a 'name', got {spec!r}")
