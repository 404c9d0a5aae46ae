"""Top-k-in-magnitude parametrizations: ``W = topk_mag(W')`` (the "spec" of a pruned tensor,
attached to the user's module by `smoothprune.nn.pruned`).

Every scope reduces to the same computation: view the tensor as groups of ``group_size``
consecutive entries (the whole tensor for "layer" and "global", one output row for "row", ``M``
entries for "N:M") and keep ``k`` entries of each group. The block scope ("block:RxC") runs it
on the norms of the weight's R×C tiles (one group of all of them) and scales each tile by its
kept factor, the operator's output over the tile's norm: 1 for kept tiles, 0 for pruned ones,
in between only inside the smooth operator's pooled window; hardened, whole tiles are zero. ``k``, ``lam`` and the target
``sparsity`` live in buffers that are updated in place (`set_sparsity`, `set_lam`), so changing
them never rebuilds a module or recompiles a compiled model; the buffers travel with the
model's state_dict, which is what makes checkpoints resumable and exportable.

Three methods share this layout:

* `SoftTopKMag` ("smooth"): ``W = soft_topk_mag(W', k, lam, p)``, the sparse smooth operator.
* `HardTopKMag` ("hard"): ``W = hard_topk_mag(W', k)``; its gradient passes through kept entries.
* `StraightThroughTopKMag` ("ste"): the hard forward with the smooth operator's gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from smoothprune.ops.hard_topk import hard_topk_mag, hard_topk_mask
from smoothprune.ops.sharded import is_dtensor, sharded_groups, sharded_hard_topk_mag, sharded_soft_topk
from smoothprune.ops.soft_topk import soft_topk_last_dim, soft_topk_mag

__all__ = [
    "TopKMagParametrization", "SoftTopKMag", "HardTopKMag", "StraightThroughTopKMag", "PARAMETRIZATIONS",
    "METHODS", "hard_topk_groups", "kept_per_group",
]

METHODS = ("smooth", "hard", "ste")


def hard_topk_groups(w: torch.Tensor, group_size: int, k) -> torch.Tensor:
    """``hard_topk_mag`` of each group of ``group_size`` consecutive entries of ``w``."""
    return hard_topk_mag(w.reshape(-1, group_size), k).reshape(w.shape)


def kept_per_group(sparsity: float, group_size: int) -> int:
    """Entries kept in a group of ``group_size`` at ``sparsity``: ``round((1 - s) * group_size)``."""
    return int(round((1.0 - float(sparsity)) * group_size))


class _HostScalars(NamedTuple):
    k: int
    lam: torch.Tensor  # 0-d float64, CPU


class TopKMagParametrization(torch.nn.Module):
    """Base class: groups, buffers and in-place updates; subclasses choose the operator.

    Args:
        shape: shape of the parametrized tensor.
        group_size: entries per group; must divide ``numel``.
        sparsity: initial target sparsity in ``[0, 1]``.
        lam: regularization strength ``> 0`` of the smooth operator.
        p: regularization exponent ``> 1``.
        scope: a label kept for reports (``"layer"``, ``"global"``, ``"row"``, ``"N:M"``,
            ``"block:RxC"``).
        algorithm, num_iter, debias: passed to :func:`smoothprune.soft_topk_mag`.
        block: ``(R, C)`` for the block scope: the top-k runs over the norms of the 2-D
            tensor's R×C tiles (``group_size`` is then their number).
    """

    method = "base"

    def __init__(self, shape, group_size: int, sparsity: float, lam: float, p: float, scope: str,
                 algorithm: str = "auto", num_iter=None, debias: bool = True, relative_lam: bool = False,
                 block: tuple[int, int] | None = None):
        super().__init__()
        numel = 1
        for s in shape:
            numel *= int(s)
        self.block = None if block is None else (int(block[0]), int(block[1]))
        if self.block is not None:
            rows, cols = self.block
            if len(shape) != 2 or rows < 1 or cols < 1 or shape[0] % rows or shape[1] % cols:
                raise ValueError(f"{type(self).__name__}: expected a 2-D tensor whose dims are multiples of the "
                                 f"block {rows}x{cols}, got shape {tuple(shape)}")
            numel = (shape[0] // rows) * (shape[1] // cols)  # the top-k runs over the tiles' norms
        if group_size < 1 or numel % group_size:
            raise ValueError(
                f"{type(self).__name__}: expected a group size that divides the {numel} entries of a "
                f"tensor of shape {tuple(shape)}, got group_size={group_size}"
            )
        self.shape = tuple(int(s) for s in shape)
        self.group_size = int(group_size)
        self.p = float(p)
        self.scope = scope
        self.algorithm = algorithm
        self.num_iter = num_iter
        self.debias = bool(debias)
        # For p != 2 the magnitude operator's lam has the units of |W|^(2 - p): a relative lam is
        # scaled by the tensor's RMS to that power, so it means the same at every layer's scale
        # (for p = 2 lam is already relative: the window is a factor (1 + lam) around the k-th value).
        self.relative_lam = bool(relative_lam) and self.p != 2.0
        self.eval_hard = True  # in eval mode the module reads the hardened weight
        self.train_hard = False  # set for a hard fine-tuning phase: training reads it too
        # Persistent buffers: saved with the model, restored on resume, read by the exporter.
        self.register_buffer("k", torch.tensor(kept_per_group(sparsity, group_size), dtype=torch.int64))
        self.register_buffer("group", torch.tensor(self.group_size, dtype=torch.int64))
        self.register_buffer("sparsity", torch.tensor(float(sparsity), dtype=torch.float64))
        self.register_buffer("lam", torch.tensor(float(lam), dtype=torch.float64))
        # 1 when k is this tensor's share of a budget shared across tensors ("global" scope)
        self.register_buffer("shared", torch.tensor(int(scope == "global"), dtype=torch.int64))

    # -- in-place updates (no new tensors: compiled graphs and optimizers stay valid) -----------
    @torch.no_grad()
    def set_sparsity(self, sparsity: float) -> None:
        _assign(self.sparsity, float(sparsity))
        _assign(self.k, kept_per_group(sparsity, self.group_size))

    @torch.no_grad()
    def set_k(self, k: int) -> None:
        """Sets the kept count directly (global scope allocates it across tensors)."""
        _assign(self.k, int(k))

    @torch.no_grad()
    def set_lam(self, lam: float) -> None:
        _assign(self.lam, float(lam))

    # -- computation ---------------------------------------------------------------------------
    def _host_scalars(self) -> _HostScalars | None:
        """Eager CPU/CUDA, for the operators that need k as a Python int (the hard top-k, Dykstra):
        k and lam as host values (`_HostScalars`), read from the buffers only when they change
        (their version counter moves on every in-place update, load_state_dict included): reading
        a GPU buffer is a device synchronisation, which every step would otherwise pay per tensor.
        None when compiling (the 0-d buffers themselves are used, so that new values never
        recompile) and on XLA (the device buffers, read inside the graph).
        """
        buffers = self._buffers  # direct dict access: this runs for every weight at every step
        k, lam = buffers["k"], buffers["lam"]
        if torch.compiler.is_compiling() or k.device.type not in ("cpu", "cuda"):
            return None
        key = (k._version, lam._version, k.data_ptr(), lam.data_ptr())
        if self.__dict__.get("_host_key") != key:
            self._host = _HostScalars(int(k), lam.detach().to("cpu", torch.float64, copy=True))
            self._host_key = key
        return self._host

    # -- the block scope: the top-k of the tiles' norms, each tile scaled by its kept factor -----
    def _tiles(self, w: torch.Tensor) -> torch.Tensor:
        rows, cols = self.block
        return w.reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols)

    def tile_norms(self, w: torch.Tensor) -> torch.Tensor:
        """The Frobenius norms of the R×C tiles, as one row, in float32 at least (float16 sums
        would round the ranking; floored at 1e-30 in the square, so that an all-zero tile has a
        finite gradient)."""
        dtype = torch.promote_types(w.dtype, torch.float32)
        return self._tiles(w).to(dtype).square().sum(dim=(1, 3)).clamp_min(1e-30).sqrt().reshape(1, -1)

    def _scale_tiles(self, w: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        tiles = self._tiles(w)
        return (tiles * factor.reshape(tiles.shape[0], 1, tiles.shape[2], 1)).reshape(w.shape)

    def smooth(self, w: torch.Tensor) -> torch.Tensor:
        if is_dtensor(w):
            return self._sharded(w, smooth=True)
        if self.block is None:
            return self._smooth_groups(w)
        norms = self.tile_norms(w)
        return self._scale_tiles(w, (self._smooth_groups(norms) / norms).to(w.dtype))

    def _smooth_groups(self, w: torch.Tensor) -> torch.Tensor:
        grouped = w.dim() == 2 and w.shape[1] == self.group_size  # (row scope: no reshape needed)
        rows = w if grouped else w.reshape(-1, self.group_size)
        buffers = self._buffers  # direct dict access: this runs for every weight at every step
        lam = buffers["lam"]
        if self.relative_lam:
            lam = lam * self.lam_scale(w)
        if self.algorithm != "dykstra" and w.device.type in ("cpu", "cuda"):
            # The exact native path without the public wrapper's checks: every argument was
            # validated when the parametrization was built or updated. The kernels read the k
            # and lam buffers where they live (on a GPU without synchronising), eager or compiled,
            # so a CUDA-graphed step follows set_sparsity / set_lam.
            y = soft_topk_last_dim(rows, buffers["k"], lam, self.p, True, self.debias)
        elif (host := self._host_scalars()) is not None:  # eager Dykstra
            y = soft_topk_mag(rows, host.k, lam=host.lam * self.lam_scale(w) if self.relative_lam else host.lam,
                              p=self.p, algorithm="dykstra", num_iter=self.num_iter,
                              debias=self.debias)
        else:  # compiling Dykstra, or XLA: the buffers, through the public operator
            y = soft_topk_mag(rows, self.k, lam=lam, p=self.p, algorithm=self.algorithm,
                              num_iter=self.num_iter, debias=self.debias)
        return y if grouped else y.reshape(w.shape)

    def hard(self, w: torch.Tensor) -> torch.Tensor:
        if is_dtensor(w):
            return self._sharded(w, smooth=False)
        host = self._host_scalars()
        k = self.k if host is None else host.k
        if self.block is None:
            return hard_topk_groups(w, self.group_size, k)
        kept = hard_topk_mask(self.tile_norms(w.detach()), k)  # exactly k tiles, ties broken by topk
        tiles = self._tiles(w)
        keep = kept.reshape(tiles.shape[0], 1, tiles.shape[2], 1) != 0
        return torch.where(keep, tiles, torch.zeros((), dtype=w.dtype, device=w.device)).reshape(w.shape)  # +0.0

    def _sharded(self, w, smooth: bool):
        """The operator on a DTensor latent (FSDP2 outside the forward, tensor parallel): each
        group solved where it lives, or by the exact top-k across shards
        (`smoothprune.ops.sharded`) where a group is spread over ranks; same results as on the
        whole tensor."""
        if self.block is not None:
            raise NotImplementedError(f"{type(self).__name__}: the block scope on a sharded (DTensor) weight")
        groups = sharded_groups(w, self.group_size, type(self).__name__)
        local, k = groups.local, int(self.k)
        if smooth:
            lam = float(self.lam) * (float(self.lam_scale(w)) if self.relative_lam else 1.0)
            if groups.group is None:
                y = soft_topk_last_dim(local, torch.tensor(k), torch.tensor(lam, dtype=torch.float64), self.p, True,
                                       self.debias)
            else:
                y = sharded_soft_topk(local, k, lam=lam, p=self.p, magnitude=True, debias=self.debias,
                                      group=groups.group)
        elif groups.group is None:
            y = hard_topk_mag(local, k)
        else:
            y = sharded_hard_topk_mag(local, k, groups.group)
        return groups.rebuild(y)

    def weight(self, w: torch.Tensor, training: bool) -> torch.Tensor:
        """The weight a module reads: this method's operator while training, the hardened weight
        in eval mode (unless ``eval_hard`` is False) and in training once ``train_hard`` is set
        (hard fine-tuning: the gradient flows to the kept entries)."""
        if self.train_hard if training else self.eval_hard:
            return self.hard(w)
        return self(w)

    def follow_device_(self, fn) -> None:
        """Moves the buffers to the device that the module's ``_apply(fn)`` moved it to (dtype
        conversions of the module leave k, lam and sparsity as they are)."""
        device = fn(torch.empty(0, dtype=torch.int64, device=self.k.device)).device
        if device != self.k.device:
            self.to(device)

    def lam_scale(self, w: torch.Tensor) -> torch.Tensor:
        """``rms(W')^(2 - p)`` (a 0-d tensor on W's device, no gradient): what a relative lam is
        multiplied by."""
        square_sum = w.detach().to(torch.float64).square().sum()
        if is_dtensor(square_sum):
            square_sum = square_sum.full_tensor()  # (an all-reduce of one number)
        rms = (square_sum / max(w.numel(), 1)).sqrt().clamp_min(1e-30)
        return rms.pow(2.0 - self.p)

    def extra_repr(self) -> str:
        return (f"scope={self.scope!r}, group_size={self.group_size}, k={int(self.k)}, "
                f"sparsity={float(self.sparsity):.4g}, lam={float(self.lam):.3g}{' (relative)' if self.relative_lam else ''}, "
                f"p={self.p:.4g}")


def _assign(buffer: torch.Tensor, value) -> None:
    """Writes a Python number into a 0-d buffer without changing any compiled graph.

    On XLA, ``fill_`` with a Python number would bake the value into the graph as a constant
    (a new graph, so a recompilation, for every new value); copying from a host tensor makes it
    device data, an input of the graph.
    """
    if buffer.device.type in ("cpu", "cuda"):
        buffer.fill_(value)
    else:
        buffer.copy_(torch.tensor(value, dtype=buffer.dtype))


class SoftTopKMag(TopKMagParametrization):
    """``W = soft_topk_mag(W')`` per group: exactly sparse, differentiable, hard as lam -> 0."""

    method = "smooth"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.smooth(w)


class HardTopKMag(TopKMagParametrization):
    """``W = hard_topk_mag(W')`` per group (the classic magnitude-pruning baseline)."""

    method = "hard"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.hard(w)


class StraightThroughTopKMag(TopKMagParametrization):
    """Hard forward, smooth backward: ``hard + (smooth - smooth.detach())``."""

    method = "ste"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        smooth = self.smooth(w)
        return self.hard(w.detach()) + (smooth - smooth.detach())


PARAMETRIZATIONS = {"smooth": SoftTopKMag, "hard": HardTopKMag, "ste": StraightThroughTopKMag}
