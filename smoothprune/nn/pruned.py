"""Pruned tensors that leave the user's module as it was: same Parameters, same names, same
state_dict keys, picklable.

A pruned module keeps its own Parameter (``module._parameters["weight"]``) as the *latent*
``W'`` that the optimizer trains; reading ``module.weight`` returns the pruned weight
``W = topk_mag(W')`` computed by a `TopKMagParametrization` (the "spec"). This is done by
moving the module to a subclass of its own class (same name) that adds a property per pruned
name, as ``torch.nn.utils.parametrize`` does, but without moving the Parameter elsewhere:

* ``named_parameters()``, ``parameters()`` order, optimizers, DDP, weight averaging and
  ``load_state_dict`` see exactly the user's Parameters;
* ``state_dict()`` writes, under the user's own key, the *hardened* weight (the exactly-k hard
  top-k of the latent at the current ``k``): any checkpoint loads with ``strict=True`` into the
  unmodified module and is exactly sparse. The latent itself is saved separately (the Lightning
  callback puts it in the checkpoint; see `latent_state`);
* in eval mode (``module.training`` False) the property returns the hardened weight too, so
  what is validated is what a checkpoint holds (``spec.eval_hard = False`` evaluates the
  smooth weight instead);
* pickling and ``copy.deepcopy`` rebuild the pruned module from the user's class, so
  ``torch.save(model)``, ``save_hyperparameters()`` with module arguments and weight-averaging
  copies work;
* ``.to()`` / ``.cuda()`` move the spec's scalar buffers with the module.

One spec may serve several modules: a Parameter shared by two modules (tied weights) is one
latent with one mask. A tensor that already carries a ``torch.nn.utils.parametrize``
parametrization (weight_norm, spectral_norm, ...) is pruned on its effective weight; hardening
assigns the hardened weight through the parametrization's ``right_inverse``.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

try:  # the classes of sharded training (torch built without distributed support has neither)
    from torch.distributed.fsdp import FSDPModule as _FSDPModule
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover
    _DTensor = _FSDPModule = None

SPECS_ATTR = "_smoothprune"  # module.__dict__ entry: {tensor name: spec}
_CLASSES: dict[tuple[type, frozenset], type] = {}

__all__ = ["attach_", "detach_", "specs_of", "is_pruned", "base_class", "latent", "raw_tensors", "hardened_raw"]


def specs_of(module: torch.nn.Module) -> dict:
    """``{tensor name: spec}`` of a pruned module (empty for any other module)."""
    return module.__dict__.get(SPECS_ATTR) or {}


def is_pruned(module: torch.nn.Module, name: str | None = None) -> bool:
    specs = specs_of(module)
    return bool(specs) if name is None else name in specs


def _pruned_ancestor(cls: type) -> type | None:
    """The pruned class in ``cls``'s MRO: ``cls`` itself, or the class that a wrapper made at run
    time (FSDP2's ``FSDP<Name>``) derives from."""
    return next((c for c in cls.__mro__ if "_smoothprune_base" in c.__dict__), None)


def base_class(module: torch.nn.Module) -> type:
    """The module's class before pruning."""
    pruned = _pruned_ancestor(type(module))
    return type(module) if pruned is None else pruned.__dict__["_smoothprune_base"]


_WRAPPERS: dict[tuple[type, type], type] = {}


def _set_class(module: torch.nn.Module, new: type) -> None:
    """Gives ``module`` the (pruned or base) class ``new`` in place of its pruned or base class;
    a class that a wrapper derived from it at run time (FSDP2's ``FSDP<Name>(FSDPModule, cls)``)
    is derived again, alike, from ``new``."""
    cls = type(module)
    inner = _pruned_ancestor(cls) or base_class(module)
    if cls is inner:
        module.__class__ = new
        return
    key = (cls, new)
    if key not in _WRAPPERS:
        bases = tuple(new if b is inner else b for b in cls.__bases__)
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        _WRAPPERS[key] = type(cls.__name__, bases, namespace)
    module.__class__ = _WRAPPERS[key]


def _foreign_parametrized(module: torch.nn.Module, name: str) -> bool:
    return parametrize.is_parametrized(module, name)


def latent(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The latent weight ``W'`` of a pruned (or prunable) tensor: the Parameter itself, or the
    effective weight of a tensor parametrized by ``torch.nn.utils.parametrize``."""
    if name in module._parameters:
        return module._parameters[name]
    if name in module._buffers:
        return module._buffers[name]
    if _foreign_parametrized(module, name):
        return getattr(base_class(module), name).__get__(module)
    raise AttributeError(f"{type(module).__name__} has no tensor {name!r}")


def raw_tensors(module: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The stored tensors behind ``name``, by their state_dict key relative to ``module``: the
    tensor itself, or the ``parametrizations.NAME.original*`` tensors of a parametrized one."""
    if name in module._parameters or name in module._buffers:
        return {name: latent(module, name)}
    plist = module.parametrizations[name]
    if hasattr(plist, "original"):
        return {f"parametrizations.{name}.original": plist.original}
    return {f"parametrizations.{name}.original{i}": getattr(plist, f"original{i}") for i in range(plist.ntensors)}


def hardened_raw(module: torch.nn.Module, name: str, hard: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored tensors that make ``name`` equal ``hard`` (through ``right_inverse`` for a
    parametrized tensor), without changing the module."""
    if name in module._parameters or name in module._buffers:
        return {name: hard}
    plist = module.parametrizations[name]
    value = hard
    for p in reversed(list(plist)):
        value = p.right_inverse(value)
    values = [value] if isinstance(value, torch.Tensor) else list(value)
    return {key: v.to(dtype=raw.dtype) for (key, raw), v in zip(raw_tensors(module, name).items(), values)}


# ------------------------------------------------------------------------------------------------
# the pruned classes
# ------------------------------------------------------------------------------------------------
def _fsdp_sharded_parameter(module: torch.nn.Module, tensor) -> bool:
    """Whether ``tensor`` is the sharded Parameter that FSDP2 (``fully_shard``) registered on
    ``module`` between forwards."""
    return _DTensor is not None and isinstance(tensor, _DTensor) and isinstance(module, _FSDPModule)


def _pruned_property(name: str) -> property:
    def get(self):
        spec = self._smoothprune[name]
        w = latent(self, name)
        if _fsdp_sharded_parameter(self, w):
            # FSDP2 finds its sharded Parameter under the module's attribute (it re-registers it
            # on lazy init); the pruned weight of a sharded module is what its forward,
            # state_dict() and smoothprune's functions read.
            return w
        return spec.weight(w, self.training)

    get.__name__ = name
    return property(get, doc=f"the pruned {name}: topk_mag of the latent Parameter (hardened in eval mode)")


def _state_dict(self, *args, destination=None, prefix="", keep_vars=False):
    """The base class's state_dict with every pruned tensor hardened at its current k."""
    out = self._smoothprune_base.state_dict(self, *args, destination=destination, prefix=prefix, keep_vars=keep_vars)
    for name, spec in self._smoothprune.items():
        with torch.no_grad():
            hard = spec.hard(latent(self, name).detach())
            for key, value in hardened_raw(self, name, hard).items():
                if prefix + key in out:
                    out[prefix + key] = value if keep_vars else value.detach()
    return out


def _apply(self, fn, recurse=True):
    out = self._smoothprune_base._apply(self, fn, recurse)
    for spec in self._smoothprune.values():
        spec.follow_device_(fn)
    return out


def _reduce_ex(self, protocol):
    # the pruned class is made at run time: rebuild it from the user's (importable) class
    return _new_pruned_module, (self._smoothprune_base, tuple(sorted(self._smoothprune))), self.__getstate__()


def _new_pruned_module(base: type, names: tuple) -> torch.nn.Module:
    cls = _pruned_class(base, frozenset(names))
    return cls.__new__(cls)


def _pruned_class(base: type, names: frozenset) -> type:
    key = (base, names)
    if key not in _CLASSES:
        namespace = {name: _pruned_property(name) for name in names}
        namespace |= {"_smoothprune_base": base, "state_dict": _state_dict, "_apply": _apply,
                      "__reduce_ex__": _reduce_ex, "__qualname__": base.__qualname__, "__module__": base.__module__,
                      "__doc__": base.__doc__}
        _CLASSES[key] = type(base.__name__, (base,), namespace)
    return _CLASSES[key]


def attach_(module: torch.nn.Module, name: str, spec) -> None:
    """Prunes ``module.name`` with ``spec`` (in place; the module keeps its Parameters)."""
    specs = dict(specs_of(module))
    specs[name] = spec
    module.__dict__[SPECS_ATTR] = specs
    _set_class(module, _pruned_class(base_class(module), frozenset(specs)))


def detach_(module: torch.nn.Module, name: str) -> None:
    """Stops pruning ``module.name``: the module reads its own tensor again."""
    specs = dict(specs_of(module))
    specs.pop(name, None)
    base = base_class(module)
    if specs:
        module.__dict__[SPECS_ATTR] = specs
        _set_class(module, _pruned_class(base, frozenset(specs)))
    else:
        module.__dict__.pop(SPECS_ATTR, None)
        _set_class(module, base)
