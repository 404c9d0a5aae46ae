"""Sparse inference: SparseLinear, sparsify_ (rule and measured choice), load_sparsified_ (CSR
straight from the file, meta-device models, peak memory), the CSR decoding of the export format."""

import copy
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import smoothprune as sp
from smoothprune.export import load_sparse, read_tensors, save_sparse
from smoothprune.inference import SparseLinear, csr_pays_off, weight_bytes

# several tests assert which layout is faster, by timing: they run alone (`make test`'s serial pass)
pytestmark = pytest.mark.serial


def _sparse_linear(n_in, n_out, sparsity, seed=0, bias=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_out, n_in, generator=gen, dtype=dtype))
        layer.weight[torch.rand(n_out, n_in, generator=gen) < sparsity] = 0
    return layer


def _pruned_mlp(widths, sparsity):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    sp.prune_(model, sparsity)
    sp.harden_(model)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# SparseLinear
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_the_dense_layer(dtype, bias):
    dense = _sparse_linear(96, 40, 0.9, bias=bias, dtype=dtype)
    sparse = SparseLinear.from_dense(dense)
    assert sparse.weight.layout == torch.sparse_csr and sparse.weight.col_indices().dtype == torch.int32
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for shape in [(96,), (7, 96), (2, 3, 96), (0, 96)]:
        x = torch.randn(*shape, dtype=dtype)
        with torch.inference_mode():
            got, want = sparse(x), dense(x)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=tol, rtol=tol)
    back = sparse.to_dense()
    assert torch.equal(back.weight, dense.weight)
    assert abs(sparse.sparsity - float((dense.weight == 0).double().mean())) < 1e-12


def test_block_sparse_linear_equals_the_dense_layer_and_copies():
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32)
    sp.prune_(dense, 0.75, scope="block:16x16")
    sp.harden_(dense)
    assert sp.inference.block_pattern(dense.weight.detach()) == (16, 16)
    assert sp.inference.block_pattern(_sparse_linear(64, 32, 0.75).weight.detach()) is None  # unstructured
    sparse = SparseLinear.from_dense(dense, blocksize=(16, 16))
    assert sparse.layout == "bsr 16x16" and sparse.weight.col_indices().dtype == torch.int32
    x = torch.randn(5, 64)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), dense(x), atol=1e-5, rtol=1e-5)
    copied = copy.deepcopy(sparse)
    assert copied.layout == "bsr 16x16" and torch.equal(copied.weight.to_dense(), dense.weight)
    buf = io.BytesIO()
    torch.save(sparse, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False).weight.to_dense(), dense.weight)


def test_block_sparse_linear_without_bias():
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 64, bias=False)
    sp.prune_(dense, 0.75, scope="block:16x16")
    sp.harden_(dense)
    sparse = SparseLinear.from_dense(dense, blocksize=(16, 16))
    x = torch.randn(3, 2, 64)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), dense(x), atol=1e-5, rtol=1e-5)


def test_sparsify_times_block_layouts_for_block_pruned_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024))
    sp.prune_(model, 0.9, scope="block:32x32")
    sp.harden_(model)
    model.eval()
    x = torch.randn(4, 1024)
    with torch.inference_mode():
        want = model(x)
    report = sp.sparsify_(model, x, repeats=3)
    for choice in report.layers:
        assert "bsr 32x32" in choice.reason or choice.layout == "bsr 32x32", str(report)  # both forms timed
        assert choice.layout in ("csr", "bsr 32x32", "dense")
    with torch.inference_mode():
        assert torch.allclose(model(x), want, atol=1e-4, rtol=1e-5)


def test_sparse_linear_refuses_bad_input():
    sparse = SparseLinear.from_dense(_sparse_linear(16, 4, 0.5))
    with pytest.raises(ValueError, match="last dim 16"):
        sparse(torch.randn(3, 15))
    with pytest.raises(ValueError, match="dtype torch.float32, got torch.float64"):
        sparse(torch.randn(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="2-D sparse CSR or BSR"):
        SparseLinear(torch.randn(4, 16))


def test_a_sparsified_model_pickles_and_reloads_its_state_dict():
    model = _pruned_mlp([1024, 1024, 10], 0.95)
    sp.sparsify_(model)
    assert isinstance(model[0], SparseLinear) and not isinstance(model[2], SparseLinear)
    x = torch.randn(4, 1024)
    with torch.inference_mode():
        want = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.inference_mode():
        assert torch.equal(again(x), want)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight = SparseLinear.from_dense(_sparse_linear(1024, 1024, 0.5)).weight  # different nnz
    other.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.equal(other(x), want)


# ------------------------------------------------------------------------------------------------
# sparsify_
# ------------------------------------------------------------------------------------------------
def test_the_rule_matches_its_documentation():
    assert csr_pays_off((4096, 4096), 0.9) and csr_pays_off((1024, 1024), 0.9)
    assert csr_pays_off((512, 512), 0.95) and not csr_pays_off((512, 512), 0.9)
    assert not csr_pays_off((4096, 4096), 0.8) and not csr_pays_off((256, 784), 0.95)
    assert not csr_pays_off((4096, 4096), 0.95, dtype=torch.bfloat16)
    assert not csr_pays_off((4096, 4096), 0.95, device="meta")


def test_sparsify_by_rule_keeps_outputs_and_predictions_and_cuts_memory():
    model = _pruned_mlp([1024, 1024, 1024, 10], 0.9)
    dense = copy.deepcopy(model)
    x = torch.randn(64, 1024)
    report = sp.sparsify_(model)
    assert report.sparse_layers == ["0", "2"]  # 10×1024 is too small to pay off
    assert isinstance(model[4], torch.nn.Linear) and "rule" in report.layers[2].reason
    with torch.inference_mode():
        got, want = model(x), dense(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # the bar: a 90%-sparse fp32 model's resident weights after sparsify at most 25% of dense
    assert report.model_bytes == weight_bytes(model)
    assert report.model_bytes <= 0.25 * report.model_bytes_before, str(report)
    assert report.model_bytes_before == weight_bytes(dense)


def _fast_and_slow_sparse():
    """A 2048×2048 layer at 97% runs several times faster as CSR, one at 60% 2.4× slower at
    batch 256 (measured on the 2-core CPU; 1.2× at batch 1)."""
    return torch.nn.Sequential(_sparse_linear(2048, 2048, 0.97), torch.nn.ReLU(),
                               _sparse_linear(2048, 2048, 0.6, seed=1)).eval()


def test_sparsify_by_timing_keeps_dense_where_dense_is_faster():
    model = _fast_and_slow_sparse()
    report = sp.sparsify_(model, [torch.randn(1, 2048), torch.randn(256, 2048)], repeats=5)
    big, small = report.layers
    assert big.layout == "csr" and big.sparse_ms < big.dense_ms, str(report)
    assert small.layout == "dense" and small.sparse_ms > small.dense_ms and "slower" in small.reason, str(report)
    assert isinstance(model[0], SparseLinear) and type(model[2]) is torch.nn.Linear


@pytest.mark.slow  # times a ViT's layers
def test_sparsify_a_timm_vit_by_timing_keeps_its_outputs():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10)
    sp.prune_(vit, 0.95, targets=[r"re:blocks\..*\.(qkv|proj|fc1|fc2)\.weight"])
    sp.harden_(vit)
    vit.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        want = vit(x)
    report = sp.sparsify_(vit, x, repeats=3)
    assert len(report.layers) == 12 * 4 + 1  # the blocks' qkv, proj, fc1, fc2 and the head
    with torch.inference_mode():
        got = vit(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_layer_used_in_two_places_is_replaced_in_both():
    shared = _sparse_linear(1024, 1024, 0.95)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared).eval()
    x = torch.randn(3, 1024)
    with torch.inference_mode():
        want = model(x)
    report = sp.sparsify_(model)
    assert report.sparse_layers == ["0"] and model[0] is model[2] and isinstance(model[2], SparseLinear)
    with torch.inference_mode():
        assert torch.allclose(model(x), want, atol=1e-4, rtol=1e-5)


def test_sparsify_leaves_tied_and_attention_owned_layers_dense():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _sparse_linear(1024, 1024, 0.95)
            self.b = torch.nn.Linear(1024, 1024)
            self.b.weight = self.a.weight
            self.attn = torch.nn.MultiheadAttention(1024, 4)

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied().eval()
    report = sp.sparsify_(model)
    assert report.sparse_layers == []
    assert {c.name: c.reason for c in report.layers} == {"a": "tied to another module's tensor",
                                                        "b": "tied to another module's tensor"}
    assert type(model.attn.out_proj) is not SparseLinear  # read by its owner, never replaced


def test_sparsify_refuses_models_that_are_not_ready():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    sp.prune_(model, 0.9)
    with pytest.raises(ValueError, match=r"still being pruned .*sp\.harden_"):
        sp.sparsify_(model.eval())
    sp.harden_(model)
    with pytest.raises(ValueError, match=r"eval mode.*model\.eval\(\)"):
        sp.sparsify_(model.train())
    model.eval()
    with pytest.raises(ValueError, match="expected example_inputs to be a tensor"):
        sp.sparsify_(model, example_inputs="x")
    with pytest.raises(ValueError, match="at least one example input"):
        sp.sparsify_(model, example_inputs=[])
    with pytest.raises(ValueError, match="margin to be a float >= 1, got margin=0.5"):
        sp.sparsify_(model, margin=0.5)
    with pytest.raises(ValueError, match="expected an nn.Module, got dict"):
        sp.sparsify_({})


def test_sparsify_keeps_unsupported_dtypes_dense():
    model = torch.nn.Sequential(_sparse_linear(1024, 1024, 0.95)).to(torch.bfloat16).eval()
    report = sp.sparsify_(model)
    assert report.sparse_layers == [] and "bfloat16 has no CPU CSR kernel" in report.layers[0].reason


# ------------------------------------------------------------------------------------------------
# loading without going dense
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity, encoding", [(0.95, "bitmask"), (0.99, "indices")])
def test_csr_decoding_equals_the_dense_decoding(tmp_path, sparsity, encoding):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3001, 1501, generator=gen)  # several bitmask slices, rows not byte-aligned
    w[torch.rand(w.shape, generator=gen) < sparsity] = 0
    path = tmp_path / "w.safetensors"
    entries = save_sparse({"w": w, "b": torch.randn(7)}, path)
    assert entries["w"]["encoding"] == encoding
    got = read_tensors(path, as_csr=lambda name, e: name == "w")
    assert got["w"].layout == torch.sparse_csr and got["w"].col_indices().dtype == torch.int32
    assert torch.equal(got["w"].to_dense(), load_sparse(path)["w"])
    assert got["b"].layout == torch.strided


def test_csr_decoding_checks_the_bitmask(tmp_path):
    from safetensors.torch import load_file, save_file

    w = torch.zeros(64, 64)
    w[::3, ::5] = 1.0
    path = tmp_path / "w.safetensors"
    save_sparse({"w": w}, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    meta = json.loads(header["smoothprune"])
    tensors["w::bitmask"][0] ^= 0b10  # one bit more than there are values
    meta["tensors"]["w"]["sha256"]["bitmask"] = sp.export._sha256(tensors["w::bitmask"])
    meta["tensors_sha256"] = sp.export._entries_digest(meta["tensors"])
    save_file(tensors, str(path), metadata={"smoothprune": json.dumps(meta)})
    with pytest.raises(ValueError, match="bitmask that does not match"):
        read_tensors(path, as_csr=lambda name, e: True)


def _mlp(widths):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def test_load_sparsified_builds_the_sparse_model_from_the_file_on_meta(tmp_path):
    model = _pruned_mlp([1024, 1024, 1024, 10], 0.95)
    path = tmp_path / "model.safetensors"
    save_sparse(model, path)
    with torch.device("meta"):
        fresh = _mlp([1024, 1024, 1024, 10])
    report = sp.load_sparsified_(fresh.eval(), path)
    assert [c.layout for c in report.layers] == ["csr", "csr", "dense"], str(report)
    assert report.sparse_layers == ["0", "2"]
    assert not any(t.is_meta for t in list(fresh.parameters()) + list(fresh.buffers()))
    x = torch.randn(16, 1024)
    with torch.inference_mode():
        assert torch.allclose(fresh(x), model(x), atol=1e-4, rtol=1e-5)
    assert report.model_bytes == weight_bytes(fresh) and report.model_bytes < 0.15 * report.model_bytes_before


def test_load_sparsified_with_example_inputs_times_each_layer(tmp_path):
    model = _fast_and_slow_sparse()
    path = tmp_path / "model.safetensors"
    save_sparse(model, path)
    with torch.device("meta"):
        fresh = _mlp([2048, 2048, 2048])
    x = torch.randn(256, 2048)
    report = sp.load_sparsified_(fresh.eval(), path, x, repeats=5)
    assert [c.layout for c in report.layers] == ["csr", "dense"], str(report)
    assert type(fresh[2]) is torch.nn.Linear and isinstance(fresh[0], SparseLinear)
    with torch.inference_mode():  # (outputs ~300: float32 sums of ~1,400 products)
        assert torch.allclose(fresh(x), model.eval()(x), atol=1e-3, rtol=1e-5)


def test_load_sparsified_into_a_materialized_model_keeps_its_dtype(tmp_path):
    model = _pruned_mlp([1024, 1024, 10], 0.95)
    path = tmp_path / "model.safetensors"
    save_sparse(model, path)
    as_float64 = _mlp([1024, 1024, 10]).double().eval()
    report = sp.load_sparsified_(as_float64, path)
    assert report.sparse_layers == [] and "the model holds float64, the file float32" in report.layers[0].reason
    assert all(t.dtype == torch.float64 for t in as_float64.parameters())  # copied into, not replaced
    assert torch.equal(as_float64[0].weight, model[0].weight.double())
    same = _mlp([1024, 1024, 10]).eval()
    assert sp.load_sparsified_(same, path).sparse_layers == ["0"]


def test_load_sparsified_refuses_a_file_of_another_model(tmp_path):
    path = tmp_path / "model.safetensors"
    save_sparse(_pruned_mlp([1024, 1024, 10], 0.95), path)
    with torch.device("meta"):
        other = _mlp([1024, 1024, 10, 10])
    with pytest.raises(ValueError, match="does not match the model: missing"):
        sp.load_sparsified_(other.eval(), path)
    with torch.device("meta"):
        narrower = _mlp([1024, 512, 10])
    with pytest.raises(ValueError, match=r"0.weight has shape \(1024, 1024\) in the file, \(512, 1024\)"):
        sp.load_sparsified_(narrower.eval(), path)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak resident set")
@pytest.mark.slow  # fresh processes, peak memory of a large model
def test_load_sparsified_never_holds_the_dense_weights(tmp_path):
    """Peak resident memory (Linux's VmHWM, reset before the load), in a fresh process: loading a
    95%-sparse 3×4096² model (201 MB dense) into a meta-device model grows the peak by far less
    than the dense size; load_sparse (dense) grows it by more than the dense size."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in (0, 2, 4):
        w = torch.zeros(4096 * 4096)
        w[torch.randperm(w.numel(), generator=gen)[: w.numel() // 20]] = 1.0
        state[f"{i}.weight"], state[f"{i}.bias"] = w.reshape(4096, 4096), torch.zeros(4096)
    path = tmp_path / "big.safetensors"
    save_sparse(state, path)
    del state
    script = textwrap.dedent(f"""
        import sys, torch, smoothprune as sp
        def peak():  # VmHWM, the peak resident set (kB)
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        def mlp():
            return torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096),
                                       torch.nn.ReLU(), torch.nn.Linear(4096, 4096))
        with torch.device("meta"):
            model = mlp().eval()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current resident set
        before = peak()
        if sys.argv[1] == "sparse":
            sp.load_sparsified_(model, {str(path)!r})
        else:
            model.load_state_dict(sp.load_sparse({str(path)!r}), assign=True)
        print((peak() - before) * 1024)
    """)
    grown = {}
    for mode in ("sparse", "dense"):
        out = subprocess.run([sys.executable, "-c", script, mode], check=True, capture_output=True, text=True,
                             env=os.environ | {"OMP_NUM_THREADS": "1"})
        grown[mode] = int(out.stdout.split()[-1])
    dense_bytes = 3 * 4096 * 4096 * 4
    assert grown["dense"] > dense_bytes, grown
    # Sparse: the CSR arrays (20 MB), the file's pages and allocator slack (measured: ~66 MB in
    # all); decoding even one layer densely on the way would add its 67 MB on top.
    assert grown["sparse"] < 0.5 * dense_bytes, grown


@pytest.mark.slow  # the command line in a fresh process
def test_inspect_shows_what_load_sparsified_makes_of_each_tensor(tmp_path):
    w = torch.zeros(1024, 1024)
    w[:, ::20] = 1.0  # 95% sparse, 2^20 entries: CSR by the rule
    path = tmp_path / "m.safetensors"
    save_sparse({"big.weight": w, "big.bias": torch.ones(1024), "small.weight": torch.eye(10)}, path)
    out = subprocess.run([sys.executable, "-m", "smoothprune", "inspect", str(path)], capture_output=True, text=True,
                         check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "load_sparsified_" in lines["tensor"]
    assert lines["big.weight"].rstrip().endswith("csr (if Linear)")
    assert lines["big.bias"].rstrip().endswith("dense") and lines["small.weight"].rstrip().endswith("dense")


# ------------------------------------------------------------------------------------------------
# 2:4 semi-structured (CUDA): the checks that run without a GPU, and the conversion on one
# ------------------------------------------------------------------------------------------------
def _two_four_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    sp.prune_(model, scope="2:4", targets=["0.weight"])
    sp.harden_(model)
    return model.to(dtype).eval()


def test_semi_structured_refuses_what_sparse_tensor_cores_cannot_run():
    with pytest.raises(ValueError, match=r"expected 2:4 layers on a CUDA GPU .* got '0' on cpu"):
        sp.sparsify_semi_structured_(_two_four_model())
    whole = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    sp.prune_(whole, scope="2:4")  # the 10-row head too
    sp.harden_(whole)
    with pytest.raises(ValueError, match=r"multiple of 32×64 .* got '2' of shape \(10, 128\)"):
        sp.sparsify_semi_structured_(whole.eval())
    assert type(whole[0].weight) is torch.nn.Parameter  # nothing converted
    with pytest.raises(ValueError, match="with a 2:4 pattern .* got none"):
        sp.sparsify_semi_structured_(torch.nn.Sequential(_sparse_linear(64, 64, 0.1)).eval())
    with pytest.raises(ValueError, match="still being pruned"):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8))
        sp.prune_(model, scope="2:4")
        sp.sparsify_semi_structured_(model.eval())


@pytest.mark.cuda
def test_semi_structured_on_cuda_keeps_the_outputs():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 needs compute capability 8.0+")
    model = _two_four_model(torch.float16).cuda()
    with pytest.raises(ValueError, match="float16 or bfloat16 weights for 2:4, got '0' in float32"):
        sp.sparsify_semi_structured_(_two_four_model().cuda())
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want = model(x)
    assert sp.sparsify_semi_structured_(model) == ["0"]
    with torch.inference_mode():
        assert torch.allclose(model(x), want, atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------------------------------
# pointwise convolutions
# ------------------------------------------------------------------------------------------------
def _pointwise(n_in, n_out, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(n_in, n_out, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.weight[torch.rand(conv.weight.shape, generator=gen) < sparsity] = 0
    return conv


def test_sparse_pointwise_conv_equals_the_dense_one():
    conv = _pointwise(96, 40, 0.9)
    sparse = sp.inference.SparsePointwiseConv2d.from_dense(conv)
    x = torch.randn(3, 96, 5, 7)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), conv(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(sparse.to_dense().weight, conv.weight)
    assert isinstance(copy.deepcopy(sparse), sp.inference.SparsePointwiseConv2d)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 96, H, W\), got \(3, 96\)"):
        sparse(torch.randn(3, 96))


def test_pointwise_convolutions_are_sparsified_only_when_timed():
    model = torch.nn.Sequential(_pointwise(1024, 1024, 0.99), torch.nn.ReLU(), torch.nn.Conv2d(1024, 8, 3)).eval()
    x = torch.randn(2, 1024, 6, 6)
    with torch.inference_mode():
        want = model(x)
    by_rule = sp.sparsify_(copy.deepcopy(model))
    assert [c.name for c in by_rule.layers] == ["0"]  # the 3×3 convolution is not a candidate
    assert by_rule.layers[0].layout == "dense" and "only when timed" in by_rule.layers[0].reason
    report = sp.sparsify_(model, x, repeats=3)
    assert report.layers[0].reason.startswith("measured"), str(report)
    assert report.layers[0].layout == "csr", str(report)  # 99% sparse, 72 pixels: measured 2-3× faster
    assert isinstance(model[0], sp.inference.SparsePointwiseConv2d)
    with torch.inference_mode():
        assert torch.allclose(model(x), want, atol=1e-4, rtol=1e-4)
