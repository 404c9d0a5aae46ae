"""Side-by-side benchmarks of the smooth top-k operators and of a smoothly pruned training step.

    smoothprune bench ops  [--device cpu|cuda] [--repeats 20] [--threads N] [--quick]
    smoothprune bench step [--device cpu|cuda] [--repeats 15] [--compile | --cuda-graph]

Method: one process, one run. Every method is timed once per repeat, in turn, so machine noise
hits all of them alike; a timed call shorter than 2 ms is repeated inside the timing until 2 ms
have passed (CUDA: synchronized before and after). Tables report medians and ratios to the
baselines measured in the same run. Inputs ~ N(0, 0.05²) (weights at pruning scale), float32.

This module measures and prints tables, nothing else. The project's performance goals live with
the benchmarks: ``python benchmarks/bench_ops.py`` and ``python benchmarks/bench_pruning_step.py``
print the same tables, then check them against the goals of benchmarks/targets.py.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

import smoothprune as sp
from smoothprune.ops.dykstra import dykstra_soft_topk

__all__ = [
    "LAM", "Shape", "SHAPES", "QUICK_SHAPES", "STEP_MODES", "make_timer", "interleaved_medians", "full_sort_pav",
    "bench_ops", "bench_large_lam", "print_ops_tables", "print_large_lam_table", "capture_cuda_graph", "bench_step",
    "run_steps", "add_arguments", "check_arguments", "measure", "run", "main",
]

LAM = 1e-3
VIT_TINY_LINEAR = 12 * (192 * 576 + 192 * 192 + 192 * 768 + 768 * 192)  # 5,308,416 weights


@dataclass(frozen=True)
class Shape:
    rows: int
    n: int
    k: int
    label: str = ""

    def __str__(self):
        return self.label or f"{self.rows}×{self.n:,} (k={self.k:,})"


SHAPES = [
    Shape(1, 25_088, 2_509),
    Shape(1, 4_096, 410),
    Shape(32, 400, 28),
    Shape(512, 100, 3),
    Shape(256, 1_024, 102),
    Shape(1, 2_359_296, 235_930),
    Shape(1, VIT_TINY_LINEAR, VIT_TINY_LINEAR // 10, f"global: ViT-Tiny Linear, 1×{VIT_TINY_LINEAR:,} (k=10%)"),
]
QUICK_SHAPES = SHAPES[:5]


def make_timer(device: torch.device, min_seconds: float = 2e-3):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def time_call(fn) -> float:
        calls = 0
        sync()
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return elapsed / calls

    return time_call


def interleaved_medians(calls: dict, repeats: int, time_call, warmups: int = 1) -> dict:
    """{key: median seconds}: every call timed once per repeat, in turn, after `warmups` calls."""
    for fn in calls.values():
        for _ in range(warmups):
            fn()  # (and CUDA lazy initialisation)
    timings = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            timings[key].append(time_call(fn))
    return {key: statistics.median(v) for key, v in timings.items()}


def full_sort_pav(x, k, p):
    # our own PAV on whole sorted rows (the selection shortcut switched off)
    k_t, lam_t = torch.tensor(k), torch.tensor(LAM, dtype=torch.float64)
    return torch.ops.smoothprune.soft_topk_forward(x, k_t, lam_t, p, True, True, True)[0]


def _operators(k: int):
    """name -> (x -> output); every output is differentiable in x except the sort indices."""
    ops = {
        "hard_topk_mag": lambda t: sp.hard_topk_mag(t, k),
        "torch.topk": lambda t: torch.topk(t.abs(), k, sorted=False).values,
        "torch.sort": lambda t: torch.sort(t, dim=-1, descending=True).values,
        "mag p=2": lambda t: sp.soft_topk_mag(t, k, lam=LAM, p=2),
        "mag p=4/3": lambda t: sp.soft_topk_mag(t, k, lam=LAM, p=4 / 3),
        "mask p=2": lambda t: sp.soft_topk_mask(t, k, lam=LAM, p=2),
        "mask p=4/3": lambda t: sp.soft_topk_mask(t, k, lam=LAM, p=4 / 3),
        "full-sort PAV mag p=2": lambda t: full_sort_pav(t, k, 2.0),
        "Dykstra mag 10 it.": lambda t: dykstra_soft_topk(t, k, LAM, 2.0, True, True, 10),
        "Dykstra mag 100 it.": lambda t: dykstra_soft_topk(t, k, LAM, 2.0, True, True, 100),
    }
    try:  # torchsort (PAV-based soft sort, Blondel et al. 2020) when installed
        import torchsort

        ops["torchsort soft_sort"] = lambda t: torchsort.soft_sort(t, regularization_strength=LAM)
    except ImportError:
        pass
    return ops


def bench_ops(shapes, device: torch.device, repeats: int, skip_slow_on_long_rows: bool = True):
    """Returns {shape: {(mode, method): median seconds}} for mode in ("fwd", "fwd+bwd")."""
    time_call = make_timer(device)
    results = {}
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        x = (0.05 * torch.randn(shape.rows, shape.n, generator=gen)).to(device)
        grad = torch.randn(shape.rows, shape.n, generator=gen).to(device)
        xg = x.clone().requires_grad_()
        ops = _operators(shape.k)
        if skip_slow_on_long_rows and shape.n > 100_000 and device.type == "cpu":
            # 100 Dykstra iterations over millions of entries take seconds per call on CPU
            ops.pop("Dykstra mag 100 it.")
        calls = {}
        for name, op in ops.items():
            calls[("fwd", name)] = lambda op=op: op(x)

            def fwd_bwd(op=op):
                xg.grad = None
                op(xg).backward(grad)

            if name != "torch.topk":  # topk's values alone do not reach every entry
                calls[("fwd+bwd", name)] = fwd_bwd
        results[shape] = interleaved_medians(calls, repeats, time_call)
    return results


LARGE_LAM_METHODS = ("mag p=2, lam=1e3", "mask p=2, lam=1e3")


def bench_large_lam(device: torch.device, repeats: int):
    """Whole-row pooling (lam so large that the window is the whole row) against torch.sort."""
    time_call = make_timer(device)
    out = {}
    for shape in (Shape(1, 25_088, 2_509), Shape(256, 1_024, 102)):
        x = (0.05 * torch.randn(shape.rows, shape.n, generator=torch.Generator().manual_seed(0))).to(device)
        calls = {
            "torch.sort": lambda: torch.sort(x, dim=-1, descending=True),
            LARGE_LAM_METHODS[0]: lambda: sp.soft_topk_mag(x, shape.k, lam=1e3, p=2),
            LARGE_LAM_METHODS[1]: lambda: sp.soft_topk_mask(x, shape.k, lam=1e3, p=2),
        }
        out[shape] = interleaved_medians(calls, repeats, time_call)
    return out


def _ms(t: float) -> str:
    return f"{t * 1e3:.3f}" if t < 1 else f"{t * 1e3:,.0f}"


def print_ops_tables(results) -> None:
    """Markdown tables of `bench_ops`'s results: medians and ratios to hard_topk_mag."""
    for mode in ("fwd", "fwd+bwd"):
        names = list(dict.fromkeys(m for shape_res in results.values() for (md, m) in shape_res if md == mode))
        print(f"\n#### {mode}: median ms (ratio to hard_topk_mag {mode})\n")
        print("| shape | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for shape, med in results.items():
            hard = med[(mode, "hard_topk_mag")]
            cells = []
            for m in names:
                t = med.get((mode, m))
                if t is None:
                    cells.append("–")
                    continue
                cells.append(_ms(t) if m == "hard_topk_mag" else f"{_ms(t)} ({t / hard:.2f}×)")
            print(f"| {shape} | " + " | ".join(cells) + " |")


def print_large_lam_table(results) -> None:
    """The markdown table of `bench_large_lam`'s results: medians and ratios to torch.sort."""
    print("\n#### whole-row pooling (lam = 1e3): median ms (ratio to torch.sort)\n")
    print("| shape | torch.sort | mag p=2 | mask p=2 |")
    print("|---|---|---|---|")
    for shape, med in results.items():
        sort_t = med["torch.sort"]
        cells = [_ms(sort_t)] + [f"{_ms(med[m])} ({med[m] / sort_t:.2f}×)" for m in LARGE_LAM_METHODS]
        print(f"| {shape} | " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------------------------
# training step
# ----------------------------------------------------------------------------------------------
def _vit(num_classes=100):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                             num_classes=num_classes)


def _mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 10))


STEP_MODES = ("eager", "compile", "cuda-graph")


def _step_fn(model, x, y, mode: str = "eager"):
    """One SGD step of ``model`` on the batch (x, y): eager; with forward + backward compiled
    (the optimizer step stays eager); or the whole step captured once in a CUDA graph and
    replayed (PyTorch's whole-network capture: static inputs, gradients in the graph's pool)."""
    if mode not in STEP_MODES:
        raise ValueError(f"bench step: expected a mode in {STEP_MODES}, got {mode!r}")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def forward_backward():
        torch.nn.functional.cross_entropy(model(x), y).backward()

    if mode == "compile":
        forward_backward = torch.compile(forward_backward)

    def step():
        opt.zero_grad(set_to_none=True)
        forward_backward()
        opt.step()

    if mode != "cuda-graph":
        return step

    def forward_backward_step():
        forward_backward()
        opt.step()

    graph, _ = capture_cuda_graph(forward_backward_step, model.parameters())
    return graph.replay


def capture_cuda_graph(fn, params, warmups: int = 3):
    """Captures ``fn()`` in a CUDA graph, PyTorch's whole-network way: ``warmups`` calls on a side
    stream first (as capture requires), then the gradients of ``params`` cleared, so that the
    captured backward allocates them in the graph's pool. Returns the graph and what ``fn``
    returned while captured (static tensors that every replay rewrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    for param in params:
        param.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class _TimesOne(torch.nn.Module):
    """``W = W' * 1.0``: the cheapest parametrization with a backward (one autograd op per
    weight), the floor under any per-step re-parametrization of the weights."""

    def forward(self, w):
        return w * 1.0


def bench_step(make, x, y, repeats: int, p: float, device: torch.device, mode: str = "eager"):
    """Median seconds of an SGD step: unpruned; every Linear weight parametrized as ``W' * 1.0``
    (the floor); every Linear weight pruned (90%, layer scope) by the hard top-k (torch.topk) or
    by the smooth operator."""
    time_call = make_timer(device, min_seconds=0.0)
    models = {}
    for name in ("unpruned", "floor", "hard", "smooth"):
        torch.manual_seed(0)
        models[name] = make().to(device)
        linear_weights = [(m, "weight") for m in models[name].modules() if isinstance(m, torch.nn.Linear)]
        if name == "floor":
            for module, tensor_name in linear_weights:
                torch.nn.utils.parametrize.register_parametrization(module, tensor_name, _TimesOne())
        elif name != "unpruned":
            sp.prune_(models[name], 0.9, lam=LAM, p=p, method=name, targets=linear_weights)
    steps = {name: _step_fn(model, x, y, mode) for name, model in models.items()}
    medians = interleaved_medians(steps, repeats, time_call, warmups=2)
    n_params = sum(m.weight.numel() for m in models["unpruned"].modules() if isinstance(m, torch.nn.Linear))
    return n_params, medians


def run_steps(device: torch.device, repeats: int, batch: int, mlp_batch: int = 128, only_mlp: bool = False,
              mode: str = "eager") -> dict:
    """Prints the table of `bench_step` for the ViT and the MLP at p = 2 and 4/3; returns
    ``{(model, p): {"label": row label, "params": Linear weights, "seconds": medians}}`` with
    model "vit" or "mlp" and the medians of `bench_step`."""
    results = {}
    print("| model | Linear weights | p | unpruned step (ms) | W'·1.0 step (ms) | hard-pruned step (ms) | "
          "smooth-pruned step (ms) | smooth / unpruned | hard / unpruned | W'·1.0 / unpruned |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x_img = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y_img = torch.randint(0, 100, (batch,), generator=g).to(device)
    x_mnist = torch.randn(mlp_batch, 1, 28, 28, generator=g).to(device)
    y_mnist = torch.randint(0, 10, (mlp_batch,), generator=g).to(device)
    for p in (2.0, 4 / 3):
        for model, name, make, x, y, reps in (
            ("vit", f"ViT-Tiny (32×32, patch 4, batch {batch})", _vit, x_img, y_img, repeats),
            ("mlp", f"MLP 784-32-32-10 (batch {mlp_batch})", _mlp, x_mnist, y_mnist, repeats * 4),
        ):
            if only_mlp and model == "vit":
                continue
            n_params, med = bench_step(make, x, y, reps, p, device, mode)
            print(f"| {name} | {n_params:,} | {p:.3g} | {med['unpruned'] * 1e3:.2f} | {med['floor'] * 1e3:.2f} | "
                  f"{med['hard'] * 1e3:.2f} | {med['smooth'] * 1e3:.2f} | {med['smooth'] / med['unpruned']:.2f}× | "
                  f"{med['hard'] / med['unpruned']:.2f}× | {med['floor'] / med['unpruned']:.2f}× |")
            results[model, p] = {"label": name, "params": n_params, "seconds": med}
    return results


def _header(device: torch.device) -> str:
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"CPU, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, smoothprune {sp.__version__} ({sp._native.build_info()}), {hw}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["ops", "step", "infer", "all"], nargs="?", default="ops",
                        help="operators (default), training step, sparse inference (CPU), or all three")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per method (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="operators: only the five short shapes")
    parser.add_argument("--batch", type=int, default=64, help="step: ViT batch size (default 64)")
    parser.add_argument("--mlp-batch", type=int, default=128, help="step: MLP batch size (default 128, the paper's)")
    parser.add_argument("--only-mlp", action="store_true", help="step: the MLP only")
    parser.add_argument("--compile", action="store_true", help="step: torch.compile forward + backward")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="step: capture the whole step in a CUDA graph and time its replays (cuda only)")


def check_arguments(args) -> torch.device:
    """The device of the parsed arguments; SystemExit naming the problem on a bad combination."""
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise SystemExit(f"smoothprune bench: expected --device cpu or cuda, got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("smoothprune bench: --device cuda asked for, but torch sees no CUDA device")
    if args.repeats < 1:
        raise SystemExit(f"smoothprune bench: expected --repeats >= 1, got {args.repeats}")
    if args.cuda_graph and (device.type != "cuda" or args.compile):
        raise SystemExit("smoothprune bench: --cuda-graph needs --device cuda and excludes --compile")
    if args.what == "infer" and device.type != "cpu":
        raise SystemExit("smoothprune bench infer: CSR inference runs on the CPU: use --device cpu")
    return device


def measure(args) -> dict:
    """Runs what the parsed arguments ask for and prints its tables. Returns the measurements:
    ``{"device": device}`` and, as measured, ``"ops"`` (`bench_ops`), ``"large_lam"``
    (`bench_large_lam`), ``"step"`` (`run_steps`), ``"infer"`` (`bench_infer.run_infer`)."""
    device = check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(_header(device))
    measured = {"device": device}
    if args.what in ("ops", "all"):
        shapes = QUICK_SHAPES if args.quick else SHAPES
        measured["ops"] = bench_ops(shapes, device, args.repeats)
        print_ops_tables(measured["ops"])
        if device.type == "cpu":
            measured["large_lam"] = bench_large_lam(device, args.repeats)
            print_large_lam_table(measured["large_lam"])
    if args.what in ("step", "all"):
        print()
        mode = "compile" if args.compile else "cuda-graph" if args.cuda_graph else "eager"
        measured["step"] = run_steps(device, args.repeats, args.batch, args.mlp_batch, args.only_mlp, mode)
    if args.what in ("infer", "all"):
        from smoothprune.bench_infer import run_infer

        print()
        if device.type == "cpu":
            measured["infer"] = run_infer(args.repeats)
        else:
            print("(sparse inference: skipped, CSR inference runs on the CPU)")
    return measured


def run(args) -> int:
    measure(args)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="smoothprune bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
