"""Lightning integration: the `SmoothPruning` callback.

`SmoothPruning` subclasses the Callback base of every Lightning flavour installed
(`pytorch_lightning` and/or `lightning.pytorch`), so one object works with either Trainer.
"""

from smoothprune.lightning.callback import SmoothPruningImpl

_BASES = []
try:
    import pytorch_lightning

    _BASES.append(pytorch_lightning.Callback)
except ImportError:  # pragma: no cover - depends on what is installed
    pass
try:
    import lightning.pytorch

    _BASES.append(lightning.pytorch.Callback)
except ImportError:  # pragma: no cover - depends on what is installed
    pass
if not _BASES:  # pragma: no cover
    raise ImportError(
        "smoothprune.lightning needs pytorch-lightning or lightning: pip install 'smoothprune[lightning]'"
    )


class SmoothPruning(SmoothPruningImpl, *_BASES):
    __doc__ = SmoothPruningImpl.__doc__


__all__ = ["SmoothPruning"]
