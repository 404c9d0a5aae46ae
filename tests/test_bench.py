"""The benchmark harness behind `smoothprune bench` (tables, not timings) and the project's goals
checked against its measurements (benchmarks/targets.py)."""

import pytest
import torch

from benchmarks import targets
from smoothprune import bench, cli


def test_ops_tables_report_every_method(capsys):
    shapes = [bench.Shape(4, 64, 8), bench.Shape(1, 300, 30)]
    results = bench.bench_ops(shapes, torch.device("cpu"), repeats=1)
    for med in results.values():
        assert med[("fwd", "mag p=2")] > 0 and med[("fwd+bwd", "hard_topk_mag")] > 0
        assert ("fwd+bwd", "torch.topk") not in med  # topk values do not reach every entry
    assert bench.print_ops_tables(results) is None
    out = capsys.readouterr().out
    assert "| 4×64 (k=8) |" in out and "Dykstra mag 100 it." in out
    assert "bars" not in out  # the library measures; the goals are the benchmarks'
    bars = targets.ops_bars(results, torch.device("cpu"))
    assert len(bars) == 3 * len(shapes) and all(isinstance(ok, bool) for ok, _ in bars.values())
    assert "fwd within 1.5× of hard_topk_mag, 4×64 (k=8)" in bars
    assert "fwd+bwd within 2.5× of hard fwd+bwd, 1×300 (k=30)" in bars
    assert len(targets.ops_bars(results, torch.device("cuda"))) == len(shapes)  # (CUDA: the forward's only)


def test_ops_goals_compare_the_worst_smooth_method_with_the_limit():
    shape = bench.Shape(1, 10, 2)
    med = {(mode, m): 1.0 for mode in ("fwd", "fwd+bwd") for m in ("hard_topk_mag", *targets.SOFT_METHODS)}
    med["fwd", "mask p=4/3"] = 1.6  # 1.6× hard and 1.6× its p = 2
    bars = targets.ops_bars({shape: med}, "cpu")
    assert bars[f"fwd within 1.5× of hard_topk_mag, {shape}"] == (False, pytest.approx(1.6))
    assert bars[f"p=4/3 within 1.3× of p=2, {shape}"] == (False, pytest.approx(1.6))
    assert bars[f"fwd+bwd within 2.5× of hard fwd+bwd, {shape}"] == (True, 1.0)
    assert targets.ops_bars({shape: med}, "cuda") == {f"fwd within 2.0× of hard_topk_mag, {shape}": (True, 1.6)}


@pytest.mark.slow  # builds and times 8 pruned and unpruned training steps
def test_step_table_reports_every_model_and_the_floor(capsys):
    results = bench.run_steps(torch.device("cpu"), repeats=1, batch=2, mlp_batch=4, only_mlp=True)
    out = capsys.readouterr().out
    assert "W'·1.0 step (ms)" in out and "W'·1.0 / unpruned" in out
    rows = [line for line in out.splitlines() if line.startswith("| MLP")]
    assert len(rows) == 2 and all(len(row.split("|")) == 12 for row in rows)
    assert sorted(results) == [("mlp", 4 / 3), ("mlp", 2.0)]
    assert all(set(r["seconds"]) == {"unpruned", "floor", "hard", "smooth"} for r in results.values())
    bars = targets.step_bars(results)
    assert sorted(bars) == ["training step ≤ 1.15× unpruned, MLP 784-32-32-10 (batch 4), p=1.33",
                            "training step ≤ 1.15× unpruned, MLP 784-32-32-10 (batch 4), p=2"]


@pytest.mark.cuda
def test_cuda_graphed_step_table(capsys):
    results = bench.run_steps(torch.device("cuda"), repeats=1, batch=2, mlp_batch=4, only_mlp=True, mode="cuda-graph")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| MLP")]
    assert len(rows) == 2 and len(results) == 2


def test_full_sort_baseline_is_the_same_operator():
    x = 0.05 * torch.randn(3, 500, dtype=torch.float64)
    import smoothprune as sp

    assert torch.equal(bench.full_sort_pav(x, 50, 2.0), sp.soft_topk_mag(x, 50, lam=bench.LAM, p=2.0))


@pytest.mark.parametrize("argv, message", [
    (["bench", "--device", "tpu"], "expected --device cpu or cuda, got 'tpu'"),
    (["bench", "--repeats", "0"], "expected --repeats >= 1, got 0"),
    (["bench", "step", "--cuda-graph"], "--cuda-graph needs --device cuda and excludes --compile"),
])
def test_bad_bench_arguments(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_bench_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="--device cuda asked for, but torch sees no CUDA device"):
        cli.main(["bench", "--device", "cuda"])


def test_infer_table_reports_every_form_and_batch(capsys):
    from smoothprune import bench_infer

    results = bench_infer.run_infer(repeats=1, models=["demo MLP 784-32-32-10"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| demo MLP")]
    assert len(rows) == len(bench_infer.SPARSITIES) * len(bench_infer.BATCHES)
    assert all(row.rstrip().endswith("| yes |") for row in rows)  # predictions equal the dense model's
    assert sorted(results) == [("demo MLP 784-32-32-10", "layer", s) for s in bench_infer.SPARSITIES]
    assert targets.infer_bars(results) == {}  # the goals are the 4096-wide MLP's


def test_infer_goals_are_the_wide_mlps():
    from smoothprune.bench_infer import BATCHES

    def result(dense_ms, sparse_ms, dense_bytes, sparse_bytes):
        ms = {b: {"dense": dense_ms, "rule": sparse_ms, "timed": sparse_ms} for b in BATCHES}
        return {"ms": ms, "bytes": {"dense": dense_bytes, "rule": sparse_bytes, "timed": sparse_bytes}}

    wide = targets.WIDE_MLP
    bars = targets.infer_bars({(wide, "layer", 0.9): result(2.0, 1.0, 100, 30),
                               (wide, "layer", 0.95): result(2.0, 1.0, 100, 20),
                               (wide, "block:32x32", 0.9): result(1.0, 2.0, 100, 90)})
    assert bars[f"{wide} at 90%: weights after sparsify_ at most 0.25 of dense"] == (False, 0.3)
    assert bars[f"{wide} at 95%, batch 32: sparsify_ at least 3× faster"] == (False, 2.0)
    assert bars[f"{wide} at 95%, batch 256: sparsify_ (timed) never slower than dense"] == (True, 2.0)
    assert len(bars) == 2 * 3 * 2 + 2  # (the block-scope run has no goal)


@pytest.mark.parametrize("what", ["ops", "step", "infer", "all"])
def test_cli_prints_tables_and_the_benchmarks_add_the_goals(monkeypatch, capsys, what):
    """`smoothprune bench` prints the tables only; benchmarks/targets.py the same, then the goals."""
    calls = []

    def fake_measure(args):
        calls.append(args.what)
        print("| table |")
        return {"device": torch.device("cpu"), "large_lam": {bench.Shape(1, 10, 2): {
            "torch.sort": 1.0, bench.LARGE_LAM_METHODS[0]: 1.2, bench.LARGE_LAM_METHODS[1]: 1.4}}}

    monkeypatch.setattr(bench, "measure", fake_measure)
    assert cli.main(["bench", what]) == 0
    assert capsys.readouterr().out == "| table |\n"
    assert targets.main([what]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| table |\n\nbars:\n")
    assert "NOT met  whole-row window within 1.3× of torch.sort, 1×10 (k=2)  (1.40×)" in out
    assert calls == [what, what]
