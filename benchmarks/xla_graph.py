"""Graph and compile facts of the Dykstra path on torch_xla's CPU device.

    make bench-xla          (= PJRT_DEVICE=CPU .venv-xla/bin/python benchmarks/xla_graph.py)

For soft_topk_mag forward + backward on 32×400 (k = 28, lam = 1e-3, float32), per p and iteration
count: the size of the lowered HLO, the compile time, the median run time of the compiled graph,
and the CPU fallbacks, with the iterations as one XLA While loop (what smoothprune does) and,
for comparison, unrolled into the graph (a plain Python loop). Then a training loop: compilations
per step of a pruned MLP whose sparsity and lam change every step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("PJRT_DEVICE", "CPU")

import torch  # noqa: E402
import torch_xla  # noqa: E402
import torch_xla.debug.metrics as met  # noqa: E402

import smoothprune as sp  # noqa: E402
from smoothprune.ops import dykstra  # noqa: E402


def _compile_seconds() -> float:
    data = met.metric_data("CompileTime")
    return 0.0 if data is None else data[1] / 1e9


def _fallbacks() -> list[str]:
    return sorted(c for c in met.counter_names() if c.startswith("aten::"))


@contextlib.contextmanager
def _iterations_as(loop: str):
    """"While" (smoothprune's XLA loop) or "unrolled" (the eager Python loop, traced)."""
    original = dykstra._xla_loop
    dykstra._xla_loop = {"While": original, "unrolled": dykstra._python_loop}[loop]
    try:
        yield
    finally:
        dykstra._xla_loop = original


def graph_row(p, num_iter, loop, device, repeats):
    with _iterations_as(loop):
        return _graph_row(p, num_iter, device, repeats)


def _graph_row(p, num_iter, device, repeats):
    x = (0.05 * torch.randn(32, 400, generator=torch.Generator().manual_seed(0))).to(device).requires_grad_()

    def step():
        y = sp.soft_topk_mag(x, 28, lam=1e-3, p=p, num_iter=num_iter)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        return y, g

    met.clear_all()
    y, g = step()
    hlo_lines = torch_xla._XLAC._get_xla_tensors_hlo([y, g]).count("\n")
    torch_xla.sync()
    g.cpu()
    compile_s = _compile_seconds()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _, g = step()
        torch_xla.sync()
        g.cpu()
        times.append(time.perf_counter() - t)
    return hlo_lines, compile_s, statistics.median(times), _fallbacks()


def training_row(device, steps=8):
    """Compilations after each step of a pruned MLP, sparsity and lam changed before every step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    sp.prune_(model, 0.5, lam=1e-2, p=4 / 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    met.clear_all()
    counts = []
    for step in range(steps):
        sp.set_sparsity_(model, 0.5 + 0.05 * step)
        sp.set_lam_(model, 1e-2 / (step + 1))
        x, y = torch.randn(64, 784).to(device), torch.randint(0, 10, (64,)).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch_xla.sync()
        d = met.metric_data("CompileTime")
        counts.append(0 if d is None else int(d[0]))
    return counts, _fallbacks()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch_xla.device()
    print(f"torch {torch.__version__}, torch_xla {torch_xla.__version__}, PJRT_DEVICE={os.environ['PJRT_DEVICE']}, "
          f"{torch.get_num_threads()} threads\n")
    print("| p | iterations | loop | HLO lines | compile (s) | run, median (ms) | CPU fallbacks |")
    print("|---|---|---|---|---|---|---|")
    for p_name, p in (("2", 2.0), ("4/3", 4 / 3)):
        for num_iter in (10, 100, 300):
            for loop in ("While", "unrolled"):
                lines, compile_s, run_s, fallbacks = graph_row(p, num_iter, loop, device, args.repeats)
                print(f"| {p_name} | {num_iter} | {loop} | {lines:,} | {compile_s:.2f} | {1e3 * run_s:.2f} | "
                      f"{', '.join(fallbacks) or 'none'} |", flush=True)
    counts, fallbacks = training_row(device)
    print(f"\nPruned MLP 784-128-10 (p = 4/3, Dykstra), sparsity and lam changed before each of {len(counts)} steps: "
          f"compilations after each step {counts}; CPU fallbacks: {', '.join(fallbacks) or 'none'}")


if __name__ == "__main__":
    main()
