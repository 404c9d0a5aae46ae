"""The smooth top-k loss: a Fenchel-Young loss built on the sparse smooth top-k mask.

    L(theta, t) = f(theta) + R(t) - <theta, t>,   f(theta) = max_{y in P(1_k)} <theta, y> - R(y),

with R(y) = (lam/p) sum |y_i|^p, so grad L = y*(theta) - t (Danskin), y* = soft_topk_mask(theta).

The target. With a one-hot target t = e_label and k > 1, t lies outside the permutahedron
P(1_k) = {y in [0, 1]^C, sum y = k} (its entries sum to 1, not k), and
L(theta - c 1) = L(theta) - c (k - 1): the raw loss decreases forever by lowering every logit.
``fill`` chooses a target inside P(1_k), where the Fenchel-Young inequality gives L >= 0:

* ``"uniform"`` (default): t = e_label + (k - 1)/(C - 1) (1 - e_label), the label at 1 and the
  remaining k - 1 units spread evenly over the other classes. This is the Euclidean projection
  of e_label onto P(1_k), so it is the bounded target nearest to the paper's one-hot one. Its
  gradient y* - t is the one-hot gradient y* - e_label with its component along 1 removed,
  minus the constant (k - 1)/(C - 1) (e_label - 1/C), which cancels the one-hot loss's endless
  push on the label. L = 0 exactly when y* = t: the label saturated at 1 and the other classes
  tied, so the loss trains the label to rank first, with a margin of order lam.
* ``"topk"``: t = e_label + the hard top-(k-1) indicator of the *other* logits (treated as a
  constant). lam -> 0 gives the top-k hinge max(0, theta_[k] - theta_label): zero as soon as
  the label is confidently in the top k, whatever its rank there.
* ``"none"``: the raw one-hot target of the paper's formula (unbounded below for k > 1;
  identical to the others for k = 1).

For both filled targets sum t = k, so L is invariant to adding a constant to every logit.
"""

from __future__ import annotations

import torch

from smoothprune.ops._scalars import as_scalar_tensor
from smoothprune.ops.hard_topk import topk_mask_of
from smoothprune.ops.soft_topk import soft_topk_mask
from smoothprune.validation import check_algorithm, check_choice, check_input, check_int, check_lam, check_p

__all__ = ["soft_topk_loss", "check_loss_options", "REDUCTIONS", "FILLS"]

REDUCTIONS = ("mean", "sum", "none")
FILLS = ("uniform", "topk", "none")


def check_loss_options(fn: str, k, p, reduction, fill, algorithm, num_iter, num_classes: int | None = None,
                       device: torch.device | None = None):
    """The loss's arguments that need no tensor (`SoftTopKLoss` checks them at construction):
    ``k`` an int >= 1 (and <= ``num_classes`` when known), ``p``, ``reduction``, ``fill`` and the
    solver (for ``device`` when known: "auto" picks Dykstra on XLA). ``lam`` is checked by the
    caller (a float, or for the function a scalar tensor too). Returns ``(k, p)`` normalized."""
    k = check_int(fn, "k", k, low=1, high=num_classes, note=None if num_classes is None else "the number of classes")
    p = check_p(fn, p)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    check_choice(fn, "fill", fill, FILLS)
    check_algorithm(fn, algorithm, p, num_iter, device)
    return k, p


def _check_loss_args(fn, logits, target, k, lam, p, reduction, fill, algorithm, num_iter):
    check_input(fn, logits, "logits")
    num_classes = logits.shape[-1]
    check_loss_options(fn, k, p, reduction, fill, algorithm, num_iter, num_classes, logits.device)
    check_lam(fn, lam, logits)
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point or target.dtype == torch.bool:
        got = f"a {target.dtype} tensor" if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"{fn}: expected target to be an integer tensor of class indices, got {got}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{fn}: expected target of shape {tuple(logits.shape[:-1])} for logits of shape "
            f"{tuple(logits.shape)} (classes on the last dim), got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(f"{fn}: expected target on the device of logits ({logits.device}), got {target.device}")
    if target.device.type == "cpu" and target.numel() and not torch.compiler.is_compiling():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{fn}: expected target values in [0, {num_classes - 1}], got values in [{lo}, {hi}]")


def _target_polytope_point(logits: torch.Tensor, target: torch.Tensor, k: int, fill: str) -> torch.Tensor:
    onehot = torch.zeros_like(logits).scatter(-1, target.unsqueeze(-1), 1.0)
    if fill == "none":
        return onehot
    num_classes = logits.shape[-1]
    if fill == "uniform":
        spread = (k - 1) / (num_classes - 1) if num_classes > 1 else 0.0
        return onehot + spread * (1.0 - onehot)
    others = logits.detach().masked_fill(onehot.bool(), float("-inf"))
    # k - 1 as a tensor: no output shape depends on k, so new values of k do not recompile
    k_others = as_scalar_tensor(k - 1, torch.int64, logits.device)
    return onehot + topk_mask_of(others, k_others, -1)  # (unchecked: -inf orders the target last)


class _FenchelYoungTopk(torch.autograd.Function):
    """L = <theta, y*> - R(y*) + R(t) - <theta, t> with the Danskin gradient y* - t."""

    @staticmethod
    def forward(theta, t, y_star, lam, p):
        reg = lambda y: (lam / p) * y.abs().pow(p).sum(-1)  # noqa: E731
        return (theta * (y_star - t)).sum(-1) - reg(y_star) + reg(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, t, y_star, _, _ = inputs
        ctx.save_for_backward(y_star - t)

    @staticmethod
    def backward(ctx, grad_out):
        (direction,) = ctx.saved_tensors
        return grad_out.unsqueeze(-1) * direction, None, None, None, None


def soft_topk_loss(logits, target, k, *, lam=1.0, p=2.0, reduction="mean", fill="uniform", algorithm="auto",
                   num_iter=None):
    """Smooth top-k Fenchel-Young loss of ``logits`` (classes on the last dim) for class labels.

    The gradient with respect to the logits is ``soft_topk_mask(logits, k) - t`` for the target
    ``t`` chosen by ``fill`` (see the module docstring: the stance on the shift direction that
    makes the raw one-hot loss unbounded for k > 1).

    Args:
        logits: floating tensor ``[..., C]``.
        target: integer tensor ``[...]`` of labels in ``[0, C)``.
        k: the ``k`` of top-k accuracy, ``1 <= k <= C``.
        lam: regularization strength ``> 0``.
        p: regularization exponent ``> 1``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        fill: the target (see the module docstring): ``"uniform"`` (default: the label at 1, the
            other k - 1 units spread evenly; L >= 0, shift invariant), ``"topk"`` (the label
            plus the top k - 1 other logits; a smoothed top-k hinge) or ``"none"`` (one-hot,
            unbounded below for k > 1).
        algorithm, num_iter: the solver of the soft mask, as in :func:`soft_topk_mask`
            (``"auto"``: exact PAV on CPU/CUDA, ``num_iter`` Dykstra iterations on XLA).

    Returns:
        The loss, reduced as asked (computed in float32 at least).

    Raises:
        ValueError: on mismatched shapes or dtypes, labels out of range, ``k`` outside
            ``[1, C]``, ``lam <= 0``, ``p <= 1``, an unknown ``reduction``/``fill``, or a bad
            ``algorithm``/``num_iter`` (see :func:`soft_topk_mask`).

    Example:
        >>> import torch, smoothprune as sp
        >>> logits = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # the label first, the others tied
        >>> float(sp.soft_topk_loss(logits, torch.tensor([1]), k=2, lam=0.1))
        0.0
        >>> round(float(sp.soft_topk_loss(torch.tensor([[3.0, 2.0, 0.0, 0.0]]), torch.tensor([1]), k=2, lam=0.1)), 4)
        1.9667
    """
    fn = "soft_topk_loss"
    _check_loss_args(fn, logits, target, k, lam, p, reduction, fill, algorithm, num_iter)
    theta = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    with torch.no_grad():
        y_star = soft_topk_mask(theta.detach(), k, lam=lam, p=p, dim=-1, algorithm=algorithm, num_iter=num_iter)
    t = _target_polytope_point(theta, target.long(), k, fill)
    loss = _FenchelYoungTopk.apply(theta, t, y_star, lam, p)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
