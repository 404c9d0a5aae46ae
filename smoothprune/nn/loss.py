"""`SoftTopKLoss`, the module form of `smoothprune.soft_topk_loss`."""

from __future__ import annotations

import torch

from smoothprune.ops._checks import check_algorithm
from smoothprune.ops.loss import FILLS, REDUCTIONS, soft_topk_loss


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
            a bad ``algorithm``/``num_iter``.

    Example:
        >>> import torch, smoothprune as sp
        >>> loss_fn = sp.SoftTopKLoss(k=3)
        >>> loss = loss_fn(torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,)))
        >>> loss.backward()
    """

    def __init__(self, k: int, *, lam: float = 1.0, p: float = 2.0, reduction: str = "mean", fill: str = "uniform",
                 algorithm: str = "auto", num_iter=None):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"SoftTopKLoss: expected an int k >= 1, got k={k!r}")
        if not (isinstance(lam, (int, float)) and 0 < lam < float("inf")):
            raise ValueError(f"SoftTopKLoss: expected lam > 0 and finite, got lam={lam!r}")
        if not (isinstance(p, (int, float)) and 1 < p < float("inf")):
            raise ValueError(f"SoftTopKLoss: expected p > 1 and finite, got p={p!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"SoftTopKLoss: expected reduction in {REDUCTIONS}, got {reduction!r}")
        if fill not in FILLS:
            raise ValueError(f"SoftTopKLoss: expected fill in {FILLS}, got {fill!r}")
        check_algorithm("SoftTopKLoss", algorithm, p, num_iter, torch.device("cpu"))
        self.k, self.lam, self.p, self.reduction, self.fill = k, float(lam), float(p), reduction, fill
        self.algorithm, self.num_iter = algorithm, num_iter

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_topk_loss(
            logits, target, self.k, lam=self.lam, p=self.p, reduction=self.reduction, fill=self.fill,
            algorithm=self.algorithm, num_iter=self.num_iter,
        )

    def extra_repr(self) -> str:
        solver = "" if self.algorithm == "auto" and self.num_iter is None else f", algorithm={self.algorithm!r}, num_iter={self.num_iter}"
        return f"k={self.k}, lam={self.lam}, p={self.p}, reduction={self.reduction!r}, fill={self.fill!r}{solver}"
