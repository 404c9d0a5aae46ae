"""Argument validation, shared by every public entry point (ops, nn modules, pruning, the
Lightning callback, schedules, inference).

The convention (docs/design.md §8): every bad argument raises ``ValueError`` (smoothprune raises
no ``TypeError`` for arguments: a value of the wrong type is a bad value like any other), and the
message names the function, the argument, what was expected and what was received::

    "<function>: expected <argument> <requirement>, got <argument>=<received>"

for example ``"prune_: expected p to be a finite float > 1, got p=1.0"``. A check whose
requirement involves other arguments names them too (``"soft_topk_mask: algorithm='dykstra'
supports p=2 and p=4/3 only, got p=1.5"``). A ``bool`` is never accepted where a number is
expected (``True`` is an ``int`` in Python). Every check returns the normalized value (``float(p)``,
``int(k)``, ...), so callers write ``p = check_p(fn, p)``.

Each check is written once, here; the callers validate every argument they can before doing any
work (a constructor validates everything that needs no model or input tensor).

Example:
    >>> from smoothprune.validation import check_p, check_choice
    >>> check_p("my_fn", 2)
    2.0
    >>> check_p("my_fn", True)
    Traceback (most recent call last):
    ...
    ValueError: my_fn: expected p to be a finite float > 1, got p=True
    >>> check_choice("my_fn", "reduction", "avg", ("mean", "sum"))
    Traceback (most recent call last):
    ...
    ValueError: my_fn: expected reduction in ('mean', 'sum'), got reduction='avg'
"""

from __future__ import annotations

import math
import numbers
import os
import re

import torch

__all__ = [
    # the message
    "argument_error",
    # plain Python values
    "is_real",
    "is_int",
    "check_bool",
    "check_int",
    "check_real",
    "check_positive",
    "check_fraction",
    "check_choice",
    "check_file_path",
    # the operators' arguments
    "FLOAT_DTYPES",
    "ALGORITHMS",
    "check_input",
    "check_dim",
    "check_k",
    "check_lam",
    "check_p",
    "check_algorithm",
    "check_dykstra_p",
    "dykstra_q",
    # pruning's arguments
    "SCOPES",
    "check_sparsity",
    "parse_scope",
    "check_targets",
    "compile_pattern",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ALGORITHMS = ("auto", "pav", "dykstra")
SCOPES = ("layer", "global", "row", "nm")


# ------------------------------------------------------------------------------------------------
# the message
# ------------------------------------------------------------------------------------------------
def _show(value) -> str:
    """How a received value is written: its repr, or a tensor's dtype and shape (not its data)."""
    if isinstance(value, torch.Tensor):
        return f"<{value.dtype} tensor of shape {tuple(value.shape)}>"
    return repr(value)


def argument_error(fn: str, name: str, expected: str, value) -> ValueError:
    """The error of the convention: ``"{fn}: expected {name} {expected}, got {name}={value!r}"``.

    ``expected`` reads after the argument's name: ``"to be a bool"``, ``"in ('a', 'b')"``.

    Example:
        >>> argument_error("prune_", "lam", "to be a finite float > 0", -1.0)
        ValueError('prune_: expected lam to be a finite float > 0, got lam=-1.0')
    """
    return ValueError(f"{fn}: expected {name} {expected}, got {name}={_show(value)}")


# ------------------------------------------------------------------------------------------------
# plain Python values
# ------------------------------------------------------------------------------------------------
def is_real(value) -> bool:
    """A real number that is not a bool (Python or NumPy scalar; not a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    """An integer that is not a bool (Python or NumPy scalar; not a tensor)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(fn: str, name: str, value) -> bool:
    """A ``bool`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise argument_error(fn, name, "to be a bool", value)
    return value


def check_int(fn: str, name: str, value, *, low: int = 1, high: int | None = None, note: str | None = None,
              integral_float: bool = False) -> int:
    """An int in ``[low, high]`` (``high=None``: no upper bound); ``note`` explains the bound in
    the message. ``integral_float=True`` also takes floats holding an integer (``1000.0``, as
    YAML or arithmetic may give)."""
    ok = is_int(value) or (integral_float and is_real(value) and math.isfinite(value) and float(value).is_integer())
    if not ok or value < low or (high is not None and value > high):
        requirement = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise argument_error(fn, name, f"to be {requirement}" + (f" ({note})" if note else ""), value)
    return int(value)


def _bound(low, high, low_open: bool, high_open: bool, finite: bool) -> str:
    if low is not None and high is not None:
        return f"a float in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    kind = "a finite float" if finite else "a float"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high:g}"
    return kind


def _in_bounds(value, low, high, low_open: bool, high_open: bool, finite: bool) -> bool:
    if math.isnan(value) or (finite and math.isinf(value)):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def check_real(fn: str, name: str, value, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """A real number (not a bool, not a tensor) in the given bounds (open or closed; NaN never
    passes; ``finite=False`` lets an unbounded side reach infinity)."""
    if not is_real(value) or not _in_bounds(value, low, high, low_open, high_open, finite):
        raise argument_error(fn, name, "to be " + _bound(low, high, low_open, high_open, finite), value)
    return float(value)


def check_positive(fn: str, name: str, value) -> float:
    """A finite real number > 0 (a Python scalar, not a tensor): lam, capacity_factor, ..."""
    return check_real(fn, name, value, low=0.0, low_open=True)


def check_fraction(fn: str, name: str, value, *, high_open: bool = False) -> float:
    """A real number in ``[0, 1]`` (``[0, 1)`` with ``high_open``)."""
    return check_real(fn, name, value, low=0.0, high=1.0, high_open=high_open)


def check_choice(fn: str, name: str, value, choices: tuple):
    """One of ``choices`` (a bool is not taken for 0 or 1)."""
    if isinstance(value, bool) or isinstance(value, torch.Tensor) or value not in choices:
        raise argument_error(fn, name, f"in {choices}", value)
    return value


def check_file_path(fn: str, name: str, value, *, optional: bool = True):
    """A file path (``str`` or ``os.PathLike``) that is not an existing directory, or None when
    ``optional``. Whether its folder exists is checked when the file is written."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise argument_error(fn, name, "to be a path or None" if optional else "to be a path", value)
    if os.path.isdir(value):
        raise argument_error(fn, name, "to be a file path, not a directory", value)
    return value


# ------------------------------------------------------------------------------------------------
# the operators' arguments
# ------------------------------------------------------------------------------------------------
def check_input(fn: str, x, name: str = "x") -> None:
    """A floating tensor (float16, bfloat16, float32 or float64) with at least one dimension."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: expected {name} of dtype float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{fn}: expected {name} with at least 1 dimension, got a 0-d tensor")


def check_dim(fn: str, x: torch.Tensor, dim) -> int:
    """A dimension of ``x``; returns it non-negative."""
    if not is_int(dim):
        raise argument_error(fn, "dim", "to be an int", dim)
    if not -x.dim() <= dim < x.dim():
        raise argument_error(fn, "dim", f"in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d input", dim)
    return int(dim) % x.dim()


def _check_device(fn: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A tensor k or lam lives on the CPU or on x's device (a meta one has no value to read)."""
    if t.device.type not in ("cpu", x.device.type):
        raise ValueError(f"{fn}: expected {name} on the CPU or on x's device ({x.device}), got a tensor on {t.device}")


def _host_value(t: torch.Tensor):
    """The value of a CPU scalar tensor (reading it costs no device sync), or None: a device
    tensor, a meta tensor, or a tensor under torch.compile (its value is checked where it is
    used: the CPU kernels raise, device kernels give NaN)."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return t.item()


def check_k(fn: str, k, n: int, dim: int, x: torch.Tensor):
    """``0 <= k <= n``: an int, or an integer scalar tensor on the CPU or on x's device. Python
    ints and CPU tensors are checked here; device tensors where they are used (no host sync: an
    invalid value gives NaN there). Returns an int or a 0-d tensor."""
    if isinstance(k, torch.Tensor):
        if k.numel() != 1 or k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise argument_error(fn, "k", "to be an int or an integer scalar tensor", k)
        _check_device(fn, "k", k, x)
        value = _host_value(k)
        if value is not None and not 0 <= value <= n:
            raise ValueError(f"{fn}: expected 0 <= k <= {n} along dim {dim}, got k={value}")
        return k if k.dim() == 0 else k.reshape(())
    if not is_int(k):
        raise argument_error(fn, "k", "to be an int or an integer scalar tensor", k)
    if not 0 <= k <= n:
        raise ValueError(f"{fn}: expected 0 <= k <= {n} along dim {dim}, got k={k}")
    return int(k)


def check_lam(fn: str, lam, x: torch.Tensor):
    """``lam > 0`` and finite: a float (see `check_positive`), or a floating scalar tensor on the
    CPU or on x's device (its value checked when it is on the CPU). Returns it, a tensor 0-d."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1 or not lam.dtype.is_floating_point:
            raise argument_error(fn, "lam", "to be a float or a floating scalar tensor", lam)
        _check_device(fn, "lam", lam, x)
        value = _host_value(lam)
        if value is not None:
            check_positive(fn, "lam", value)
        return lam if lam.dim() == 0 else lam.reshape(())
    if not is_real(lam):
        raise argument_error(fn, "lam", "to be a float or a floating scalar tensor", lam)
    # Under torch.compile a float lam is traced symbolically: comparing it here would guard on
    # its value and recompile for every new lam, so the kernel checks it at run time instead.
    if not torch.compiler.is_compiling():
        check_positive(fn, "lam", lam)
    return lam


def check_p(fn: str, p, name: str = "p") -> float:
    """The regularization exponent: a finite float > 1."""
    return check_real(fn, name, p, low=1.0, low_open=True)


def dykstra_q(p: float):
    """``q = p / (p - 1)`` for the exponents whose pair update Dykstra's path solves in closed
    form (p = 2 -> 2, p = 4/3 -> 4; docs/design.md §4), else None (no Dykstra for that p)."""
    for p_closed, q in ((2.0, 2), (4.0 / 3.0, 4)):
        if abs(p - p_closed) < 1e-12:
            return q
    return None


def check_dykstra_p(fn: str, p: float, what: str = "algorithm='dykstra'") -> None:
    """``p`` is one of the exponents Dykstra's path solves (2 or 4/3); ``what`` names the
    argument that chose Dykstra."""
    if dykstra_q(p) is None:
        raise ValueError(f"{fn}: {what} supports p=2 and p=4/3 only, got p={p!r}")


def check_algorithm(fn: str, algorithm, p: float, num_iter, device: torch.device | None = None) -> str:
    """The solver: ``algorithm`` in `ALGORITHMS`, ``num_iter`` None or an int >= 1 that only a
    Dykstra run uses, ``p`` (already checked) one Dykstra supports when it runs. Returns the
    algorithm to run on ``device`` (``"auto"``: Dykstra on XLA, PAV elsewhere; without a device,
    as on the CPU). ``num_iter`` is checked whenever Dykstra may run: with "auto" it is used on
    XLA and ignored elsewhere, so device-agnostic code can pass it unconditionally."""
    check_choice(fn, "algorithm", algorithm, ALGORITHMS)
    if algorithm == "pav" and num_iter is not None:
        raise ValueError(
            f"{fn}: num_iter applies to algorithm='dykstra' (or 'auto' on XLA) only, got "
            f"num_iter={num_iter!r} with algorithm='pav'"
        )
    if num_iter is not None:
        check_int(fn, "num_iter", num_iter, low=1)
    if algorithm == "auto":
        algorithm = "dykstra" if device is not None and device.type == "xla" else "pav"
    if algorithm == "dykstra":
        check_dykstra_p(fn, p)
    return algorithm


# ------------------------------------------------------------------------------------------------
# pruning's arguments
# ------------------------------------------------------------------------------------------------
def check_sparsity(fn: str, sparsity) -> float:
    """The fraction of entries to prune, a float in ``[0, 1]``."""
    return check_fraction(fn, "sparsity", sparsity)


def parse_scope(fn: str, scope) -> tuple[str, int | None, int | None]:
    """A pruning scope, parsed: ``(scope, None, None)`` for a name of `SCOPES`, ``("nm", N, M)``
    for ``"N:M"`` (``"nm"`` is ``"2:4"``), ``("block", R, C)`` for ``"block:RxC"``."""
    if scope == "nm":
        return "nm", 2, 4
    if isinstance(scope, str):
        match = re.fullmatch(r"(\d+):(\d+)", scope)
        block = re.fullmatch(r"block:(\d+)x(\d+)", scope)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if 0 < n <= m:
                return "nm", n, m
        elif block:
            rows, cols = int(block.group(1)), int(block.group(2))
            if rows > 0 and cols > 0:
                return "block", rows, cols
        elif scope in SCOPES:
            return scope, None, None
    raise argument_error(fn, "scope", f"in {SCOPES}, an 'N:M' string with 0 < N <= M or a 'block:RxC' string "
                                      "with R, C > 0", scope)


def compile_pattern(fn: str, name: str, pattern: str) -> re.Pattern:
    """The regular expression of a ``"re:<regex>"`` target or exclude pattern."""
    try:
        return re.compile(pattern[3:])
    except re.error as exc:
        raise ValueError(f"{fn}: expected a valid regular expression in {name}, got {pattern!r} ({exc})") from None


def _is_pair(item) -> bool:
    """A ``(module, tensor name)`` target."""
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.nn.Module)
            and isinstance(item[1], str))


def check_targets(fn: str, name: str, value, *, pairs: bool = True, nonempty: bool = False):
    """What names tensors to prune (``pairs=True``: targets) or to leave out (``pairs=False``:
    exclude), checked without a model: None, a tensor name, a ``"re:<regex>"`` pattern (a valid
    regex), a ``(module, name)`` pair (with ``pairs``), or a list or tuple of those;
    ``nonempty``: not an empty list. Whether they name tensors of the model is checked when it
    is known (`smoothprune.pruning.resolve_targets`)."""
    if value is None:
        return None
    single = isinstance(value, str) or (pairs and _is_pair(value))
    items = [value] if single else value
    kinds = "a tensor name, a 're:<regex>' pattern" + (", a (module, name) pair" if pairs else "")
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(item, str) or (pairs and _is_pair(item)) for item in items):
        raise argument_error(fn, name, f"to be None, {kinds} or a list of those", value)
    if nonempty and not items:
        raise argument_error(fn, name, "to be None or non-empty", value)
    for item in items:
        if isinstance(item, str) and item.startswith("re:"):
            compile_pattern(fn, name, item)
    return value
