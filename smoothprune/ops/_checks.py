"""Argument checks of the public operators. Every error names the function, the argument, what
was expected and what was received (DESIGN.md section 5.2)."""

from __future__ import annotations

import numbers

import torch

from smoothprune.ops.dykstra import dykstra_q

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ALGORITHMS = ("auto", "pav", "dykstra")


def check_input(fn: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: expected x to be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{fn}: expected x of dtype float16, bfloat16, float32 or float64, got {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError(f"{fn}: expected x with at least 1 dimension, got a 0-d tensor")


def check_dim(fn: str, x: torch.Tensor, dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"{fn}: expected dim to be an int, got {dim!r}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"{fn}: expected dim in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d input, got dim={dim}"
        )
    return dim % x.dim()


def _check_device(fn: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A tensor k or lam lives on the CPU or on x's device (a meta one has no value to read)."""
    if t.device.type not in ("cpu", x.device.type):
        raise ValueError(f"{fn}: expected {name} on the CPU or on x's device ({x.device}), got a tensor on {t.device}")


def check_bool(fn: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{fn}: expected {name} to be a bool, got {value!r}")
    return value


def _host_value(t: torch.Tensor):
    """The value of a CPU scalar tensor (reading it costs no device sync), or None: a device
    tensor, a meta tensor, or a tensor under torch.compile (its value is checked where it is
    used: the CPU kernels raise, device kernels give NaN)."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return t.item()


def check_k(fn: str, k, n: int, dim: int, x: torch.Tensor):
    """Python ints and CPU tensors are checked here; device tensors where they are used (no
    host sync: an invalid value gives NaN there)."""
    if isinstance(k, torch.Tensor):
        if k.numel() != 1 or k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
            raise ValueError(
                f"{fn}: expected k to be an int or an integer scalar tensor, got a {k.dtype} tensor "
                f"of shape {tuple(k.shape)}"
            )
        _check_device(fn, "k", k, x)
        value = _host_value(k)
        if value is not None and not 0 <= value <= n:
            raise ValueError(f"{fn}: expected 0 <= k <= {n} along dim {dim}, got k={value}")
        return k if k.dim() == 0 else k.reshape(())
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"{fn}: expected k to be an int or an integer scalar tensor, got {k!r}")
    if not 0 <= k <= n:
        raise ValueError(f"{fn}: expected 0 <= k <= {n} along dim {dim}, got k={k}")
    return int(k)


def check_lam(fn: str, lam, x: torch.Tensor):
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1 or not lam.dtype.is_floating_point:
            raise ValueError(
                f"{fn}: expected lam to be a float or a floating scalar tensor, got a {lam.dtype} "
                f"tensor of shape {tuple(lam.shape)}"
            )
        _check_device(fn, "lam", lam, x)
        value = _host_value(lam)
        if value is not None and not (value > 0 and value != float("inf")):
            raise ValueError(f"{fn}: expected lam > 0 and finite, got lam={value}")
        return lam if lam.dim() == 0 else lam.reshape(())
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise ValueError(f"{fn}: expected lam to be a float or a floating scalar tensor, got {lam!r}")
    # Under torch.compile a float lam is traced symbolically: comparing it here would guard on
    # its value and recompile for every new lam, so the kernel checks it at run time instead.
    if not torch.compiler.is_compiling() and not (lam > 0 and lam != float("inf")):
        raise ValueError(f"{fn}: expected lam > 0 and finite, got lam={lam}")
    return lam


def check_positive(fn: str, name: str, value) -> float:
    """A finite real number > 0 (a Python scalar, not a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise ValueError(f"{fn}: expected {name} to be a finite float > 0, got {value!r}")
    return float(value)


def check_p(fn: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ValueError(f"{fn}: expected p to be a float > 1, got {p!r}")
    if not (p > 1 and p != float("inf")):
        raise ValueError(f"{fn}: expected p > 1 and finite, got p={p}")
    return float(p)


def check_algorithm(fn: str, algorithm, p: float, num_iter, device: torch.device) -> str:
    """The algorithm to run. ``num_iter`` is checked whenever Dykstra may run: with "auto" it is
    used on XLA and ignored elsewhere, so device-agnostic code can pass it unconditionally."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{fn}: expected algorithm in {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "pav" and num_iter is not None:
        raise ValueError(
            f"{fn}: num_iter applies to algorithm='dykstra' (or 'auto' on XLA) only, got "
            f"num_iter={num_iter!r} with algorithm='pav'"
        )
    if num_iter is not None and (isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1):
        raise ValueError(f"{fn}: expected num_iter to be a positive int, got {num_iter!r}")
    if algorithm == "auto":
        algorithm = "dykstra" if device.type == "xla" else "pav"
    if algorithm == "dykstra" and dykstra_q(p) is None:
        raise ValueError(f"{fn}: algorithm='dykstra' supports p=2 and p=4/3 only, got p={p}")
    return algorithm
