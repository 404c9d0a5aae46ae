"""The benchmark harness behind `smoothprune bench` (tables and bar checks; not timings)."""

import pytest
import torch

from smoothprune import bench, cli


def test_ops_tables_report_every_method_and_bar(capsys):
    shapes = [bench.Shape(4, 64, 8), bench.Shape(1, 300, 30)]
    results = bench.bench_ops(shapes, torch.device("cpu"), repeats=1)
    for med in results.values():
        assert med[("fwd", "mag p=2")] > 0 and med[("fwd+bwd", "hard_topk_mag")] > 0
        assert ("fwd+bwd", "torch.topk") not in med  # topk values do not reach every entry
    bars = bench.print_ops_tables(results, torch.device("cpu"))
    out = capsys.readouterr().out
    assert "| 4×64 (k=8) |" in out and "Dykstra mag 100 it." in out
    assert len(bars) == 3 * len(shapes) and all(isinstance(ok, bool) for ok, _ in bars.values())


def test_step_table_reports_every_model_and_the_floor(capsys):
    bars = bench.run_steps(torch.device("cpu"), repeats=1, batch=2, mlp_batch=4, only_mlp=True)
    out = capsys.readouterr().out
    assert "W'·1.0 step (ms)" in out and "W'·1.0 / unpruned" in out
    rows = [line for line in out.splitlines() if line.startswith("| MLP")]
    assert len(rows) == 2 and all(len(row.split("|")) == 12 for row in rows)
    assert len(bars) == 2


@pytest.mark.cuda
def test_cuda_graphed_step_table(capsys):
    bars = bench.run_steps(torch.device("cuda"), repeats=1, batch=2, mlp_batch=4, only_mlp=True, mode="cuda-graph")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| MLP")]
    assert len(rows) == 2 and len(bars) == 2


def test_full_sort_baseline_is_the_same_operator():
    x = 0.05 * torch.randn(3, 500, dtype=torch.float64)
    import smoothprune as sp

    assert torch.equal(bench._full_sort_pav(x, 50, 2.0), sp.soft_topk_mag(x, 50, lam=bench.LAM, p=2.0))


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

    bars = bench_infer.run_infer(repeats=1, models=["demo MLP 784-32-32-10"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| demo MLP")]
    assert len(rows) == len(bench_infer.SPARSITIES) * len(bench_infer.BATCHES)
    assert all(row.rstrip().endswith("| yes |") for row in rows)  # predictions equal the dense model's
    assert bars == {}  # the bars are the 4096-wide MLP's
