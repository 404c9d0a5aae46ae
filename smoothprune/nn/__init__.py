"""Modules built on the operators."""

from smoothprune.nn.loss import SoftTopKLoss

__all__ = ["SoftTopKLoss"]
