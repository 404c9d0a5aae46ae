"""Public operators: smooth and hard top-k, and the smooth top-k loss."""

from smoothprune.ops.hard_topk import hard_topk_mag, hard_topk_mask
from smoothprune.ops.loss import soft_topk_loss
from smoothprune.ops.soft_topk import soft_topk_mag, soft_topk_mask

__all__ = ["soft_topk_mask", "soft_topk_mag", "hard_topk_mask", "hard_topk_mag", "soft_topk_loss"]
