"""k and lam as 0-d tensors, so that new values never change a traced or compiled graph."""

from __future__ import annotations

import torch


def as_scalar_tensor(value, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Returns ``value`` (a Python number or a tensor) as a 0-d tensor of ``dtype``.

    ``ones * value`` rather than ``torch.tensor(value)``: under torch.compile a Python float or
    int stays symbolic through a multiplication, while ``torch.tensor`` would specialise on it.
    """
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device if device is not None else value.device).reshape(())
    return torch.ones((), dtype=dtype, device=device) * value
