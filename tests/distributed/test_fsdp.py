"""Pruning under FSDP2 without Lightning: `sp.prune_` then `fully_shard`, on 2 real gloo
processes, against one process training on the whole batches."""

import pytest

from tests.distributed import fsdp_cases
from tests.distributed.launch import run_ranks

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # 2 spawned processes (a gloo group) per test


@pytest.mark.parametrize("scope, sparsity, method", [("layer", 0.8, "smooth"), ("row", 0.75, "smooth"),
                                                     ("2:4", None, "smooth"), ("global", 0.8, "smooth"),
                                                     ("layer", 0.8, "hard"), ("layer", 0.8, "ste")])
def test_prune_then_fully_shard_trains_like_one_process(scope, sparsity, method):
    run_ranks(fsdp_cases.prune_then_shard_equals_one_process, scope, sparsity, method)


def test_dtensor_weights_read_like_whole_tensors():
    run_ranks(fsdp_cases.dtensor_weights_read_like_whole_tensors)


def test_export_of_a_sharded_model_with_tied_weights(tmp_path):
    run_ranks(fsdp_cases.export_of_a_sharded_model_with_tied_weights, str(tmp_path))


def test_a_pruned_layer_sharded_only_by_its_parent_is_refused():
    run_ranks(fsdp_cases.a_pruned_layer_sharded_only_by_its_parent_is_refused)
