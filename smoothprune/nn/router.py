"""Expert-choice routing (Zhou et al., 2022) with a pluggable, possibly smooth, top-k.

Each of ``E`` experts picks its ``C = ceil(S * capacity_factor / E)`` preferred tokens among
the ``S`` tokens of a group (one image's tokens here):

    gates = softmax(x @ W_gate, over experts)              [B, S, E]
    mask  = topk_mask(gates, C, over tokens)               [B, S, E]
    expert e processes the C tokens with the largest mask[:, :, e]; its output is added back
    to each token weighted by gates * mask.

With the hard top-k the mask is a 0/1 indicator and gradients reach the router only through
the gate values. With the sparse smooth top-k (`smoothprune.soft_topk_mask`) the mask itself
is differentiable, so the router also learns *which* tokens each expert takes. The smooth mask
sums to ``C`` but may have more than ``C`` nonzeros (entries split around the threshold): only
its ``C`` largest entries are dispatched, which keeps each expert's compute fixed.

`SparseMoE` is a drop-in replacement for a transformer MLP block (``[B, S, D] -> [B, S, D]``).
Tokens are dispatched by gather and combined by scatter-add; ``dispatch="einsum"`` computes the
same with one-hot dispatch tensors (the textbook formulation, O(S * E * C) memory), kept as a
reference that the tests compare against.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch

from smoothprune.ops.hard_topk import hard_topk_mask
from smoothprune.ops.soft_topk import soft_topk_mask
from smoothprune.validation import check_choice, check_dykstra_p, check_int, check_p, check_positive

__all__ = ["ExpertChoiceRouter", "SparseMoE", "Routing", "TOPKS", "DISPATCHES"]

TOPKS = ("hard", "dykstra", "pav")
DISPATCHES = ("gather", "einsum")


@dataclasses.dataclass
class Routing:
    """What a router decided for a batch of token groups.

    Attributes:
        gates: softmax router probabilities, ``[B, S, E]``.
        mask: the (hard or smooth) top-C mask over tokens, ``[B, S, E]``; sums to ``C`` over ``S``.
        index: the ``C`` tokens dispatched to each expert, ``[B, E, C]`` (int64).
        weight: the combine weight ``gates * mask`` of each dispatched token, ``[B, E, C]``.
    """

    gates: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.index.shape[-1]

    @torch.no_grad()
    def coverage(self) -> torch.Tensor:
        """Fraction of tokens dispatched to at least one expert (a 0-d tensor)."""
        batch, num_tokens, _ = self.gates.shape
        hit = torch.zeros(batch, num_tokens, dtype=torch.bool, device=self.index.device)
        hit.scatter_(1, self.index.reshape(batch, -1), True)
        return hit.float().mean()

    @torch.no_grad()
    def nnz_per_capacity(self) -> torch.Tensor:
        """Mean number of nonzeros of each expert's mask, divided by C (1 for the hard top-k)."""
        return (self.mask != 0).sum(dim=1).float().mean() / max(self.capacity, 1)


def _router_options(fn: str, dim, num_experts, capacity_factor, topk, lam, p, num_iter) -> tuple:
    """The router's arguments, checked and normalized (for `ExpertChoiceRouter` and, naming
    itself, `SparseMoE`)."""
    dim = check_int(fn, "dim", dim)
    num_experts = check_int(fn, "num_experts", num_experts)
    capacity_factor = check_positive(fn, "capacity_factor", capacity_factor)
    topk = check_choice(fn, "topk", topk, TOPKS)
    lam = check_positive(fn, "lam", lam)
    p = check_p(fn, p)
    if topk == "dykstra":
        check_dykstra_p(fn, p, what="topk='dykstra'")
    num_iter = check_int(fn, "num_iter", num_iter)
    return dim, num_experts, capacity_factor, topk, lam, p, num_iter


class ExpertChoiceRouter(torch.nn.Module):
    """Expert-choice router: each expert picks its top-``C`` tokens, by a hard or smooth top-k.

    Args:
        dim: token feature size ``D``.
        num_experts: number of experts ``E``.
        capacity_factor: ``c`` in ``C = ceil(S * c / E)`` (on average each token goes to ``c``
            experts); ``C`` is clipped to ``[1, S]``.
        topk: ``"hard"`` (`hard_topk_mask`), ``"dykstra"`` (smooth, p = 2 or 4/3, ``num_iter`` Dykstra
            iterations: the accelerator-friendly path) or ``"pav"`` (smooth, exact).
        lam: regularization strength of the smooth top-k (gates are probabilities in [0, 1]).
        p: regularization exponent of the smooth top-k (``"dykstra"`` needs p = 2 or 4/3).
        num_iter: Dykstra iterations.

    Raises:
        ValueError: on a bad argument, naming it.

    Example:
        >>> import torch
        >>> from smoothprune.nn import ExpertChoiceRouter
        >>> router = ExpertChoiceRouter(16, num_experts=4, topk="dykstra", lam=1e-2)
        >>> routing = router(torch.randn(2, 10, 16))
        >>> tuple(routing.index.shape)          # [B, E, C], C = ceil(10 * 1.0 / 4)
        (2, 4, 3)
    """

    def __init__(self, dim: int, num_experts: int, *, capacity_factor: float = 1.0, topk: str = "hard",
                 lam: float = 1e-2, p: float = 2.0, num_iter: int = 10):
        super().__init__()
        fn = "ExpertChoiceRouter"
        dim, self.num_experts, self.capacity_factor, self.topk, self.lam, self.p, self.num_iter = _router_options(
            fn, dim, num_experts, capacity_factor, topk, lam, p, num_iter)
        self.gate = torch.nn.Linear(dim, self.num_experts, bias=False)

    def capacity(self, num_tokens: int) -> int:
        """``C = ceil(S * capacity_factor / E)``, clipped to ``[1, S]``."""
        return max(1, min(num_tokens, math.ceil(num_tokens * self.capacity_factor / self.num_experts)))

    def select(self, gates: torch.Tensor, capacity: int) -> torch.Tensor:
        """The top-``capacity`` mask of ``gates`` over tokens (dim 1)."""
        if self.topk == "hard":
            return hard_topk_mask(gates, capacity, dim=1)
        algorithm = "dykstra" if self.topk == "dykstra" else "pav"
        return soft_topk_mask(gates, capacity, lam=self.lam, p=self.p, dim=1, algorithm=algorithm,
                              num_iter=self.num_iter if algorithm == "dykstra" else None)

    def forward(self, x: torch.Tensor) -> Routing:
        if x.dim() != 3:
            raise ValueError(f"ExpertChoiceRouter: expected x of shape [batch, tokens, dim], got shape {tuple(x.shape)}")
        gates = torch.softmax(self.gate(x), dim=-1)
        capacity = self.capacity(x.shape[1])
        mask = self.select(gates, capacity)
        # the C largest mask entries per expert (the smooth mask may have more than C nonzeros)
        index = mask.detach().topk(capacity, dim=1).indices.transpose(1, 2)          # [B, E, C]
        weight = (gates * mask).gather(1, index.transpose(1, 2)).transpose(1, 2)     # [B, E, C]
        return Routing(gates, mask, index, weight)

    def extra_repr(self) -> str:
        smooth = "" if self.topk == "hard" else f", lam={self.lam:g}, p={self.p:.4g}"
        iters = f", num_iter={self.num_iter}" if self.topk == "dykstra" else ""
        return f"num_experts={self.num_experts}, capacity_factor={self.capacity_factor:g}, topk={self.topk!r}{smooth}{iters}"


class SparseMoE(torch.nn.Module):
    """A mixture of ``E`` two-layer MLP experts with expert-choice routing.

    Replaces a transformer MLP block: ``[B, S, D] -> [B, S, D]`` where each of the ``B`` groups
    of ``S`` tokens is routed on its own.

    Args:
        dim: token feature size ``D``.
        hidden: hidden size of each expert.
        num_experts: ``E``.
        dispatch: ``"gather"`` (gather/scatter-add, the default) or ``"einsum"`` (one-hot
            dispatch and combine tensors; the reference formulation).
        **router_kwargs: passed to `ExpertChoiceRouter` (``capacity_factor``, ``topk``,
            ``lam``, ``p``, ``num_iter``).

    Attributes:
        last_routing: the `Routing` of the latest forward (for statistics).

    Raises:
        ValueError: on a bad argument, its own or the router's, naming it.

    Example:
        >>> import torch
        >>> from smoothprune.nn import SparseMoE
        >>> moe = SparseMoE(16, 32, num_experts=4, topk="pav", lam=1e-2)
        >>> moe(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, *, dispatch: str = "gather", **router_kwargs):
        super().__init__()
        fn = "SparseMoE"
        hidden = check_int(fn, "hidden", hidden)
        self.dispatch = check_choice(fn, "dispatch", dispatch, DISPATCHES)
        # the router's arguments, checked under this module's name
        signature = inspect.signature(ExpertChoiceRouter)
        known = tuple(name for name, arg in signature.parameters.items() if arg.kind == arg.KEYWORD_ONLY)
        for name, value in router_kwargs.items():
            if name not in known:
                raise ValueError(f"{fn}: expected router_kwargs among {known}, got {name}={value!r}")
        options = signature.bind(dim, num_experts, **router_kwargs)
        options.apply_defaults()
        _router_options(fn, **options.arguments)
        self.router = ExpertChoiceRouter(dim, num_experts, **router_kwargs)
        e = self.router.num_experts
        # experts stored stacked so that all of them run as one batched matmul
        self.w1 = torch.nn.Parameter(torch.empty(e, dim, hidden))
        self.b1 = torch.nn.Parameter(torch.zeros(e, hidden))
        self.w2 = torch.nn.Parameter(torch.empty(e, hidden, dim))
        self.b2 = torch.nn.Parameter(torch.zeros(e, dim))
        for w in (self.w1, self.w2):  # each expert initialised like an nn.Linear of its shape
            bound = 1.0 / math.sqrt(w.shape[1])
            torch.nn.init.uniform_(w, -bound, bound)
        self.last_routing: Routing | None = None

    def experts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every expert on its own tokens: ``[B, E, C, D] -> [B, E, C, D]``."""
        h = torch.einsum("becd,edh->bech", tokens, self.w1) + self.b1[:, None, :]
        h = torch.nn.functional.gelu(h)
        return torch.einsum("bech,ehd->becd", h, self.w2) + self.b2[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.router(x)
        self.last_routing = routing
        if self.dispatch == "einsum":
            return self._einsum_forward(x, routing)
        batch, _, dim = x.shape
        flat_index = routing.index.reshape(batch, -1, 1).expand(-1, -1, dim)              # [B, E*C, D]
        tokens = x.gather(1, flat_index).reshape(*routing.index.shape, dim)               # [B, E, C, D]
        out = self.experts(tokens) * routing.weight.unsqueeze(-1)
        return torch.zeros_like(x).scatter_add(1, flat_index, out.reshape(batch, -1, dim))

    def _einsum_forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        dispatch = torch.nn.functional.one_hot(routing.index, x.shape[1]).to(x.dtype)    # [B, E, C, S]
        tokens = torch.einsum("becs,bsd->becd", dispatch, x)
        combine = dispatch * routing.weight.unsqueeze(-1)
        return torch.einsum("becs,becd->bsd", combine, self.experts(tokens))
