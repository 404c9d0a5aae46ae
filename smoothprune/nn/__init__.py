"""Modules built on the operators: the loss and the pruning parametrizations."""

from smoothprune.nn.loss import SoftTopKLoss
from smoothprune.nn.parametrizations import HardTopKMag, SoftTopKMag, StraightThroughTopKMag

__all__ = ["SoftTopKLoss", "SoftTopKMag", "HardTopKMag", "StraightThroughTopKMag"]
