"""Sparse inference: hardened Linear layers stored and multiplied as CSR matrices where that is
faster than dense.

A pruned model that keeps its zeros in dense tensors costs what the dense model costs. Here a
plain ``nn.Linear`` whose weight is sparse enough becomes a `SparseLinear`: its weight is a CSR
matrix with 32-bit indices (values + column indices + row offsets: 0.2 of the dense bytes at 90%
sparsity) and its product is torch's sparse-dense kernel (``torch.sparse.mm``). Whether that is
faster depends on the shape, the sparsity and the batch, so each layer is chosen on its own:

* with ``example_inputs``, by timing the forms on the inputs the layer really receives (inside
  hooks of one forward pass per example); a layer goes sparse only where it is at least
  ``margin`` times faster on every example; a block-pruned weight is timed as BSR too;
* without, by `csr_pays_off`, a rule fitted to measurements on a 2-core CPU (docs/inference.md,
  "Measured"): float32/float64 on the CPU, at least 90% sparse with 2^20 entries or more, or at
  least 95% sparse with 2^18 or more. Below those, some batch sizes run slower sparse.

Pointwise (1×1) convolutions become `SparsePointwiseConv2d` where timing says so.

`load_sparsified_` builds the sparse model straight from a `save_sparse` file: the chosen
weights are decoded into CSR without a dense copy, so a model built on the meta device never
holds its dense weights.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from smoothprune.validation import check_int, check_real

__all__ = ["SparseLinear", "SparsePointwiseConv2d", "LayerChoice", "SparsifyReport", "csr_pays_off", "sparsify_", "load_sparsified_",
           "sparsify_semi_structured_", "block_pattern", "weight_bytes"]

CSR_DTYPES = (torch.float32, torch.float64)  # torch's CPU CSR product has no float16/bfloat16 kernel
# Below this sparsity a layer is not even timed: CSR ran 1.7-5.6x slower than dense at 30% on
# the 2-core CPU (2048x2048, batches 1-256), and a CSR copy of a dense weight is ~3x its bytes.
MIN_TIMED_SPARSITY = 0.5


def csr_pays_off(shape, sparsity: float, dtype=torch.float32, device="cpu") -> bool:
    """The rule `sparsify_` uses without example inputs: whether a ``shape`` weight at
    ``sparsity`` runs at least as fast as CSR as it does dense on the CPU, at every batch size
    measured (1, 32, 256).

    Example:
        >>> csr_pays_off((4096, 4096), 0.9), csr_pays_off((256, 784), 0.9)
        (True, False)
    """
    numel = math.prod(int(d) for d in shape)
    if torch.device(device).type != "cpu" or dtype not in CSR_DTYPES:
        return False
    sparsity += 1e-4  # a top-k of round(n (1 - s)) entries may fall a hair short of s
    return (sparsity >= 0.9 and numel >= 2**20) or (sparsity >= 0.95 and numel >= 2**18)


SPARSE_LAYOUTS = (torch.sparse_csr, torch.sparse_bsr)


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.layout in SPARSE_LAYOUTS:
        return sum(x.numel() * x.element_size() for x in (t.values(), t.col_indices(), t.crow_indices()))
    return t.numel() * t.element_size()


def _unique_tensors(model):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _dense_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's tensors would take dense (a CSR weight counted at its dense shape)."""
    total = 0
    for t in _unique_tensors(model):
        item = t.values().element_size() if t.layout in SPARSE_LAYOUTS else t.element_size()
        total += torch.Size(t.shape).numel() * item
    return total


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (each tensor once; CSR: its three arrays)."""
    return sum(_tensor_bytes(t) for t in _unique_tensors(model))


class SparseLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` a CSR matrix (inference only: ``W`` and ``b`` are buffers).

    Example:
        >>> import torch
        >>> dense = torch.nn.Linear(64, 32)
        >>> with torch.no_grad():
        ...     dense.weight[torch.rand(32, 64) < 0.9] = 0
        >>> sparse = SparseLinear.from_dense(dense)
        >>> x = torch.randn(5, 64)
        >>> torch.allclose(sparse(x), dense(x), atol=1e-6)
        True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.layout not in SPARSE_LAYOUTS or weight.dim() != 2:
            got = weight.layout if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"SparseLinear: expected weight to be a 2-D sparse CSR or BSR tensor, got {got}")
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(f"SparseLinear: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_dense(cls, linear: torch.nn.Linear, blocksize: tuple[int, int] | None = None) -> "SparseLinear":
        """CSR, or BSR with ``blocksize`` tiles (whole R×C tiles stored: for block patterns)."""
        w = linear.weight.detach()
        w = w.reshape(w.shape[0], -1)  # (a pointwise convolution's (out, in, 1, 1) weight)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            sparse = w.to_sparse_csr() if blocksize is None else w.to_sparse_bsr(tuple(blocksize))
        return cls(_with_int32_indices(sparse), None if linear.bias is None else linear.bias.detach())

    @property
    def layout(self) -> str:
        """"csr" or "bsr RxC"."""
        if self.weight.layout == torch.sparse_csr:
            return "csr"
        rows, cols = self.weight.values().shape[-2:]
        return f"bsr {rows}x{cols}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: expected input with last dim {self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise ValueError(f"SparseLinear: expected input of dtype {self.weight.dtype}, got {x.dtype}")
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            y = torch.sparse.mm(self.weight, xt)
        else:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight, xt)
        return y.t().reshape(*lead, self.out_features)

    def __deepcopy__(self, memo):
        # torch cannot deepcopy a CSR tensor (it has no storage): copy its three arrays
        w = self.weight
        copy = SparseLinear(_sparse_tensor(w.layout, w.crow_indices().clone(), w.col_indices().clone(),
                                           w.values().clone(), w.shape), None if self.bias is None else self.bias.clone())
        copy.train(self.training)
        memo[id(self)] = copy
        return copy

    def to_dense(self) -> torch.nn.Linear:
        """The equivalent ``nn.Linear`` (dense weight)."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                 device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def sparsity(self) -> float:
        """The fraction of entries not stored (BSR stores whole tiles, zeros in them included)."""
        return 1.0 - self.weight.values().numel() / max(self.in_features * self.out_features, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A CSR tensor cannot be copied into another of a different nnz: the stored one is taken
        # (with 32-bit indices, in this layer's dtype and device).
        key, bias_key = prefix + "weight", prefix + "bias"
        if key in state_dict:
            w = state_dict[key]
            if not isinstance(w, torch.Tensor) or w.layout not in SPARSE_LAYOUTS or \
                    tuple(w.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"SparseLinear: expected {key} to be a CSR or BSR tensor of shape "
                                  f"({self.out_features}, {self.in_features}), got "
                                  f"{getattr(w, 'layout', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
            else:
                self.weight = _with_int32_indices(w.to(device=self.weight.device, dtype=self.weight.dtype))
        elif strict:
            missing_keys.append(key)
        if self.bias is None:
            if bias_key in state_dict and strict:
                unexpected_keys.append(bias_key)
        elif bias_key in state_dict:
            b = state_dict[bias_key]
            if not isinstance(b, torch.Tensor) or tuple(b.shape) != (self.out_features,):
                error_msgs.append(f"SparseLinear: expected {bias_key} of shape ({self.out_features},), got "
                                  f"{tuple(getattr(b, 'shape', ()))}")
            else:
                self.bias = b.detach().to(device=self.bias.device, dtype=self.bias.dtype)
        elif strict:
            missing_keys.append(bias_key)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"sparsity={self.sparsity:.4f}, layout={self.layout}")


class SparsePointwiseConv2d(SparseLinear):
    """A pointwise ``nn.Conv2d`` (1×1 kernel, stride 1, no padding, one group) as a sparse
    matrix over the channels: ``y[n, :, h, w] = W x[n, :, h, w] + b`` (inference only).

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(64, 32, 1)
        >>> with torch.no_grad():
        ...     conv.weight[torch.rand(32, 64, 1, 1) < 0.9] = 0
        >>> sparse = SparsePointwiseConv2d.from_dense(conv)
        >>> x = torch.randn(2, 64, 5, 5)
        >>> torch.allclose(sparse(x), conv(x), atol=1e-6)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[0] == self.in_features:  # unbatched (C, H, W), as nn.Conv2d takes
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_features:
            raise ValueError(f"SparsePointwiseConv2d: expected input of shape (N, {self.in_features}, H, W), got "
                             f"{tuple(x.shape)}")
        n, _, h, w = x.shape
        y = super().forward(x.permute(0, 2, 3, 1))  # (N, H, W, out)
        return y.permute(0, 3, 1, 2).reshape(n, self.out_features, h, w)

    def to_dense(self) -> torch.nn.Conv2d:
        """The equivalent ``nn.Conv2d``."""
        conv = torch.nn.Conv2d(self.in_features, self.out_features, 1, bias=self.bias is not None,
                               device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight.to_dense().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def __deepcopy__(self, memo):
        copy = super().__deepcopy__(memo)
        pointwise = SparsePointwiseConv2d(copy.weight, copy.bias)
        pointwise.train(self.training)
        memo[id(self)] = pointwise
        return pointwise


def _is_pointwise(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def _sparse_of(module, blocksize=None) -> SparseLinear:
    return (SparsePointwiseConv2d if _is_pointwise(module) else SparseLinear).from_dense(module, blocksize)


def _dense_call(module, weight):
    """The dense layer's own computation, for timing (``weight`` of the module's own shape)."""
    if isinstance(module, torch.nn.Conv2d) or isinstance(module, SparsePointwiseConv2d):
        w4 = weight.reshape(weight.shape[0], -1, 1, 1)
        return lambda x: F.conv2d(x, w4, module.bias)
    return lambda x: F.linear(x, weight, module.bias)


def _sparse_tensor(layout, crow, col, values, shape) -> torch.Tensor:
    make = torch.sparse_csr_tensor if layout == torch.sparse_csr else torch.sparse_bsr_tensor
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return make(crow, col, values, size=tuple(shape), check_invariants=False)  # (valid: torch's own)


def _with_int32_indices(sparse: torch.Tensor) -> torch.Tensor:
    if sparse.col_indices().numel() >= 2**31 or sparse.shape[1] >= 2**31 or sparse.col_indices().dtype == torch.int32:
        return sparse
    return _sparse_tensor(sparse.layout, sparse.crow_indices().to(torch.int32), sparse.col_indices().to(torch.int32),
                          sparse.values(), sparse.shape)


def block_pattern(weight: torch.Tensor, sizes=(32, 16, 8)) -> tuple[int, int] | None:
    """The largest square tile size whose nonzero tiles are at least 90% filled while at least
    10% of the tiles are zero (a block-pruned weight: `scope="block:RxC"`), else None."""
    nnz = int((weight != 0).sum())
    rows, cols = weight.shape
    for size in sizes:
        if rows % size or cols % size:
            continue
        tiles = (weight.reshape(rows // size, size, cols // size, size) != 0).any(dim=3).any(dim=1)
        kept = int(tiles.sum())
        if 0 < kept <= 0.9 * tiles.numel() and nnz >= 0.9 * kept * size * size:
            return size, size
    return None


# ------------------------------------------------------------------------------------------------
# the per-layer choice
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerChoice:
    name: str
    shape: tuple
    sparsity: float
    layout: str                   # "csr", "bsr RxC" or "dense"
    reason: str = ""
    dense_ms: float | None = None  # measured (example_inputs only): summed over the examples
    sparse_ms: float | None = None
    dense_bytes: int = 0           # weight + bias
    bytes: int = 0                 # weight + bias in the chosen layout


@dataclasses.dataclass
class SparsifyReport:
    layers: list[LayerChoice]
    model_bytes_before: int   # all parameters and buffers (weight_bytes) before
    model_bytes: int          # and after

    @property
    def sparse_layers(self) -> list[str]:
        return [c.name for c in self.layers if c.layout != "dense"]

    def __str__(self) -> str:
        rows = [("layer", "shape", "sparsity", "layout", "dense ms", "sparse ms", "bytes", "reason")]
        for c in self.layers:
            rows.append((c.name, "×".join(map(str, c.shape)), f"{c.sparsity:.4f}", c.layout,
                         "-" if c.dense_ms is None else f"{c.dense_ms:.3f}",
                         "-" if c.sparse_ms is None else f"{c.sparse_ms:.3f}", f"{c.bytes:,}", c.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"model weights: {self.model_bytes_before:,} -> {self.model_bytes:,} bytes "
                     f"({self.model_bytes / max(self.model_bytes_before, 1):.1%})")
        return "\n".join(lines)


def _check_ready(fn: str, model) -> None:
    from smoothprune.pruning import pruned_tensors

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{fn}: expected an nn.Module, got {type(model).__name__}")
    pruned = pruned_tensors(model)
    if pruned:
        raise ValueError(f"{fn}: the model is still being pruned ({pruned[0][0]} and {len(pruned) - 1} more): "
                         "call sp.harden_(model) first")
    if model.training:
        raise ValueError(f"{fn}: expected a model in eval mode (sparse layers are for inference): "
                         "call model.eval() first")


def _check_margin(fn: str, margin, repeats) -> None:
    check_real(fn, "margin", margin, low=1.0, finite=False)
    check_int(fn, "repeats", repeats, low=1)


def _linear_sites(model, pointwise: bool = False) -> dict[int, tuple[str, torch.nn.Module, list]]:
    """Plain nn.Linear modules (subclasses such as MultiheadAttention's out_proj are read by their
    owners directly, so they stay), and with ``pointwise`` plain pointwise nn.Conv2d ones:
    {id: (name, module, [(parent, attribute), ...])}."""
    sites = {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():  # (named_children() yields a shared child once)
            if type(child) is torch.nn.Linear or (pointwise and _is_pointwise(child)):
                name = f"{parent_name}.{attr}" if parent_name else attr
                sites.setdefault(id(child), (name, child, []))[2].append((parent, attr))
    return sites


def _shared_tensors(model) -> set[int]:
    """ids of parameters owned by more than one module (tied weights; one module used in two
    places is not a tie)."""
    owners = {}
    for module in model.modules():
        for t in module.parameters(recurse=False):
            owners.setdefault(id(t), set()).add(id(module))
    return {key for key, mods in owners.items() if len(mods) > 1}


def _examples(fn: str, example_inputs) -> list[tuple[tuple, dict]]:
    """example_inputs: a tensor, a tuple of positional args, a dict of keyword args, or a list of
    those (several calls, e.g. batch sizes)."""
    items = example_inputs if isinstance(example_inputs, list) else [example_inputs]
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(((item,), {}))
        elif isinstance(item, tuple):
            out.append((item, {}))
        elif isinstance(item, dict):
            out.append(((), item))
        else:
            raise ValueError(f"{fn}: expected example_inputs to be a tensor, a tuple of args, a dict of kwargs or "
                             f"a list of those, got {type(item).__name__}")
    if not out:
        raise ValueError(f"{fn}: expected at least one example input, got an empty list")
    return out


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def _time_in_place(model, layers: dict, examples, repeats: int) -> dict:
    """{key: {form: [(dense ms, sparse ms) per example that calls the layer]}}: one forward pass
    per example; each layer is timed dense and in each sparse form on the very input it
    receives, inside a pre-hook, so no input is kept (a layer called several times sums its
    calls).

    ``layers``: {key: (the module in the model, {form: SparseLinear})}; the dense weight is the
    module's own, or, for a SparseLinear in the model, made for the timing and dropped after."""
    timings = {key: [None for _ in examples] for key in layers}
    current = [0]

    def hook(key):
        module, forms = layers[key]

        def time_all(_, args, kwargs):
            x = args[0] if args else kwargs["input"]
            weight = module.weight.to_dense() if isinstance(module, SparseLinear) else module.weight
            dense = _dense_call(module, weight)
            slot = timings[key][current[0]] or {"dense": 0.0} | {form: 0.0 for form in forms}
            slot["dense"] += _median_ms(lambda: dense(x), repeats)
            for form, layer in forms.items():
                try:
                    slot[form] += _median_ms(lambda layer=layer: layer.forward(x), repeats)  # (.forward: no hooks)
                except (RuntimeError, ValueError, NotImplementedError):  # (a kernel torch lacks, an odd input)
                    slot[form] = float("inf")
            timings[key][current[0]] = slot

        return time_all

    handles = [layers[key][0].register_forward_pre_hook(hook(key), with_kwargs=True) for key in layers]
    try:
        for i, (args, kwargs) in enumerate(examples):
            current[0] = i
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {key: {form: [(slot["dense"], slot[form]) for slot in per_example if slot is not None]
                  for form in layers[key][1]}
            for key, per_example in timings.items()}


def _dense_reason(module, device, dtype, sparsity: float, shared: set, timed: bool) -> str | None:
    """Why a layer stays dense whatever the timing or the rule (None: it is a candidate)."""
    if device.type != "cpu":
        return f"on {device.type}: CSR is used on the CPU only"
    if dtype not in CSR_DTYPES:
        return f"{str(dtype).replace('torch.', '')} has no CPU CSR kernel"
    if parametrize.is_parametrized(module):
        return "parametrized (torch.nn.utils.parametrize)"
    if id(module.weight) in shared:
        return "tied to another module's tensor"
    if timed and sparsity < MIN_TIMED_SPARSITY:
        return f"less than {MIN_TIMED_SPARSITY:.0%} sparse (not timed: CSR is slower there)"
    return None


def _decide(choice: LayerChoice, timings, margin: float) -> str | None:
    """The sparse form the layer takes (None: it stays dense), from its timings ({form:
    [(dense ms, sparse ms) per example]}) or, when there are none, the rule; records the times
    and the reason in ``choice``."""
    if timings is None:
        ok = csr_pays_off(choice.shape, choice.sparsity)
        choice.reason = "rule: " + ("sparse enough for its size" if ok else "too dense or too small to pay off")
        return "csr" if ok else None
    if not any(timings.values()):
        choice.reason = "not called by the example inputs"
        return None
    if all(s == float("inf") for pairs in timings.values() for _, s in pairs):
        choice.reason = "the sparse forms failed on the example inputs"
        return None
    # each form's smallest speed-up over the examples; the form whose smallest is largest
    worst = {form: min(d / s for d, s in pairs) for form, pairs in timings.items()}
    form = max(worst, key=worst.get)
    choice.dense_ms = sum(d for d, _ in timings[form])
    choice.sparse_ms = sum(s for _, s in timings[form])
    speedup = worst[form]
    others = ", ".join(f"{f} {w:.2f}×" for f, w in worst.items() if f != form)
    also = f" (best of its forms; {others})" if others else ""
    if speedup >= margin:
        choice.reason = f"measured: {form} {speedup:.2f}× faster{also}"
        return form
    if speedup >= 1:
        choice.reason = f"measured: {form} {speedup:.2f}× faster, below the margin {margin:g}×{also}"
    else:
        choice.reason = f"measured: sparse {1 / speedup:.2f}× slower ({form}){also}"
    return None


def _layer_bytes(layer: torch.nn.Module) -> int:
    return _tensor_bytes(layer.weight) + (0 if layer.bias is None else _tensor_bytes(layer.bias))


def _replace(sites_of_module: list, new: torch.nn.Module) -> None:
    for parent, attr in sites_of_module:
        setattr(parent, attr, new)


def sparsify_(model: torch.nn.Module, example_inputs=None, *, margin: float = 1.1, repeats: int = 7) -> SparsifyReport:
    """Replaces the hardened ``nn.Linear`` layers of ``model`` that run faster sparse by
    `SparseLinear` (CSR weights, BSR for block patterns when timed), and with ``example_inputs``
    its pointwise ``nn.Conv2d`` layers that do by `SparsePointwiseConv2d`, in place; the others
    stay dense.

    Args:
        model: a hardened model (`sp.harden_`) in eval mode.
        example_inputs: what ``model(...)`` is called with at inference: a tensor, a tuple of
            positional args, a dict of keyword args, or a list of those (e.g. one per batch size).
            Each layer is then timed dense and sparse on the inputs it receives, and goes sparse
            only where it is at least ``margin`` times faster on every example. Without them,
            the rule `csr_pays_off` decides.
        margin: the speed-up a measured layer needs to go sparse (default 1.1: timing noise on a
            busy machine should not flip a layer to the slower form).
        repeats: timed calls per layer and form (medians).

    Returns:
        A `SparsifyReport`: per layer the layout chosen and why, the times measured, the bytes.

    Raises:
        ValueError: a model that is still being pruned (not hardened) or in training mode, or a
            bad argument.

    Example:
        >>> import torch, smoothprune as sp
        >>> model = torch.nn.Sequential(torch.nn.Linear(2048, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
        >>> _ = sp.prune_(model, 0.95); _ = sp.harden_(model)
        >>> report = sp.sparsify_(model.eval())
        >>> report.sparse_layers
        ['0']
    """
    fn = "sparsify_"
    _check_ready(fn, model)
    _check_margin(fn, margin, repeats)
    examples = None if example_inputs is None else _examples(fn, example_inputs)
    before = _dense_bytes(model)
    sites = _linear_sites(model, pointwise=True)
    shared = _shared_tensors(model)
    candidates, choices = {}, []
    for key, (name, module, _) in sites.items():
        w = module.weight
        nnz = int((w != 0).sum())
        conv = isinstance(module, torch.nn.Conv2d)
        dense_bytes = _layer_bytes(module)
        choice = LayerChoice(name, tuple(w.shape), 1.0 - nnz / w.numel() if w.numel() else 0.0, "dense", "",
                             None, None, dense_bytes, dense_bytes)
        choices.append(choice)
        why = _dense_reason(module, w.device, w.dtype, choice.sparsity, shared, timed=examples is not None)
        if not why and w.numel() == 0:
            why = "empty"
        if not why and examples is None and conv:
            why = "pointwise convolution: sparsified only when timed (pass example_inputs)"
        if not why and examples is None and _decide(choice, None, margin) is None:
            why = choice.reason
        if why:
            choice.reason = why
        else:
            candidates[key] = choice
    # Sparse copies only of the layers that go sparse by the rule or are timed: CSR, and BSR
    # too for a block pattern when timing (BSR won at batch 1 and lost at batch 32 on the CPU).
    forms = {}
    for key in candidates:
        module = sites[key][1]
        forms[key] = {"csr": _sparse_of(module)}
        matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
        block = block_pattern(matrix) if examples is not None else None
        if block is not None:
            bsr = _sparse_of(module, blocksize=block)
            forms[key][bsr.layout] = bsr
    timings = _time_in_place(model, {key: (sites[key][1], forms[key]) for key in candidates}, examples,
                             repeats) if examples is not None else {}
    for key, choice in candidates.items():
        form = "csr" if examples is None else _decide(choice, timings[key], margin)
        if form is not None:
            choice.layout, choice.bytes = form, _layer_bytes(forms[key][form])
            _replace(sites[key][2], forms[key][form])
    return SparsifyReport(choices, before, weight_bytes(model))


def load_sparsified_(model: torch.nn.Module, path, example_inputs=None, *, margin: float = 1.1,
                     repeats: int = 7) -> SparsifyReport:
    """Loads a `save_sparse` file into ``model`` for sparse inference, without going dense: the
    plain ``nn.Linear`` layers chosen sparse get their CSR weight straight from the file's
    encoding; everything else is loaded as stored. ``model`` may be built on the meta device
    (``with torch.device("meta"): model = Net()``): its tensors are then replaced by the file's,
    and the dense weights of the sparse layers never exist.

    The choice is `csr_pays_off` on the file's shapes and sparsities; with ``example_inputs``,
    every layer that can be sparse is loaded sparse, then timed as in `sparsify_` (one layer's
    dense weight exists at a time) and made dense again where dense is faster.

    Raises:
        ValueError: a model in training mode or being pruned, a file that does not match the
            model (missing or unexpected tensors, shapes), a corrupted file, or tensors the file
            does not hold that are still on the meta device (non-persistent buffers).
    """
    from smoothprune.export import read_sparse_metadata, read_tensors

    fn = "load_sparsified_"
    _check_ready(fn, model)
    _check_margin(fn, margin, repeats)
    examples = None if example_inputs is None else _examples(fn, example_inputs)
    entries = read_sparse_metadata(path)
    expected = model.state_dict()
    for key, t in expected.items():
        e = entries.get(key)
        if e is not None and tuple(e["shape"]) != tuple(t.shape):
            raise ValueError(f"{fn}: {path} does not match the model: {key} has shape {tuple(e['shape'])} in the "
                             f"file, {tuple(t.shape)} in the model")
    sites = _linear_sites(model)
    shared = _shared_tensors(model)
    planned, choices = {}, {}
    for key, (name, module, _) in sites.items():
        e = entries.get(f"{name}.weight")
        if e is None:
            continue  # load_state_dict reports the missing key
        shape, dtype = tuple(e["shape"]), getattr(torch, e["dtype"])
        bias = entries.get(f"{name}.bias")
        dense_bytes = math.prod(shape) * dtype.itemsize + (
            0 if bias is None else math.prod(bias["shape"]) * getattr(torch, bias["dtype"]).itemsize)
        choice = LayerChoice(name, shape, float(e["sparsity"]), "dense", "", dense_bytes=dense_bytes,
                             bytes=dense_bytes)
        choices[key] = choice
        device = torch.device("cpu") if module.weight.is_meta else module.weight.device
        why = _dense_reason(module, device, dtype, choice.sparsity, shared, timed=examples is not None)
        if why:
            choice.reason = why
        elif e["encoding"] == "alias":
            choice.reason = "tied to another module's tensor"
        elif e["encoding"] == "dense":
            choice.reason = "stored dense (not sparse enough)"
        elif shape != (module.out_features, module.in_features):
            choice.reason = "shape differs from the model's"
        elif not module.weight.is_meta and module.weight.dtype != dtype:
            choice.reason = f"the model holds {str(module.weight.dtype).replace('torch.', '')}, the file {e['dtype']}"
        elif examples is not None or _decide(choice, None, margin) is not None:
            planned[f"{name}.weight"] = key
    state = read_tensors(path, as_csr=lambda name, e: name in planned)
    sparse_layers = {}
    for weight_key, key in planned.items():
        name, module, where = sites[key]
        bias = state.get(f"{name}.bias") if module.bias is not None else None
        if module.bias is not None and bias is None:
            raise ValueError(f"{fn}: {path} has no tensor {name}.bias for the model's {name}")
        sparse_layers[key] = SparseLinear(state[weight_key], bias)
        _replace(where, sparse_layers[key])
    # A model on the meta device takes the file's tensors as they are; any other is copied into
    # (its devices and dtypes stay).
    on_meta_before = any(t.is_meta for t in expected.values())
    missing, unexpected = model.load_state_dict(state, strict=False, assign=on_meta_before)
    if missing or unexpected:
        raise ValueError(f"{fn}: {path} does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise ValueError(f"{fn}: {on_meta[:5]} are still on the meta device: {path} does not hold them "
                         "(non-persistent buffers are not saved: create them after loading)")
    if examples is not None and sparse_layers:  # (CSR only: the file's encoding has no tiles)
        timings = _time_in_place(model, {key: (layer, {"csr": layer}) for key, layer in sparse_layers.items()},
                                 examples, repeats)
    for key, layer in sparse_layers.items():
        choice = choices[key]
        choice.layout = "csr"
        if examples is not None and _decide(choice, timings[key], margin) is None:
            choice.layout = "dense"
            original = sites[key][1]
            if original.weight.is_meta:
                _replace(sites[key][2], layer.to_dense())
            else:  # the user's own module, its values copied in
                with torch.no_grad():
                    original.weight.copy_(layer.weight.to_dense())
                    if original.bias is not None:
                        original.bias.copy_(layer.bias)
                _replace(sites[key][2], original)
        if choice.layout == "csr":
            choice.bytes = _layer_bytes(layer)
    return SparsifyReport(list(choices.values()), _dense_bytes(model), weight_bytes(model))


# ------------------------------------------------------------------------------------------------
# 2:4 semi-structured (sparse tensor cores, CUDA)
# ------------------------------------------------------------------------------------------------
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def _is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 nonzeros in every group of 4 consecutive entries of each row."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def sparsify_semi_structured_(model: torch.nn.Module) -> list[str]:
    """Converts, in place, the hardened plain ``nn.Linear`` weights of ``model`` that hold a 2:4
    pattern (`scope="2:4"` pruning) to torch's semi-structured sparse layout
    (``torch.sparse.to_sparse_semi_structured``), which sparse tensor cores multiply: CUDA GPUs
    of compute capability 8.0 or newer, float16/bfloat16 weights. Layers without a 2:4 pattern
    are left alone. Untested on a GPU here (none was lent): the checks below run everywhere.

    Returns:
        The names of the converted layers.

    Raises:
        ValueError: a model being pruned or in training mode; no layer with a 2:4 pattern; a 2:4
            layer that is not on such a GPU or not in float16/bfloat16 (named, with its device
            and dtype).
    """
    fn = "sparsify_semi_structured_"
    _check_ready(fn, model)
    layers = [(name, module, where) for name, module, where in _linear_sites(model).values()
              if _is_two_four(module.weight.detach())]
    if not layers:
        raise ValueError(f"{fn}: expected Linear weights with a 2:4 pattern (prune with scope='2:4'), got none")
    shared = _shared_tensors(model)
    for name, module, _ in layers:  # what no device could run, first
        w = module.weight
        if id(w) in shared:
            raise ValueError(f"{fn}: expected untied 2:4 weights, got {name!r} tied to another module's tensor")
        if w.shape[0] % 32 or w.shape[1] % 64:
            raise ValueError(f"{fn}: expected 2:4 weights whose shape is a multiple of 32×64 (the kernels' tile), "
                             f"got {name!r} of shape {tuple(w.shape)}: exclude it from the 2:4 pruning")
    for name, module, _ in layers:
        w = module.weight
        if w.device.type != "cuda":
            raise ValueError(f"{fn}: expected 2:4 layers on a CUDA GPU (sparse tensor cores), got {name!r} on "
                             f"{w.device}")
        if w.dtype not in SEMI_STRUCTURED_DTYPES:
            raise ValueError(f"{fn}: expected float16 or bfloat16 weights for 2:4, got {name!r} in "
                             f"{str(w.dtype).replace('torch.', '')}")
        major, minor = torch.cuda.get_device_capability(w.device)
        if major < 8:
            raise ValueError(f"{fn}: expected a GPU of compute capability 8.0 or newer for 2:4, got "
                             f"{major}.{minor} for {name!r}")
    from torch.sparse import to_sparse_semi_structured

    converted = [to_sparse_semi_structured(module.weight.detach()) for _, module, _ in layers]  # all, then assign
    for (_, module, _), weight in zip(layers, converted):
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
    return [name for name, _, _ in layers]
