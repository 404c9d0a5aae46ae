"""Training-step overhead of smooth pruning: every Linear weight re-parametrized as
W = soft_topk_mag(W') (layer scope, 90% sparsity, lam=1e-3) against the same model unpruned.

    python benchmarks/bench_pruning_step.py [--repeats 15] [--batch 64]

One process, one run: the models are timed in interleaved repeats (forward, backward, SGD
step) and the table reports medians and the ratio pruned / unpruned. Models: a ViT-Tiny-sized
timm ViT (embed 192, depth 12, 3 heads; 32x32 images, patch 4: 64 tokens) and the paper's MLP
784-32-32-10 (batch 128).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import smoothprune as sp


def _vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=100)


def _mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def bench(name, make, x, y, repeats, p):
    torch.manual_seed(0)
    dense = make()
    torch.manual_seed(0)
    pruned = make()
    linear_weights = [(m, "weight") for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    sp.prune_(pruned, 0.9, lam=1e-3, p=p, targets=linear_weights)
    steps = {"unpruned": _step_fn(dense, x, y), "smooth": _step_fn(pruned, x, y)}
    for fn in steps.values():
        fn()
        fn()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(m.weight.numel() for m in dense.modules() if isinstance(m, torch.nn.Linear))
    print(f"| {name} | {n_params:,} | {p:.3g} | {med['unpruned'] * 1e3:.1f} | {med['smooth'] * 1e3:.1f} | "
          f"{med['smooth'] / med['unpruned']:.2f}× |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | Linear weights | p | unpruned step (ms) | smooth-pruned step (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x_img, y_img = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 100, (args.batch,), generator=g)
    x_mnist, y_mnist = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    for p in (2.0, 4 / 3):
        bench("ViT-Tiny (32×32, patch 4)", _vit, x_img, y_img, args.repeats, p)
        bench("MLP 784-32-32-10", _mlp, x_mnist, y_mnist, args.repeats * 4, p)


if __name__ == "__main__":
    main()
