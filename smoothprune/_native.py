"""Loads the compiled extension `smoothprune._C`, which registers the `torch.ops.smoothprune` ops."""

from __future__ import annotations

import torch

try:
    from smoothprune import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "smoothprune: the native extension smoothprune._C is not built or does not match this "
        f"torch ({torch.__version__}). Build it with `make build` (or `pip install "
        "--no-build-isolation -e .` in an environment that has torch)."
    ) from exc


def build_info() -> str:
    """Returns what the extension was compiled with, e.g. ``"cpu"`` or ``"cpu+cuda"``."""
    return torch.ops.smoothprune.build_info()
