"""The checkpoint layout of smoothprune <= 0.1, rebuilt for the backward-compatibility tests.

Those versions registered each spec with ``torch.nn.utils.parametrize``: a pruned tensor was
saved as ``X.parametrizations.W.original`` (the latent) with the spec's buffers
``X.parametrizations.W.0.{k,group,sparsity,lam,shared}``.
"""

import copy

import torch
from torch.nn.utils import parametrize

from smoothprune.nn.pruned import detach_, latent
from smoothprune.pruning import holders, pruned_tensors


def legacy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a pruned model in the old layout (each spec registered with parametrize)."""
    model = copy.deepcopy(model)
    readers = holders(model)
    for _, spec, module, name in pruned_tensors(model):
        w = latent(module, name).detach().clone()
        for _, m, n in readers[id(spec)]:
            detach_(m, n)
        with torch.no_grad():
            module._parameters[name].copy_(w)
        parametrize.register_parametrization(module, name, spec)
    return model


def legacy_state_dict(model: torch.nn.Module) -> dict:
    return legacy_model(model).state_dict()
