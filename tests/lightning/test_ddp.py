"""SmoothPruning under real Lightning DDP: 2 CPU processes, gloo."""

import os
import subprocess
import sys

import pytest
import torch

import smoothprune as sp


@pytest.mark.slow  # Lightning DDP in 2 spawned processes
@pytest.mark.serial
def test_masks_and_weights_are_identical_on_every_rank(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("mid", "final"):
        r0 = torch.load(tmp_path / f"{stage}_rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{stage}_rank1.pt", weights_only=True)
        assert r0.keys() == r1.keys() and len(r0) > 0
        for key in r0:
            assert torch.equal(r0[key], r1[key]), (stage, key)
    # global scope: one budget across tensors, the same on every rank; the export is rank zero's
    final = torch.load(tmp_path / "final_rank0.pt", weights_only=True)
    weights = [v for k, v in final.items() if k.endswith("weight")]
    assert sum(int((w != 0).sum()) for w in weights) == round(0.1 * sum(w.numel() for w in weights))
    exported = sp.load_sparse(tmp_path / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in final.items())
