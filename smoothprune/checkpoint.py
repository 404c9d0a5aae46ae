"""Lightning checkpoints of pruning runs: the layout smoothprune writes, the layout of
smoothprune <= 0.1, and reading a checkpoint without running any code from it.

What a checkpoint of a pruning run holds (written by the `SmoothPruning` callback):

* ``state_dict``: the user's own keys, each pruned tensor hardened at the checkpoint's k (it
  loads with ``strict=True`` into the unpruned module);
* ``smoothprune``: ``{"format_version": 2, "target_sparsity", "sparsity" (the schedule's value
  when saved), "lam", "tensors": {name: {"shape", "k", "group", "scope", "method"}},
  "latents": {state_dict key: latent W'}, "averaged_latents": {callback key: {...}}}``, what a
  resumed run needs to continue exactly.

smoothprune <= 0.1 saved pruned tensors as ``X.parametrizations.W.original`` (the latent) beside
the spec's buffers ``X.parametrizations.W.0.{k,group,sparsity,lam,shared}``;
`legacy_load_hook` maps those keys onto the plain ones while a checkpoint is loaded.
"""

from __future__ import annotations

import collections
import pickle
import re

import torch

from smoothprune.nn.parametrizations import hard_topk_groups
from smoothprune.pruning import global_allocation

FORMAT_VERSION = 2
_LEGACY_ORIGINAL = re.compile(r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.original$")
LEGACY_BUFFERS = ("k", "group", "shared", "sparsity")

__all__ = ["FORMAT_VERSION", "legacy_load_hook", "hardened_state_dict", "legacy_sparsity", "read_checkpoint", "Unread"]


def _legacy_entries(state_dict) -> dict[str, tuple[str, str]]:
    """``{legacy original key: (plain key, prefix of its spec buffers)}`` of the smoothprune <= 0.1
    tensors of a state_dict."""
    found = {}
    for key in state_dict:
        match = _LEGACY_ORIGINAL.match(key)
        if match is not None:
            base = f"{match.group('prefix')}parametrizations.{match.group('name')}.0."
            if all(base + b in state_dict for b in LEGACY_BUFFERS):
                found[key] = (f"{match.group('prefix')}{match.group('name')}", base)
    return found


def legacy_load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """A load_state_dict pre-hook: a smoothprune <= 0.1 latent ``X.parametrizations.W.original``
    loads into ``X.W`` (the Parameter that holds the latent now); the old spec buffers are
    dropped (the callback's state and the weights determine k again)."""
    for old, (new, base) in _legacy_entries(state_dict).items():
        state_dict[new] = state_dict.pop(old)
        for key in [k for k in state_dict if k.startswith(base)]:
            del state_dict[key]


def hardened_state_dict(state_dict: dict) -> dict:
    """Hardens the smoothprune <= 0.1 tensors of a state_dict (any other entry passes unchanged).

    ``X.parametrizations.W.original`` becomes ``X.W`` holding the exactly-k hard top-k per
    group, as `smoothprune.harden_` would leave it: global-scope tensors (``shared``) are
    re-allocated from the saved weights first; the old spec buffers are dropped. Entries of other
    parametrizations (weight_norm's ``parametrizations.W.original0``, ...) are kept. (A model
    pruned by this version already saves plain, hardened state_dicts.)
    """
    legacy = _legacy_entries(state_dict)
    if not legacy:
        return dict(state_dict)
    base = {old: prefix for old, (_, prefix) in legacy.items()}
    ks = {old: int(state_dict[base[old] + "k"]) for old in legacy}
    shared = [old for old in legacy if int(state_dict[base[old] + "shared"])]
    if shared:
        sparsity = float(state_dict[base[shared[0]] + "sparsity"])
        ks |= dict(zip(shared, global_allocation([state_dict[old] for old in shared], sparsity)))
    buffers = {key for key in state_dict for b in base.values() if key.startswith(b)}
    out = {}
    for key, value in state_dict.items():  # keeps the state_dict's order
        if key in legacy:
            out[legacy[key][0]] = hard_topk_groups(value.detach(), int(state_dict[base[key] + "group"]), ks[key])
        elif key not in buffers:
            out[key] = value
    return out


def legacy_sparsity(state_dict: dict) -> dict[str, float]:
    """The schedule's sparsity recorded beside each smoothprune <= 0.1 tensor, by plain key."""
    return {new: float(state_dict[base + "sparsity"]) for new, base in _legacy_entries(state_dict).values()}


# ------------------------------------------------------------------------------------------------
# reading a checkpoint without running its code
# ------------------------------------------------------------------------------------------------
class Unread:
    """Stands in for an object of a checkpoint that was not loaded (anything but tensors and
    plain containers): it records the name of the class or function and nothing runs."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<unread {self.name}>"


def _stand_in(name: str, seen: set) -> type:
    """Stands for the global ``name``: calling it or building an object of it gives an inert
    `Unread`, and nothing of ``name`` is imported or run."""
    seen.add(name)

    class StandIn:
        def __new__(cls, *args, **kwargs):
            return _Inert(name)

    StandIn.__qualname__ = StandIn.__name__ = name
    return StandIn


class _Inert(Unread):
    """An `Unread` that accepts whatever pickle does to an object it built."""

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __setitem__(self, key, value):
        pass


# the globals a torch checkpoint of tensors and plain containers needs; everything else is inert
_SAFE = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
_SAFE |= {("torch", str(d).removeprefix("torch.")): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128)}
if hasattr(torch._tensor, "_rebuild_from_type_v2"):
    _SAFE[("torch._tensor", "_rebuild_from_type_v2")] = torch._tensor._rebuild_from_type_v2


def _pickle_module(seen: set):
    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            module = "builtins" if module == "__builtin__" else module  # (protocol 2 names)
            if (module, name) in _SAFE:
                return _SAFE[(module, name)]
            return _stand_in(f"{module}.{name}", seen)

    class Module:
        pass

    mod = Module()
    mod.Unpickler = Unpickler
    mod.load = pickle.load
    mod.__name__ = "smoothprune_safe_pickle"
    return mod


def read_checkpoint(path) -> tuple[dict, list[str]]:
    """Loads a torch / Lightning checkpoint file without running any code from it.

    Tensors and plain containers load as they are; every other object (a ``functools.partial``
    or a class in ``hyper_parameters``, a pickled module, an OmegaConf container, a dataclass)
    becomes an inert `Unread` placeholder, and nothing of it is imported or called.

    Returns:
        (the checkpoint, the sorted names of the classes and functions that were not read).
    """
    seen: set = set()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(seen))
    return checkpoint, sorted(seen)
