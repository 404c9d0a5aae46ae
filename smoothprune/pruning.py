"""Model-level pruning: choose tensors, re-parametrize them, update them, harden them, report.

    sp.prune_(model, 0.9, lam=1e-4)   # W = soft_topk_mag(W') on every Linear/Conv weight
    ...train...
    sp.harden_(model)                 # plain Parameters holding exactly-k hard top-k weights
    print(sp.sparsity_report(model))

Scopes (what "keep k" is applied to):
  "layer"  each tensor keeps round((1 - s) * numel) entries (the paper's setting);
  "row"    each output row (first dim) keeps round((1 - s) * row_size) entries;
  "N:M"    each group of M consecutive entries of a row keeps N ("nm" means "2:4");
  "global" one magnitude top-k across all targeted tensors decides how many entries each tensor
           keeps (exactly round((1 - s) * total) in all); each tensor then applies the operator
           with its share. The allocation is recomputed from the current weights by
           `refresh_global_` (the Lightning callback does it at every pruning update) and by
           `harden_`, so the hardened model is exactly the global magnitude top-k;
  "block:RxC"  2-D weights: the top-k runs over the norms of their R×C tiles, each tile scaled
           by its kept factor; round((1 - s) * tiles) whole tiles are kept.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils import parametrize

from smoothprune.nn.parametrizations import METHODS, PARAMETRIZATIONS, TopKMagParametrization
from smoothprune.nn.pruned import attach_, detach_, is_pruned, latent, specs_of
from smoothprune.ops.sharded import is_dtensor, sharded_allocation
from smoothprune.validation import (
    argument_error,
    check_algorithm,
    check_bool,
    check_choice,
    check_p,
    check_positive,
    check_sparsity,
    check_targets,
    compile_pattern,
    parse_scope,
)

__all__ = [
    "prune_", "harden_", "set_sparsity_", "set_lam_", "set_hard_training_", "sparsity_report",
    "SparsityReport", "TensorSparsity", "PRUNABLE_TYPES", "resolve_targets", "holders", "pruned_tensors",
    "global_allocation", "refresh_global_", "hardened_weight",
]

PRUNABLE_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def _tensor_names(module: torch.nn.Module) -> list[str]:
    """Names of a module's own tensors, those parametrized by torch.nn.utils.parametrize included."""
    names = [n for table in (module._parameters, module._buffers) for n, t in table.items() if t is not None]
    if parametrize.is_parametrized(module):
        names += [n for n in module.parametrizations.keys() if n not in names]
    return names


def _storage_key(module: torch.nn.Module, name: str):
    """What identifies the stored tensor behind ``module.name``: the same Parameter held by two
    modules (tied weights) has one key."""
    if parametrize.is_parametrized(module, name):
        return ("parametrized", id(module.parametrizations[name]))
    return ("tensor", id(latent(module, name)))


def _model_tensors(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """Every (qualified name, module, tensor name) of the model, in model order."""
    return [(f"{mod_name}.{name}" if mod_name else name, module, name)
            for mod_name, module in model.named_modules() for name in _tensor_names(module)]


def _by_storage(tensors) -> dict[tuple, list[tuple[str, torch.nn.Module, str]]]:
    """``tensors`` grouped by stored tensor (a tied tensor's group has several holders)."""
    groups: dict[tuple, list] = {}
    for c in tensors:
        groups.setdefault(_storage_key(c[1], c[2]), []).append(c)
    return groups


def resolve_targets(fn: str, model: torch.nn.Module, targets=None, exclude=None) -> list[tuple[str, torch.nn.Module, str]]:
    """Resolves targets to (qualified name, module, tensor name) triples, in model order.

    ``targets``: None (every Linear/Conv weight), or a list of ``(module, name)`` pairs,
    fully-qualified tensor names (``"encoder.0.weight"``) or ``"re:<regex>"`` patterns matched
    (``re.fullmatch``) against qualified tensor names. ``exclude`` takes the same forms except
    pairs and removes matches. A tensor shared by several modules (tied weights) is one target,
    named by its first holder in model order.
    """
    check_targets(fn, "targets", targets, pairs=True)
    check_targets(fn, "exclude", exclude, pairs=False)
    candidates = _model_tensors(model)  # (qualified, module, name) for every tensor in the model
    owner = {id(module): mod_name for mod_name, module in model.named_modules()}
    by_name = {q: (q, m, n) for q, m, n in candidates}

    if targets is None:
        chosen = [c for c in candidates if isinstance(c[1], PRUNABLE_TYPES) and c[2] == "weight"]
    else:
        if isinstance(targets, str) or (isinstance(targets, tuple) and len(targets) == 2
                                        and isinstance(targets[0], torch.nn.Module)):
            targets = [targets]  # one name, pattern or pair
        chosen = []
        for t in targets:  # (of the types check_targets lets through)
            if isinstance(t, tuple):
                module, name = t
                if id(module) not in owner or name not in _tensor_names(module):
                    raise ValueError(f"{fn}: expected targets to name tensors of this model, got ({type(module).__name__}, {name!r})")
                mod_name = owner[id(module)]
                chosen.append(by_name[f"{mod_name}.{name}" if mod_name else name])
            elif isinstance(t, str) and t.startswith("re:"):
                pattern = compile_pattern(fn, "targets", t)
                matches = [c for c in candidates if pattern.fullmatch(c[0])]
                if not matches:
                    raise ValueError(f"{fn}: expected the pattern {t!r} to match a tensor of the model, it matches none")
                chosen += matches
            else:
                if t not in by_name:
                    raise ValueError(f"{fn}: expected a tensor name of the model in targets, got {t!r}")
                chosen.append(by_name[t])
    excluded = set()
    if exclude is not None:
        for e in [exclude] if isinstance(exclude, str) else exclude:
            drop = compile_pattern(fn, "exclude", e).fullmatch if e.startswith("re:") else e.__eq__
            excluded |= {c[0] for c in candidates if drop(c[0])}
    chosen = [c for c in chosen if c[0] not in excluded]
    # one target per stored tensor; a tied tensor cannot be both pruned and excluded
    aliases = {key: [q for q, _, _ in group] for key, group in _by_storage(candidates).items()}
    seen, unique = set(), []
    for c in chosen:
        key = _storage_key(c[1], c[2])
        if key in seen:
            continue
        seen.add(key)
        clash = [q for q in aliases[key] if q in excluded]
        if clash:
            raise ValueError(f"{fn}: {c[0]!r} and {clash[0]!r} are one tied tensor; prune both or neither "
                             f"(exclude both names, or neither)")
        unique.append(c)
    for qualified, module, name in unique:
        tensor = getattr(module, name)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() < 1:
            raise ValueError(f"{fn}: expected floating tensors with at least 1 dim as targets, got {qualified!r}")
    return unique


def holders(model: torch.nn.Module) -> dict[int, list[tuple[str, torch.nn.Module, str]]]:
    """Every (qualified name, module, tensor name) that reads a pruned tensor, by id of its spec
    (several for a tied tensor), in model order."""
    found: dict[int, list] = {}
    for mod_name, module in model.named_modules():
        for name, spec in specs_of(module).items():
            found.setdefault(id(spec), []).append((f"{mod_name}.{name}" if mod_name else name, module, name))
    return found


def pruned_tensors(model: torch.nn.Module) -> list[tuple[str, TopKMagParametrization, torch.nn.Module, str]]:
    """Every tensor pruned by smoothprune, once (a tied tensor under its first holder's name):
    (qualified name, spec, module, tensor name)."""
    out, seen = [], set()
    for mod_name, module in model.named_modules():
        for name, spec in specs_of(module).items():
            if id(spec) not in seen:
                seen.add(id(spec))
                out.append((f"{mod_name}.{name}" if mod_name else name, spec, module, name))
    return out


# ------------------------------------------------------------------------------------------------
# prune_, updates, harden_
# ------------------------------------------------------------------------------------------------
def prune_(model: torch.nn.Module, sparsity=None, *, lam: float = 1e-4, p: float = 2.0, method: str = "smooth",
           targets=None, exclude=None, scope="layer", algorithm: str = "auto", num_iter=None,
           debias: bool = True, relative_lam: bool = False) -> list[str]:
    """Prunes the chosen weights of ``model`` in place: the module reads ``W = topk_mag(W')``.

    The model stays the user's: each pruned tensor keeps its own Parameter, which holds the
    latent ``W'`` that the optimizer trains (an optimizer built before ``prune_`` stays valid),
    under its own name; ``module.weight`` returns the pruned weight (the hardened one in eval
    mode); ``model.state_dict()`` holds the hardened weights under the usual keys, so it loads
    into the unpruned model; the model pickles and deep-copies. A Parameter shared by several
    modules (tied weights) is pruned once, with one mask, for all of them. A tensor carrying a
    ``torch.nn.utils.parametrize`` parametrization (weight_norm, ...) is pruned on its effective
    weight.

    Args:
        model: any ``nn.Module``.
        sparsity: fraction of entries to prune in ``[0, 1]`` (for an ``"N:M"`` scope it defaults
            to, and must equal, ``1 - N/M``).
        lam: regularization strength of the smooth operator (a small ``lam`` keeps ``W``
            close to the hard top-k).
        p: regularization exponent ``> 1`` (2 or 4/3 in the paper).
        method: ``"smooth"``, ``"hard"`` or ``"ste"`` (hard forward, smooth backward).
        targets: which tensors (see :func:`resolve_targets`); default every Linear/Conv weight.
        exclude: names or ``"re:"`` patterns to leave out.
        scope: ``"layer"``, ``"global"``, ``"row"``, ``"nm"`` (2:4), ``"N:M"``, or ``"block:RxC"``
            (2-D weights: the smooth top-k in magnitude over the norms of their R×C tiles, each
            tile scaled by its kept factor; hardened, whole tiles are zero; ``sparsity`` is then
            the fraction of tiles pruned).
        algorithm, num_iter, debias: passed to :func:`smoothprune.soft_topk_mag`.
        relative_lam: for ``p != 2``, scale lam by ``rms(W')^(2 - p)`` per tensor, so that it
            means the same at every weight scale (for ``p = 2`` lam is relative already).

    Returns:
        The qualified names of the pruned tensors.

    Raises:
        ValueError: on a bad argument, a target that does not exist or is already pruned, a
            tensor whose shape does not fit the scope, or a parametrized tensor whose
            parametrization has no ``right_inverse`` (its hardened weight could not be stored).

    Example:
        >>> import torch, smoothprune as sp
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> sp.prune_(model, 0.5, lam=1e-3)
        ['0.weight', '2.weight']
        >>> _ = sp.harden_(model); float(sp.sparsity_report(model).total)
        0.5
    """
    fn = "prune_"
    # every argument first (none needs the model), then what depends on the model
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{fn}: expected model to be an nn.Module, got {type(model).__name__}")
    scope, n_keep, m_group = parse_scope(fn, scope)
    if scope == "nm":
        nm_sparsity = 1.0 - n_keep / m_group
        if sparsity is None:
            sparsity = nm_sparsity
        elif abs(check_sparsity(fn, sparsity) - nm_sparsity) > 1e-12:
            raise argument_error(fn, "sparsity", f"{nm_sparsity:g} (or None) for scope '{n_keep}:{m_group}'", sparsity)
    sparsity = check_sparsity(fn, sparsity)
    lam = check_positive(fn, "lam", lam)
    p = check_p(fn, p)
    method = check_choice(fn, "method", method, METHODS)
    check_algorithm(fn, algorithm, p, num_iter)  # (the name, num_iter, p vs Dykstra)
    debias = check_bool(fn, "debias", debias)
    relative_lam = check_bool(fn, "relative_lam", relative_lam)
    check_targets(fn, "targets", targets, pairs=True, nonempty=True)
    check_targets(fn, "exclude", exclude, pairs=False)

    chosen = resolve_targets(fn, model, targets, exclude)
    if not chosen:
        raise ValueError(f"{fn}: expected at least one tensor to prune, the targets matched none")
    for qualified, module, name in chosen:
        if is_pruned(module, name):
            raise ValueError(f"{fn}: expected unpruned targets, {qualified!r} is already pruned (call harden_ first)")
        if parametrize.is_parametrized(module, name):
            missing = [type(q).__name__ for q in module.parametrizations[name] if not hasattr(q, "right_inverse")]
            if missing:
                raise ValueError(f"{fn}: {qualified!r} carries the parametrization {missing[0]} without right_inverse, "
                                 f"so its hardened weight could not be stored; exclude it or remove the parametrization")
    groups = [_group_size(fn, qualified, tuple(getattr(module, name).shape), scope, n_keep, m_group)
              for qualified, module, name in chosen]  # every check before any change to the model
    label = f"{n_keep}:{m_group}" if scope == "nm" else f"block:{n_keep}x{m_group}" if scope == "block" else scope
    block = (n_keep, m_group) if scope == "block" else None
    tied = _by_storage(_model_tensors(model))
    for (_, module, name), group in zip(chosen, groups):
        tensor = latent(module, name)
        spec = PARAMETRIZATIONS[method](tensor.shape, group, sparsity, lam, p, label,
                                        algorithm=algorithm, num_iter=num_iter, debias=debias,
                                        relative_lam=relative_lam, block=block).to(tensor.device)
        for _, holder, holder_name in tied[_storage_key(module, name)]:
            attach_(holder, holder_name, spec)
    if scope == "global":
        refresh_global_(model)
    return [q for q, _, _ in chosen]


def _group_size(fn, qualified, shape, scope, n_keep, m_group) -> int:
    numel = int(torch.Size(shape).numel())
    row = numel // shape[0] if shape[0] else 0
    if scope == "row":
        return max(row, 1)
    if scope == "nm":
        if row % m_group:
            raise ValueError(f"{fn}: expected rows whose size is a multiple of M={m_group} for scope "
                             f"'{n_keep}:{m_group}', got {qualified!r} of shape {shape}")
        return m_group
    if scope == "block":  # n_keep x m_group tiles
        if len(shape) != 2 or shape[0] % n_keep or shape[1] % m_group:
            raise ValueError(f"{fn}: expected 2-D tensors whose dims are multiples of the block for scope "
                             f"'block:{n_keep}x{m_group}', got {qualified!r} of shape {shape}")
        return max((shape[0] // n_keep) * (shape[1] // m_group), 1)
    return max(numel, 1)


@torch.no_grad()
def global_allocation(tensors: list[torch.Tensor], sparsity: float) -> list[int]:
    """How many of the ``round((1 - sparsity) * total)`` globally largest magnitudes each tensor
    holds (ties broken by ``torch.topk``). Deterministic: every DDP rank, holding the same
    weights, computes the same allocation."""
    sizes = [t.numel() for t in tensors]
    keep = int(round((1.0 - float(sparsity)) * sum(sizes)))
    if keep == 0:
        return [0] * len(tensors)
    if any(is_dtensor(t) for t in tensors):
        return sharded_allocation(tensors, keep)
    flat = torch.cat([t.detach().abs().reshape(-1).float() for t in tensors])
    top = flat.topk(keep, sorted=False).indices
    bounds = torch.tensor(sizes, device=flat.device).cumsum(0)
    return torch.bincount(torch.bucketize(top, bounds, right=True), minlength=len(tensors)).tolist()


def refresh_global_(model: torch.nn.Module) -> None:
    """Re-allocates the global-scope budget from the current weights: every global-scope tensor
    shares one target sparsity, and each tensor's ``k`` becomes its share of the global
    magnitude top-k (`global_allocation`)."""
    members = [(spec, latent(m, n)) for _, spec, m, n in pruned_tensors(model) if spec.scope == "global"]
    if not members:
        return
    counts = global_allocation([w for _, w in members], float(members[0][0].sparsity))
    for (spec, _), k in zip(members, counts):
        spec.set_k(k)  # spec.sparsity stays the shared target; this tensor's own share is 1 - k/numel


def set_sparsity_(model: torch.nn.Module, sparsity: float) -> None:
    """Sets the target sparsity of every pruned tensor in place (global scope re-allocates).

    N:M tensors take ``k = round((1 - s) * M)``, so a schedule can ramp them to N:M."""
    sparsity = check_sparsity("set_sparsity_", sparsity)
    for _, spec, _, _ in pruned_tensors(model):
        spec.set_sparsity(sparsity)
    refresh_global_(model)


def set_lam_(model: torch.nn.Module, lam: float) -> None:
    """Sets the regularization strength of every pruned tensor in place."""
    lam = check_positive("set_lam_", "lam", lam)
    for _, spec, _, _ in pruned_tensors(model):
        spec.set_lam(lam)


def set_hard_training_(model: torch.nn.Module, hard: bool) -> None:
    """Switches training of every pruned tensor to its hard top-k (``hard=True``: the forward is
    the hardened weight, the gradient flows to the kept entries) or back to its method."""
    check_bool("set_hard_training_", "hard", hard)
    for _, spec, _, _ in pruned_tensors(model):
        spec.train_hard = hard


@torch.no_grad()
def hardened_weight(spec: TopKMagParametrization, original: torch.Tensor) -> torch.Tensor:
    """The exactly-k hard top-k of ``original`` under ``spec``'s groups and k."""
    return spec.hard(original.detach())


def harden_(model: torch.nn.Module) -> list[str]:
    """Ends pruning, leaving exactly-k hard top-k weights in the model's own tensors.

    Each pruned Parameter (the *same* object that held ``W'``, so an optimizer built on the
    pruned model stays valid) now holds ``hard_topk_mag(W', k)`` per group, and its modules are
    plain again (their own class). Global scope is re-allocated from the final weights first,
    so the result is exactly the global magnitude top-k.

    Returns:
        The qualified names of the hardened tensors.

    Example:
        >>> import torch, smoothprune as sp
        >>> model = torch.nn.Linear(10, 3)
        >>> _ = sp.prune_(model, 0.8)
        >>> sp.harden_(model)
        ['weight']
        >>> int((model.weight != 0).sum())
        6
    """
    refresh_global_(model)
    readers = holders(model)
    names = []
    for qualified, spec, module, name in pruned_tensors(model):
        hard = hardened_weight(spec, latent(module, name))
        for _, holder, holder_name in readers[id(spec)]:
            detach_(holder, holder_name)
        with torch.no_grad():
            for _, holder, holder_name in readers[id(spec)]:
                if parametrize.is_parametrized(holder, holder_name):
                    setattr(holder, holder_name, hard)  # through right_inverse
                else:
                    latent(holder, holder_name).copy_(hard)  # (a tied tensor: the same one again)
        names.append(qualified)
    return names


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TensorSparsity:
    name: str
    shape: tuple
    numel: int
    zeros: int          # exact zeros of the tensor the model uses now
    hard_zeros: int     # exact zeros after hardening (= zeros for an unpruned tensor)
    target: float | None  # the target sparsity of a pruned tensor
    scope: str | None
    method: str | None
    diff_sq: float = 0.0  # ||W - hard(W')||^2 of a pruned tensor (0 for an unpruned one)
    hard_sq: float = 0.0  # ||hard(W')||^2

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def hard_sparsity(self) -> float:
        return self.hard_zeros / self.numel if self.numel else 0.0


@dataclasses.dataclass
class SparsityReport:
    tensors: list[TensorSparsity]

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def total(self) -> float:
        """Fraction of exact zeros, over every reported tensor, in the weights used now."""
        return sum(t.zeros for t in self.tensors) / max(self.numel, 1)

    @property
    def hard_total(self) -> float:
        """The same after hardening."""
        return sum(t.hard_zeros for t in self.tensors) / max(self.numel, 1)

    @property
    def distance(self) -> float:
        """How far the weights used now are from their hardened version: ||W - hard|| / ||hard||."""
        return (sum(t.diff_sq for t in self.tensors) / max(sum(t.hard_sq for t in self.tensors), 1e-30)) ** 0.5

    def as_dict(self) -> dict[str, float]:
        return {t.name: t.sparsity for t in self.tensors} | {"total": self.total}

    def __str__(self) -> str:
        rows = [("tensor", "shape", "numel", "sparsity", "hardened", "target", "scope", "method")]
        for t in self.tensors:
            rows.append((t.name, "×".join(map(str, t.shape)), str(t.numel), f"{t.sparsity:.4f}",
                         f"{t.hard_sparsity:.4f}", "-" if t.target is None else f"{t.target:.4f}",
                         t.scope or "-", t.method or "-"))
        rows.append(("total", "", str(self.numel), f"{self.total:.4f}", f"{self.hard_total:.4f}", "", "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _total(t: torch.Tensor) -> torch.Tensor:
    """The sum of all entries, of a sharded tensor (DTensor) too."""
    total = t.sum()
    return total.full_tensor() if is_dtensor(total) else total


@torch.no_grad()
def sparsity_report(model: torch.nn.Module, targets=None) -> SparsityReport:
    """Per-tensor and total sparsity of the pruned tensors (or, in a model with none, of
    ``targets``: by default every Linear/Conv weight). For a pruned tensor, ``sparsity`` is that
    of the weight training uses (the smooth one for method "smooth") and ``hard_sparsity`` that
    of the hardened weight (what checkpoints and eval mode hold).

    Example:
        >>> import torch, smoothprune as sp
        >>> model = torch.nn.Linear(10, 3)
        >>> _ = sp.prune_(model, 0.8, lam=1e-3)
        >>> report = sp.sparsity_report(model)
        >>> report.hard_total
        0.8
    """
    rows = []
    pruned = pruned_tensors(model)
    if pruned:
        for qualified, p, module, name in pruned:
            original = latent(module, name)
            current = p(original)  # the weight training uses (in eval mode the module reads `hard`)
            hard = hardened_weight(p, original)
            rows.append(TensorSparsity(qualified, tuple(current.shape), current.numel(), int(_total(current == 0)),
                                       int(_total(hard == 0)), float(p.sparsity), p.scope, p.method,
                                       float(_total((current.float() - hard.float()).square())),
                                       float(_total(hard.float().square()))))
    else:
        for qualified, module, name in resolve_targets("sparsity_report", model, targets):
            t = getattr(module, name)
            zeros = int(_total(t == 0))
            rows.append(TensorSparsity(qualified, tuple(t.shape), t.numel(), zeros, zeros, None, None, None))
    return SparsityReport(rows)
