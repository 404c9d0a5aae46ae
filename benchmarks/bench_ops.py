"""Operator benchmark (the same as `smoothprune bench ops`): smooth top-k against hard_topk_mag,
torch.topk, torch.sort, our full-sort PAV, our Dykstra and (when installed) torchsort; one
process, one run, medians and ratios. See smoothprune/bench.py for the method.

    python benchmarks/bench_ops.py [--device cuda] [--repeats 20] [--threads N] [--quick]
"""

import sys

from smoothprune.bench import main

if __name__ == "__main__":
    sys.exit(main(["ops", *sys.argv[1:]]))
