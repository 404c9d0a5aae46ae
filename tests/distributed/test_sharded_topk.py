"""The exact top-k across shards (smoothprune.ops.sharded) on 2 real gloo processes, against the
single-device operator on the whole rows (see `sharded_cases.soft_topk_equals_whole_rows` for
the tolerance: the operator's own change under the reordering each rank solves)."""

import pytest

from tests.distributed import sharded_cases
from tests.distributed.launch import run_ranks

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # 2 spawned processes (a gloo group) per test


def test_soft_topk_equals_the_whole_row_operator():
    run_ranks(sharded_cases.soft_topk_equals_whole_rows, range(200))


def test_kth_largest_matches_a_sort():
    run_ranks(sharded_cases.kth_largest_matches_sort, range(60))


def test_hard_mask_keeps_exactly_k():
    run_ranks(sharded_cases.hard_mask_equals_whole_rows, range(60))


def test_nan_rows_and_bad_k():
    run_ranks(sharded_cases.nan_rows_and_bad_k)


def test_traffic_is_window_sized_not_row_sized():
    run_ranks(sharded_cases.traffic_is_window_sized)


def test_public_operators_take_dtensors():
    run_ranks(sharded_cases.public_ops_on_dtensors)
