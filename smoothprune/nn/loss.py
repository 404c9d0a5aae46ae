"""`SoftTopKLoss`, the module form of `smoothprune.soft_topk_loss`."""

from __future__ import annotations

import torch

from smoothprune.ops.loss import check_loss_options, soft_topk_loss
from smoothprune.validation import check_positive

__all__ = ["SoftTopKLoss"]


class SoftTopKLoss(torch.nn.Module):
    """Smooth top-k Fenchel-Young loss (see :func:`smoothprune.soft_topk_loss`).

    Args:
        k: the ``k`` of top-k accuracy.
        lam: regularization strength ``> 0``.
        p: regularization exponent ``> 1``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        fill: the target: ``"uniform"`` (default: the label at 1, the other k - 1 units spread
            evenly; bounded below and shift invariant), ``"topk"`` (a smoothed top-k hinge) or
            ``"none"`` (the raw one-hot target, unbounded below for k > 1).
        algorithm, num_iter: the soft mask's solver (``"auto"``: PAV on CPU/CUDA, ``num_iter``
            Dykstra iterations on XLA; see :func:`smoothprune.soft_topk_mask`).

    Raises:
        ValueError: on ``k < 1``, ``lam <= 0``, ``p <= 1``, an unknown ``reduction``/``fill``, or
            a bad ``algorithm``/``num_iter`` (a bool is no number), naming the argument.

    Example:
        >>> import torch, smoothprune as sp
        >>> loss_fn = sp.SoftTopKLoss(k=3)
        >>> loss = loss_fn(torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,)))
        >>> loss.backward()
    """

    def __init__(self, k: int, *, lam: float = 1.0, p: float = 2.0, reduction: str = "mean", fill: str = "uniform",
                 algorithm: str = "auto", num_iter=None):
        super().__init__()
        fn = "SoftTopKLoss"
        k, p = check_loss_options(fn, k, p, reduction, fill, algorithm, num_iter)
        lam = check_positive(fn, "lam", lam)
        self.k, self.lam, self.p, self.reduction, self.fill = k, lam, p, reduction, fill
        self.algorithm, self.num_iter = algorithm, num_iter

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_topk_loss(
            logits, target, self.k, lam=self.lam, p=self.p, reduction=self.reduction, fill=self.fill,
            algorithm=self.algorithm, num_iter=self.num_iter,
        )

    def extra_repr(self) -> str:
        solver = "" if self.algorithm == "auto" and self.num_iter is None else f", algorithm={self.algorithm!r}, num_iter={self.num_iter}"
        return f"k={self.k}, lam={self.lam}, p={self.p}, reduction={self.reduction!r}, fill={self.fill!r}{solver}"
