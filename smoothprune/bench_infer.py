"""`smoothprune bench infer`: dense vs sparsified inference, one process, one run.

For each model and sparsity, the model is pruned (magnitude top-k per layer of its random
weights: the speed of a CSR product depends on the pattern's density, not on the values; for
the 4096-wide MLP also in whole 32×32 tiles, the block scope) and hardened, then three forms are timed in turn at each batch size (medians of ``repeats``): dense,
`sparsify_` by its rule (no example inputs), and `sparsify_` timed on example inputs of every
batch size. Also reported: the bytes of the weights (all parameters and buffers) of each form,
and whether the predictions (argmax) agree with the dense model's.
"""

from __future__ import annotations

import copy

import torch

import smoothprune as sp
from smoothprune.bench import interleaved_medians, make_timer
from smoothprune.inference import weight_bytes

__all__ = ["BATCHES", "SPARSITIES", "WIDE_MLP", "MODELS", "bench_model", "run_infer"]

BATCHES = (1, 32, 256)
SPARSITIES = (0.9, 0.95)
BLOCK_SCOPE, BLOCK_SPARSITIES = "block:32x32", (0.75, 0.9)  # the 4096-wide MLP, pruned in whole tiles


def _demo_mlp():
    from smoothprune.recipes.models import mlp

    return mlp(in_chans=1, image_size=28, num_classes=10), (1, 28, 28)


def _vit_tiny():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=100)
    return vit, (3, 32, 32)


def _wide_mlp():
    layers = [torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
              torch.nn.Linear(4096, 4096)]
    return torch.nn.Sequential(*layers), (4096,)


WIDE_MLP = "MLP 3×4096²"
MODELS = {
    "demo MLP 784-32-32-10": _demo_mlp,
    "ViT-Tiny (32×32, patch 4: 65 tokens)": _vit_tiny,
    WIDE_MLP: _wide_mlp,
}


def bench_model(make, sparsity: float, repeats: int, batches=BATCHES, scope: str = "layer") -> dict:
    torch.manual_seed(0)
    dense, in_shape = make()
    sp.prune_(dense, sparsity, scope=scope)
    sp.harden_(dense)
    dense.eval()
    examples = {b: torch.randn(b, *in_shape) for b in batches}
    by_rule = copy.deepcopy(dense)
    sp.sparsify_(by_rule)
    timed = copy.deepcopy(dense)
    report = sp.sparsify_(timed, list(examples.values()))
    forms = {"dense": dense, "rule": by_rule, "timed": timed}
    time_call = make_timer(torch.device("cpu"))
    out = {"bytes": {name: weight_bytes(m) for name, m in forms.items()}, "ms": {}, "same_predictions": True,
           "sparse_layers": {"rule": _count_sparse(by_rule), "timed": len(report.sparse_layers)},
           "layers": len(report.layers), "timed_layouts": sorted({c.layout for c in report.layers})}
    with torch.inference_mode():
        for b, x in examples.items():
            want = dense(x).argmax(-1)
            for name in ("rule", "timed"):
                out["same_predictions"] &= bool(torch.equal(forms[name](x).argmax(-1), want))
            calls = {name: (lambda m=m, x=x: m(x)) for name, m in forms.items()}
            out["ms"][b] = {k: v * 1e3 for k, v in interleaved_medians(calls, repeats, time_call).items()}
    return out


def _count_sparse(model) -> int:
    return sum(isinstance(m, sp.SparseLinear) for m in model.modules())


def run_infer(repeats: int, models=None) -> dict:
    """Prints the table; returns the measurements ``{(model title, scope, sparsity): result}``,
    each result as `bench_model` returns it."""
    results = {}
    print("#### inference: median ms per forward (ratio dense / sparse: > 1 is faster), weights in MB\n")
    print("| model | sparsity | batch | dense | sparsify_ (rule) | sparsify_ (timed) | sparse layers (rule / timed; "
          "timed layouts) | weights dense → rule → timed | same predictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for title, make in MODELS.items():
        if models is not None and title not in models:
            continue
        patterns = [("layer", s) for s in SPARSITIES]
        if make is _wide_mlp:
            patterns += [(BLOCK_SCOPE, s) for s in BLOCK_SPARSITIES]
        for scope, sparsity in patterns:
            r = results[title, scope, sparsity] = bench_model(make, sparsity, repeats, scope=scope)
            mb = {k: v / 2**20 for k, v in r["bytes"].items()}
            pattern = f"{sparsity:.0%}" + ("" if scope == "layer" else f" in {scope[len('block:'):]} tiles")
            layouts = ", ".join(r["timed_layouts"])
            for b, ms in r["ms"].items():
                cells = [f"{ms['dense']:.3f}"] + [f"{ms[k]:.3f} ({ms['dense'] / ms[k]:.2f}×)" for k in ("rule", "timed")]
                print(f"| {title} | {pattern} | {b} | " + " | ".join(cells) +
                      f" | {r['sparse_layers']['rule']} / {r['sparse_layers']['timed']} of {r['layers']} ({layouts}) | "
                      f"{mb['dense']:.2f} → {mb['rule']:.2f} → {mb['timed']:.2f} | "
                      f"{'yes' if r['same_predictions'] else 'NO'} |", flush=True)
    return results
