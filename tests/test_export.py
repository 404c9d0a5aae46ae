"""save_sparse / load_sparse round trips, size, atomic writes, corrupted files, the CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

import smoothprune as sp
from smoothprune import export


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(dtype)


def test_round_trip_is_exact_and_loads_strictly_into_the_original_model(tmp_path):
    model = _mlp()
    sp.prune_(model, 0.9, lam=1e-3, p=4 / 3)
    reference = _mlp()  # the un-parametrized architecture
    path = tmp_path / "m.safetensors"
    entries = sp.save_sparse(model, path)  # hardens on the way out, leaves the model parametrized
    assert sp.sparsity_report(model).tensors[0].method == "smooth"
    state = sp.load_sparse(path)
    reference.load_state_dict(state, strict=True)
    sp.harden_(model)
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value), name
    assert entries["0.weight"]["encoding"] == "bitmask" and entries["0.bias"]["encoding"] == "dense"
    assert entries["0.weight"]["sparsity"] == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_size_at_90_percent_is_at_most_15_percent_of_dense(tmp_path, dtype):
    model = _mlp(1, dtype)
    sp.prune_(model, 0.9)
    sp.harden_(model)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "dense.safetensors")
    sp.save_sparse(model, tmp_path / "sparse.safetensors")
    ratio = os.path.getsize(tmp_path / "sparse.safetensors") / os.path.getsize(tmp_path / "dense.safetensors")
    limit = 0.15 if dtype != torch.float16 and dtype != torch.bfloat16 else 0.19  # 2-byte values: mask weighs more
    assert ratio <= limit, ratio
    loaded = sp.load_sparse(tmp_path / "sparse.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_very_sparse_tensors_use_indices(tmp_path):
    w = torch.zeros(100, 100)
    w[3, 7], w[50, 1], w[99, 99] = 1.5, -2.0, 3.0
    entries = sp.save_sparse({"w": w, "dense": torch.randn(3)}, tmp_path / "s.safetensors")
    assert entries["w"]["encoding"] == "indices" and entries["w"]["nnz"] == 3
    out = sp.load_sparse(tmp_path / "s.safetensors")
    assert torch.equal(out["w"], w)


def test_legacy_parametrized_state_dict_is_hardened(tmp_path):
    """State dicts written by smoothprune <= 0.1 (torch.nn.utils.parametrize keys) still export."""
    from tests.legacy import legacy_state_dict

    model = _mlp()
    sp.prune_(model, 0.75, scope="row", lam=0.05)
    state = legacy_state_dict(model)
    assert "0.parametrizations.weight.original" in state and "0.parametrizations.weight.0.k" in state
    sp.save_sparse(state, tmp_path / "c.safetensors")
    sp.harden_(model)
    loaded = sp.load_sparse(tmp_path / "c.safetensors")
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old contents")

    def boom(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        sp.save_sparse(_mlp(), path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind


def _saved(tmp_path):
    model = _mlp()
    sp.prune_(model, 0.9)
    path = tmp_path / "m.safetensors"
    sp.save_sparse(model, path)
    return path


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="is not a valid smoothprune sparse file"):
            sp.load_sparse(path)


def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        sp.load_sparse(path)


def test_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(3)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no 'smoothprune' entry in its metadata"):
        sp.load_sparse(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="unreadable safetensors file"):
        sp.load_sparse(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        sp.load_sparse(tmp_path / "missing.safetensors")
    meta = {"smoothprune": json.dumps({"format_version": 99, "tensors": {}})}
    save_file({"w": torch.randn(3)}, tmp_path / "future.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="format_version 99, this smoothprune reads 1"):
        sp.load_sparse(tmp_path / "future.safetensors")


def test_bad_inputs_to_save():
    with pytest.raises(ValueError, match="save_sparse: expected an nn.Module or a state_dict, got int"):
        sp.save_sparse(3, "x.safetensors")
    with pytest.raises(ValueError, match="save_sparse: expected a state_dict of str -> Tensor, got entry 'a'"):
        sp.save_sparse({"a": 1}, "x.safetensors")


def test_bitmask_packing_round_trip():
    for n in (1, 7, 8, 9, 1000):
        mask = torch.rand(n) < 0.3
        assert torch.equal(export._unpack_bits(export._pack_bits(mask), n), mask)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "smoothprune", *args], capture_output=True, text=True, timeout=300)


class _Evil:
    """Unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_cli_export_and_inspect(tmp_path):
    model = _mlp()
    sp.prune_(model, 0.9)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, ckpt)
    out = tmp_path / "m.safetensors"
    run = _cli("export", str(ckpt), "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    sp.harden_(model)
    loaded = sp.load_sparse(out)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    run = _cli("inspect", str(out))
    assert run.returncode == 0 and "0.weight" in run.stdout and "bitmask" in run.stdout and "0.9000" in run.stdout
    # a checkpoint holding code: nothing of it runs, the tensors export, the rest is named
    marker = tmp_path / "ran"
    torch.save({"state_dict": model.state_dict(), "module": torch.nn.Linear(2, 2), "evil": _Evil(str(marker))},
               tmp_path / "evil.ckpt")
    run = _cli("export", str(tmp_path / "evil.ckpt"), "-o", str(tmp_path / "e.safetensors"))
    assert run.returncode == 0, run.stderr
    assert not marker.exists()
    assert "were not loaded (only tensors are needed): io.open, torch.nn.modules.linear.Linear" in run.stdout
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sp.load_sparse(tmp_path / "e.safetensors").items())
    # errors: missing file, not a checkpoint, a corrupted sparse file
    assert "no such checkpoint file" in _cli("export", str(tmp_path / "nope.ckpt"), "-o", str(out)).stderr
    (tmp_path / "text.ckpt").write_text("hello")
    run = _cli("export", str(tmp_path / "text.ckpt"), "-o", str(tmp_path / "t.safetensors"))
    assert run.returncode == 2 and "cannot read" in run.stderr and not (tmp_path / "t.safetensors").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    run = _cli("inspect", str(tmp_path / "bad.safetensors"))
    assert run.returncode == 2 and "not a valid smoothprune sparse file" in run.stderr
