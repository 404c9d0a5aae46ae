"""benchmarks/xla_graph.py (`make bench-xla`, the README's graph table) runs, briefly."""

from benchmarks import xla_graph


def test_graph_rows_and_training_row(xla, device):
    lines = {}
    for loop in ("While", "unrolled"):
        for num_iter in (2, 6):
            hlo_lines, compile_s, run_s, fallbacks = xla_graph.graph_row(2.0, num_iter, loop, device, repeats=1)
            assert compile_s > 0 and run_s > 0 and fallbacks == []
            lines[loop, num_iter] = hlo_lines
    assert lines["While", 2] == lines["While", 6]
    assert lines["unrolled", 6] > lines["unrolled", 2]
    counts, fallbacks = xla_graph.training_row(device, steps=3)
    assert counts[1] == counts[2] and fallbacks == []
