"""Training-step overhead of smooth pruning: the table of `smoothprune bench step` (every Linear
weight re-parametrized as W = soft_topk_mag(W') (layer scope, 90% sparsity, lam=1e-3) against the
same model unpruned, pruned by the hard top-k, and re-parametrized as W = W' * 1.0 (the floor of
any per-step re-parametrization); a ViT-Tiny-sized timm ViT (32×32 images, patch 4) and the
paper's MLP 784-32-32-10; one process, one run, medians of interleaved repeats), then the
project's goals for it (benchmarks/targets.py).

    python benchmarks/bench_pruning_step.py [--device cuda] [--repeats 15] [--batch 64]
"""

import sys

from targets import main

if __name__ == "__main__":
    sys.exit(main(["step", *sys.argv[1:]]))
