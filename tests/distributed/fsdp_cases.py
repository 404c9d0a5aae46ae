"""Worker functions of test_fsdp.py: pruning under FSDP2 (`fully_shard`) on 2 gloo processes."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import smoothprune as sp
from smoothprune.pruning import pruned_tensors


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def batches(steps: int, world: int):
    """The same global batches on every rank: rank r trains on rows r::world."""
    g = torch.Generator().manual_seed(123)
    for _ in range(steps):
        yield torch.randn(8 * world, 20, generator=g), torch.randint(0, 4, (8 * world,), generator=g)


def train(model, steps: int, world: int, rank: int, shard: bool, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in batches(steps, world):
        if shard:  # each rank its part of the batch; FSDP2 averages the gradients
            x, y = x[rank::world], y[rank::world]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_close(got, want, key):
    err = float((got - want).abs().max()) if got.numel() else 0.0
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), f"{key}: max |diff| {err:.3g}, kept {int((got != 0).sum())} vs {int((want != 0).sum())}"


def full_state(model) -> dict:
    """The model's state_dict as plain tensors (a sharded one gathered, for the comparison only)."""
    out = {}
    for key, value in model.state_dict().items():
        out[key] = value.full_tensor() if hasattr(value, "full_tensor") else value
    return out


def prune_then_shard_equals_one_process(rank: int, world: int, scope: str, sparsity, method: str) -> None:
    kw = dict(lam=1e-2, p=4 / 3, scope=scope, method=method, relative_lam=True)
    reference = make_mlp()
    sp.prune_(reference, sparsity, **kw)
    train(reference, 6, world, rank, shard=False)

    model = make_mlp()
    sp.prune_(model, sparsity, **kw)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    train(model, 6, world, rank, shard=True)

    # the latents are sharded DTensors; reading, reporting and the state_dict work on them
    for _, spec, module, name in pruned_tensors(model):
        latent = module._parameters[name]
        assert type(latent).__name__ == "DTensor", type(latent)
    report = sp.sparsity_report(model)
    ref_report = sp.sparsity_report(reference)
    assert abs(report.hard_total - ref_report.hard_total) < 1e-12, (report.hard_total, ref_report.hard_total)
    got, want = full_state(model), reference.state_dict()
    for key in want:
        assert_close(got[key], want[key], key)
        if key.endswith("weight"):  # the same entries are kept
            assert torch.equal(got[key] != 0, want[key] != 0), key
    # hardening in place keeps the DTensor Parameters
    sp.harden_(model)
    sp.harden_(reference)
    assert not pruned_tensors(model)
    got = full_state(model)
    for key, value in reference.state_dict().items():
        assert_close(got[key], value, key)
    total = sum(int((v != 0).sum()) for k, v in got.items() if k.endswith("weight"))
    numel = sum(v.numel() for k, v in got.items() if k.endswith("weight"))
    if scope == "global":
        assert total == round((1 - sparsity) * numel), (total, numel)


def dtensor_weights_read_like_whole_tensors(rank: int, world: int) -> None:
    """A pruned weight held as a DTensor (a tensor-parallel Shard(0) / Shard(1) weight that is
    never gathered, or a replicated one): the pruned weight and its gradient equal those of the
    whole tensor, for groups inside a shard (rows of Shard(0), 2:4) and across shards (a whole
    tensor, rows of Shard(1)); groups that a shard boundary would cut are refused."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from smoothprune.nn.parametrizations import PARAMETRIZATIONS

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)
    w = torch.randn(8, 16, generator=g, dtype=torch.float64)
    grad = torch.randn(8, 16, generator=g, dtype=torch.float64)
    groups = {"layer": 128, "row": 16, "2:4": 4}
    for scope, group in groups.items():
        for method in ("smooth", "hard"):
            spec = PARAMETRIZATIONS[method](w.shape, group, 0.5, 0.05, 4 / 3, scope)
            whole = w.clone().requires_grad_()
            want = spec(whole)
            want.backward(grad)
            for placement in (Shard(0), Shard(1), Replicate()):
                dt = distribute_tensor(w, mesh, [placement]).requires_grad_()
                got = spec(dt)
                assert type(got).__name__ == "DTensor" and got.placements == (placement,)
                got.backward(distribute_tensor(grad, mesh, [placement]))
                assert torch.allclose(got.full_tensor(), want.detach(), rtol=1e-12, atol=1e-14), (scope, method, placement)
                assert torch.allclose(dt.grad.full_tensor(), whole.grad, rtol=1e-12, atol=1e-12), (scope, method, placement)
                hard = spec.hard(dt.detach())
                assert torch.equal(hard.full_tensor(), spec.hard(w)), (scope, method, placement)
    cut = PARAMETRIZATIONS["smooth"]((8, 12), 4, 0.5, 0.05, 4 / 3, "2:4")  # 6 columns per rank: 4-groups cut
    try:
        cut(distribute_tensor(torch.randn(8, 12, dtype=torch.float64), mesh, [Shard(1)]))
    except NotImplementedError as exc:
        assert "groups of 4 entries of a (8, 12) tensor sharded along dim 1 would be cut" in str(exc)
    else:
        raise AssertionError("groups cut by the shards were not refused")


def export_of_a_sharded_model_with_tied_weights(rank: int, world: int, out: str) -> None:
    """`save_sparse` of an FSDP2-sharded, pruned model whose one Linear is used twice (its weight
    under two keys): every rank calls it, rank 0 writes the tensor once and its alias."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(16, 16)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.ReLU(), torch.nn.Linear(16, 4))
    sp.prune_(model, 0.75, lam=1e-2)
    reference = copy.deepcopy(model)
    fully_shard(shared)
    fully_shard(model[4])
    fully_shard(model)
    sp.harden_(model)
    sp.harden_(reference)
    path = f"{out}/model.safetensors"
    sp.save_sparse(model, path)
    dist.barrier()
    if rank == 0:
        loaded = sp.load_sparse(path)
        want = reference.state_dict()
        assert loaded.keys() == want.keys()
        for key in want:
            assert torch.equal(loaded[key], want[key]), key
        assert int((loaded["0.weight"] != 0).sum()) == 64


def a_pruned_layer_sharded_only_by_its_parent_is_refused(rank: int, world: int) -> None:
    from smoothprune.lightning.callback import _check_fsdp_wraps_each_pruned_module

    model = make_mlp()
    sp.prune_(model, 0.8)
    fully_shard(model)  # one group around every Linear: FSDP2 would read the pruned weight as its Parameter
    try:
        _check_fsdp_wraps_each_pruned_module(model)
    except ValueError as exc:
        assert "the pruned module '0' is sharded by fully_shard('the model') around it" in str(exc), str(exc)
    else:
        raise AssertionError("not refused")
    wrapped = make_mlp()
    sp.prune_(wrapped, 0.8)
    for layer in wrapped:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(wrapped)
    _check_fsdp_wraps_each_pruned_module(wrapped)  # each pruned layer wrapped itself: fine
