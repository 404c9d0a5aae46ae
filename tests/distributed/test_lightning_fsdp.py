"""SmoothPruning under Lightning's ModelParallelStrategy (FSDP2 in the user's configure_model) on
2 real CPU processes with gloo, against one process on the same global batches.

What is compared is what the user ends with: the exported file (rank 0 writes it from the
shards) and the sparsity. The models are float64: the data-parallel runs average gradients over
ranks in another order than one process sums them, which float64 keeps to ~1e-16 (float32's
1e-7, amplified by the smooth operator's window slope 1/lam = 100 over 32 steps, can flip an
entry at the k-th magnitude); the kept entries must be the same and the values agree to 1e-9.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

import smoothprune as sp

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # Lightning runs in 2 spawned processes per test

WORKER = os.path.join(os.path.dirname(__file__), "lightning_worker.py")


def _run(out, mode, scope, resume=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MASTER_PORT=_free_port())
    args = [sys.executable, WORKER, str(out), mode, scope] + ([resume] if resume else [])
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _assert_same_model(got_path, want_path):
    """The same kept entries and values within 1e-9, except that an entry whose magnitude ties
    the k-th one to 1e-9 (relative) may be kept by one run and the other by the other: global
    scope ranks entries of different tensors against each other, where ~1e-16 differences can
    decide a near-tie."""
    got, want = sp.load_sparse(got_path), sp.load_sparse(want_path)
    assert got.keys() == want.keys()
    for key in want:
        flipped = (got[key] != 0) != (want[key] != 0)
        if flipped.any():
            kept = torch.cat([got[key][got[key] != 0].abs(), want[key][want[key] != 0].abs()])
            threshold = float(kept.min())
            values = torch.where(got[key] != 0, got[key], want[key])[flipped].abs()
            assert int(flipped.sum()) <= 2 and bool(((values - threshold).abs() <= 1e-9 * threshold).all()), \
                (key, int(flipped.sum()), values.tolist(), threshold)
        same = ~flipped
        err = float((got[key][same] - want[key][same]).abs().max()) if same.any() else 0.0
        assert err < 1e-9, (key, err)


@pytest.mark.parametrize("scope", ["layer", "row", "2:4", "global"])
def test_model_parallel_strategy_prunes_like_one_process(tmp_path, scope):
    _run(tmp_path, "sharded", scope)
    _run(tmp_path, "single", scope)
    _assert_same_model(tmp_path / "sharded.safetensors", tmp_path / "single.safetensors")
    sharded = float((tmp_path / "sharded.report").read_text())
    single = float((tmp_path / "single.report").read_text())
    assert sharded == single and sharded > 0.45, (sharded, single)
    if scope == "global":  # one budget over all shards of all weights
        weights = [v for k, v in sp.load_sparse(tmp_path / "sharded.safetensors").items() if k.endswith("weight")]
        assert sum(int((w != 0).sum()) for w in weights) == round(0.2 * sum(w.numel() for w in weights))


def test_resume_from_a_distributed_checkpoint_continues_identically(tmp_path):
    """The run writes a distributed checkpoint after epoch 0 (step 16: the end of the ramp, with
    lam, the latents and the momentum in flight); a second fit resumes from it and ends with
    the same model as the uninterrupted run, bit for bit."""
    _run(tmp_path, "sharded", "layer", "save")
    assert (tmp_path / "epoch=0.ckpt").is_dir()  # a distributed checkpoint folder
    os.replace(tmp_path / "sharded.safetensors", tmp_path / "uninterrupted.safetensors")
    _run(tmp_path, "sharded", "layer", "resume")
    assert (tmp_path / "sharded.start").read_text().strip() == "16"
    got, want = sp.load_sparse(tmp_path / "sharded.safetensors"), sp.load_sparse(tmp_path / "uninterrupted.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
