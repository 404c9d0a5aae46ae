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
           `harden_`, so the hardened model is exactly the global magnitude top-k.
"""

from __future__ import annotations

import dataclasses
import numbers
import re

import torch
from torch.nn.utils import parametrize

from smoothprune.nn.parametrizations import METHODS, PARAMETRIZATIONS, TopKMagParametrization
from smoothprune.ops._checks import ALGORITHMS, check_algorithm, check_positive

SCOPES = ("layer", "global", "row", "nm")
PRUNABLE_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def parse_scope(fn: str, scope) -> tuple[str, int | None, int | None]:
    """Returns (scope, N, M); "nm" is "2:4"."""
    if scope == "nm":
        return "nm", 2, 4
    if isinstance(scope, str):
        match = re.fullmatch(r"(\d+):(\d+)", scope)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if 0 < n <= m:
                return "nm", n, m
        elif scope in SCOPES:
            return scope, None, None
    raise ValueError(f"{fn}: expected scope in {SCOPES} or an 'N:M' string with 0 < N <= M, got {scope!r}")


def check_sparsity(fn: str, sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"{fn}: expected sparsity to be a float in [0, 1], got {sparsity!r}")
    return float(sparsity)


def check_algorithm_name(fn: str, algorithm) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{fn}: expected algorithm in {ALGORITHMS}, got {algorithm!r}")


def check_method(fn: str, method) -> str:
    if method not in METHODS:
        raise ValueError(f"{fn}: expected method in {METHODS}, got {method!r}")
    return method


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def _is_pruned(module: torch.nn.Module, name: str) -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, TopKMagParametrization) for p in module.parametrizations[name]
    )


def _tensor_names(module: torch.nn.Module) -> list[str]:
    """Names of a module's own tensors, parametrized ones included."""
    names = list(dict(module.named_parameters(recurse=False)))
    names += list(dict(module.named_buffers(recurse=False)))
    if parametrize.is_parametrized(module):
        names += list(module.parametrizations.keys())
    return names


def resolve_targets(fn: str, model: torch.nn.Module, targets=None, exclude=None) -> list[tuple[str, torch.nn.Module, str]]:
    """Resolves targets to (qualified name, module, tensor name) triples, in model order.

    ``targets``: None (every Linear/Conv weight), or a list of ``(module, name)`` pairs,
    fully-qualified tensor names (``"encoder.0.weight"``) or ``"re:<regex>"`` patterns matched
    (``re.fullmatch``) against qualified tensor names. ``exclude`` takes the same forms except
    pairs and removes matches.
    """
    candidates = []  # (qualified, module, name) for every tensor in the model
    owner = {}
    for mod_name, module in model.named_modules():
        owner[id(module)] = mod_name
        for name in _tensor_names(module):
            qualified = f"{mod_name}.{name}" if mod_name else name
            candidates.append((qualified, module, name))
    by_name = {q: (q, m, n) for q, m, n in candidates}

    if targets is None:
        chosen = [c for c in candidates if isinstance(c[1], PRUNABLE_TYPES) and c[2] == "weight"]
    else:
        if isinstance(targets, (str, tuple)):
            targets = [targets]
        chosen = []
        for t in targets:
            if isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], torch.nn.Module):
                module, name = t
                if id(module) not in owner or name not in _tensor_names(module):
                    raise ValueError(f"{fn}: expected targets to name tensors of this model, got ({type(module).__name__}, {name!r})")
                mod_name = owner[id(module)]
                chosen.append(by_name[f"{mod_name}.{name}" if mod_name else name])
            elif isinstance(t, str) and t.startswith("re:"):
                pattern = re.compile(t[3:])
                matches = [c for c in candidates if pattern.fullmatch(c[0])]
                if not matches:
                    raise ValueError(f"{fn}: expected the pattern {t!r} to match a tensor of the model, it matches none")
                chosen += matches
            elif isinstance(t, str):
                if t not in by_name:
                    raise ValueError(f"{fn}: expected a tensor name of the model in targets, got {t!r}")
                chosen.append(by_name[t])
            else:
                raise ValueError(f"{fn}: expected targets as (module, name) pairs, names or 're:<regex>' strings, got {t!r}")
    if exclude is not None:
        for e in [exclude] if isinstance(exclude, str) else exclude:
            if not isinstance(e, str):
                raise ValueError(f"{fn}: expected exclude as names or 're:<regex>' strings, got {e!r}")
            drop = re.compile(e[3:]).fullmatch if e.startswith("re:") else e.__eq__
            chosen = [c for c in chosen if not drop(c[0])]
    seen, unique = set(), []
    for c in chosen:
        if c[0] not in seen:
            seen.add(c[0])
            unique.append(c)
    for qualified, module, name in unique:
        tensor = getattr(module, name)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() < 1:
            raise ValueError(f"{fn}: expected floating tensors with at least 1 dim as targets, got {qualified!r}")
    return unique


def pruned_tensors(model: torch.nn.Module) -> list[tuple[str, TopKMagParametrization, torch.nn.Module, str]]:
    """Every tensor pruned by smoothprune: (qualified name, parametrization, module, tensor name)."""
    found = []
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, TopKMagParametrization):
                    found.append((f"{mod_name}.{name}" if mod_name else name, p, module, name))
    return found


# ------------------------------------------------------------------------------------------------
# prune_, updates, harden_
# ------------------------------------------------------------------------------------------------
def prune_(model: torch.nn.Module, sparsity=None, *, lam: float = 1e-4, p: float = 2.0, method: str = "smooth",
           targets=None, exclude=None, scope="layer", algorithm: str = "auto", num_iter=None,
           debias: bool = True) -> list[str]:
    """Re-parametrizes the chosen weights of ``model`` in place as ``W = topk_mag(W')``.

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
        scope: ``"layer"``, ``"global"``, ``"row"``, ``"nm"`` (2:4) or ``"N:M"``.
        algorithm, num_iter, debias: passed to :func:`smoothprune.soft_topk_mag`.

    Returns:
        The qualified names of the pruned tensors.

    Raises:
        ValueError: on a bad argument, a target that does not exist or is already pruned, or a
            tensor whose shape does not fit the scope.

    Example:
        >>> import torch, smoothprune as sp
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> sp.prune_(model, 0.5, lam=1e-3)
        ['0.weight', '2.weight']
        >>> _ = sp.harden_(model); float(sp.sparsity_report(model).total)
        0.5
    """
    fn = "prune_"
    scope, n_keep, m_group = parse_scope(fn, scope)
    if scope == "nm":
        nm_sparsity = 1.0 - n_keep / m_group
        if sparsity is None:
            sparsity = nm_sparsity
        elif abs(check_sparsity(fn, sparsity) - nm_sparsity) > 1e-12:
            raise ValueError(f"{fn}: expected sparsity {nm_sparsity:g} (or None) for scope "
                             f"'{n_keep}:{m_group}', got sparsity={sparsity!r}")
    if sparsity is None:
        raise ValueError(f"{fn}: expected sparsity to be a float in [0, 1], got None")
    sparsity = check_sparsity(fn, sparsity)
    lam = check_positive(fn, "lam", lam)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 1 < p < float("inf"):
        raise ValueError(f"{fn}: expected p to be a finite float > 1, got {p!r}")
    method = check_method(fn, method)
    check_algorithm(fn, algorithm, p, num_iter, torch.device("cpu"))  # (the name, num_iter, p vs Dykstra)

    chosen = resolve_targets(fn, model, targets, exclude)
    if not chosen:
        raise ValueError(f"{fn}: expected at least one tensor to prune, the targets matched none")
    for qualified, module, name in chosen:
        if _is_pruned(module, name):
            raise ValueError(f"{fn}: expected unpruned targets, {qualified!r} is already pruned (call harden_ first)")
    groups = [_group_size(fn, qualified, tuple(getattr(module, name).shape), scope, n_keep, m_group)
              for qualified, module, name in chosen]  # every check before any change to the model
    label = f"{n_keep}:{m_group}" if scope == "nm" else scope
    for (_, module, name), group in zip(chosen, groups):
        tensor = getattr(module, name)
        parametrization = PARAMETRIZATIONS[method](
            tensor.shape, group, sparsity, lam, p, label,
            algorithm=algorithm, num_iter=num_iter, debias=debias,
        )
        if tensor.device.type in ("cpu", "cuda"):
            parametrize.register_parametrization(module, name, parametrization.to(tensor.device))
        else:
            _register_off_device(module, name, tensor, parametrization)
    if scope == "global":
        refresh_global_(model)
    return [q for q, _, _ in chosen]


def _register_off_device(module, name, tensor, parametrization) -> None:
    """Registers on a CPU copy, then moves to ``tensor``'s device (XLA).

    `register_parametrization` calls ``original.set_(original)``; on an XLA (functional) tensor
    that freezes its storage, and every later in-place update (the optimizer step) fails with
    "cannot mutate tensors with frozen storage". Moving an already parametrized module is fine.
    The original becomes a new Parameter: build the optimizer after `prune_` (as Lightning does).
    """
    host = tensor.detach().cpu()
    if isinstance(tensor, torch.nn.Parameter):
        setattr(module, name, torch.nn.Parameter(host, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, host)  # a buffer
    parametrize.register_parametrization(module, name, parametrization)
    module.parametrizations[name].to(tensor.device)


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
    flat = torch.cat([t.detach().abs().reshape(-1).float() for t in tensors])
    top = flat.topk(keep, sorted=False).indices
    bounds = torch.tensor(sizes, device=flat.device).cumsum(0)
    return torch.bincount(torch.bucketize(top, bounds, right=True), minlength=len(tensors)).tolist()


def refresh_global_(model: torch.nn.Module) -> None:
    """Re-allocates the global-scope budget from the current weights: every global-scope tensor
    shares one target sparsity, and each tensor's ``k`` becomes its share of the global
    magnitude top-k (`global_allocation`)."""
    members = [(p, m.parametrizations[n].original) for _, p, m, n in pruned_tensors(model) if p.scope == "global"]
    if not members:
        return
    counts = global_allocation([w for _, w in members], float(members[0][0].sparsity))
    for (p, _), k in zip(members, counts):
        p.set_k(k)  # p.sparsity stays the shared target; this tensor's own share is 1 - k/numel


def set_sparsity_(model: torch.nn.Module, sparsity: float) -> None:
    """Sets the target sparsity of every pruned tensor in place (global scope re-allocates).

    N:M tensors take ``k = round((1 - s) * M)``, so a schedule can ramp them to N:M."""
    sparsity = check_sparsity("set_sparsity_", sparsity)
    for _, p, _, _ in pruned_tensors(model):
        p.set_sparsity(sparsity)
    refresh_global_(model)


def set_lam_(model: torch.nn.Module, lam: float) -> None:
    """Sets the regularization strength of every pruned tensor in place."""
    lam = check_positive("set_lam_", "lam", lam)
    for _, p, _, _ in pruned_tensors(model):
        p.set_lam(lam)


@torch.no_grad()
def hardened_weight(parametrization: TopKMagParametrization, original: torch.Tensor) -> torch.Tensor:
    """The exactly-k hard top-k of ``original`` under ``parametrization``'s groups and k."""
    return parametrization.hard(original.detach())


def harden_(model: torch.nn.Module) -> list[str]:
    """Removes smoothprune's parametrizations, leaving exactly-k hard top-k weights.

    Each pruned tensor becomes a plain Parameter again: the *same* Parameter object that held
    ``W'`` (so an optimizer built on the parametrized model stays valid), now holding
    ``hard_topk_mag(W', k)`` per group. Global scope is re-allocated from the final weights
    first, so the result is exactly the global magnitude top-k.

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
    names = []
    for qualified, p, module, name in pruned_tensors(model):
        original = module.parametrizations[name].original
        hard = hardened_weight(p, original)
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        with torch.no_grad():
            original.copy_(hard)
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


@torch.no_grad()
def sparsity_report(model: torch.nn.Module, targets=None) -> SparsityReport:
    """Per-tensor and total sparsity of the pruned tensors (or, in a model with none, of
    ``targets``: by default every Linear/Conv weight).

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
            original = module.parametrizations[name].original
            current = getattr(module, name)
            hard = hardened_weight(p, original)
            rows.append(TensorSparsity(qualified, tuple(current.shape), current.numel(), int((current == 0).sum()),
                                       int((hard == 0).sum()), float(p.sparsity), p.scope, p.method,
                                       float((current.float() - hard.float()).square().sum()),
                                       float(hard.float().square().sum())))
    else:
        for qualified, module, name in resolve_targets("sparsity_report", model, targets):
            t = getattr(module, name)
            zeros = int((t == 0).sum())
            rows.append(TensorSparsity(qualified, tuple(t.shape), t.numel(), zeros, zeros, None, None, None))
    return SparsityReport(rows)
