"""k and lam as 0-d tensors, so that new values never change a traced or compiled graph."""

from __future__ import annotations

import functools

import torch


def as_scalar_tensor(value, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Returns ``value`` (a Python number or a tensor) as a 0-d tensor of ``dtype``.

    ``ones * value`` rather than ``torch.tensor(value)``: under torch.compile a Python float or
    int stays symbolic through a multiplication, while ``torch.tensor`` would specialise on it.
    In eager mode the 0-d tensors of recent Python values are cached (the ops only read them),
    which saves two tensor ops per call on the hot path of every pruned weight.
    """
    if isinstance(value, torch.Tensor):
        target = torch.device(device) if device is not None else value.device
        if value.dim() == 0 and value.dtype == dtype and value.device == target:
            return value
        return value.to(dtype=dtype, device=target).reshape(())
    if torch.compiler.is_compiling():
        return torch.ones((), dtype=dtype, device=device) * value
    return _cached_scalar(value, type(value), dtype, None if device is None else str(device))


@functools.lru_cache(maxsize=1024)
def _cached_scalar(value, _kind, dtype: torch.dtype, device) -> torch.Tensor:
    # `_kind` keeps 1 and 1.0 (equal and of equal hash) apart
    return torch.tensor(value, dtype=dtype, device=device)


def native_scalar_device(x: torch.Tensor, value):
    """Where the native op should read ``k`` or ``lam`` for an input ``x``.

    On x's GPU when the value already lives there, or when compiling for a GPU: the CUDA kernels
    then read it themselves, so a call never synchronises with the device and a compiled or
    CUDA-graphed step holds no host transfer. On the CPU otherwise (Python numbers, CPU inputs):
    the kernel reads it on the host, with no transfer at all.
    """
    if x.device.type == "cuda" and (
        torch.compiler.is_compiling() or (isinstance(value, torch.Tensor) and value.device == x.device)
    ):
        return x.device
    return "cpu"
