"""Modules built on the operators: the loss, the pruning parametrizations and the expert-choice router."""

from smoothprune.nn.loss import SoftTopKLoss
from smoothprune.nn.parametrizations import HardTopKMag, SoftTopKMag, StraightThroughTopKMag
from smoothprune.nn.router import ExpertChoiceRouter, Routing, SparseMoE

__all__ = ["SoftTopKLoss", "SoftTopKMag", "HardTopKMag", "StraightThroughTopKMag", "ExpertChoiceRouter",
           "Routing", "SparseMoE"]
