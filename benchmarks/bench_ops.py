"""Operator benchmark: the tables of `smoothprune bench ops` (smooth top-k against hard_topk_mag,
torch.topk, torch.sort, our full-sort PAV, our Dykstra and, when installed, torchsort; one
process, one run, medians and ratios; see smoothprune/bench.py for the method), then the
project's goals for them (benchmarks/targets.py).

    python benchmarks/bench_ops.py [--device cuda] [--repeats 20] [--threads N] [--quick]
"""

import sys

from targets import main

if __name__ == "__main__":
    sys.exit(main(["ops", *sys.argv[1:]]))
