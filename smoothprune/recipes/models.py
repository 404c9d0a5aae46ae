"""The recipes' models: the paper's MLP, a timm ViT, and a small V-MoE (a timm ViT whose MLP
blocks are replaced by expert-choice mixtures of experts)."""

from __future__ import annotations

import os

import torch

from smoothprune.nn.router import SparseMoE


def mlp(*, in_chans: int, image_size: int, num_classes: int, hidden: tuple[int, ...] = (32, 32)) -> torch.nn.Module:
    """``Flatten -> Linear -> ReLU -> ... -> Linear``: 784-32-32-10 for MNIST (paper §6)."""
    hidden = list(hidden)
    if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"model.hidden: expected a non-empty list of ints >= 1, got {hidden!r}")
    sizes = [in_chans * image_size * image_size, *hidden]
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(sizes[-1], num_classes))
    return torch.nn.Sequential(*layers)


def vit(*, in_chans: int, image_size: int, num_classes: int, patch_size: int, embed_dim: int = 192,
        depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, timm_name: str = "vit_tiny_patch16_224",
        checkpoint: str | None = None, drop_path_rate: float = 0.0) -> torch.nn.Module:
    """A timm VisionTransformer (ViT-Tiny-sized by default) for ``image_size`` images.

    Args:
        patch_size: must divide ``image_size`` (e.g. 7 or 4 for 28×28 digits).
        timm_name: the timm architecture whose pretrained configuration a checkpoint belongs to.
        checkpoint: a local pretrained weights file (``.pth``, ``.bin``, ``.safetensors`` or
            ``.npz``) loaded through timm (``pretrained_cfg_overlay=dict(file=...)``): the patch
            embedding and position embeddings are resampled to this patch and image size, and
            the classifier is re-initialized when the class count differs. ``None``: random init.
    """
    import timm

    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or image_size % patch_size:
        raise ValueError(f"model.patch_size: expected an int dividing data.image_size={image_size}, got {patch_size!r}")
    if checkpoint is not None and not os.path.isfile(str(checkpoint)):
        raise FileNotFoundError(f"model.checkpoint: no such file {os.path.abspath(str(checkpoint))!r}")
    kwargs = dict(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                  embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                  drop_path_rate=drop_path_rate)
    if checkpoint is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)), **kwargs)


def moe_block_indices(depth: int, moe_blocks) -> list[int]:
    """Which transformer blocks become MoE: ``"last2"``, ``"every_other"`` (odd blocks, as in
    V-MoE) or an explicit list of block indices."""
    if moe_blocks == "last2":
        return list(range(max(depth - 2, 0), depth))
    if moe_blocks == "every_other":
        return list(range(1, depth, 2))
    if isinstance(moe_blocks, (list, tuple)) and moe_blocks and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in moe_blocks):
        return sorted(set(moe_blocks))
    raise ValueError(f"model.moe_blocks: expected 'last2', 'every_other' or a list of block indices in "
                     f"[0, {depth - 1}], got {moe_blocks!r}")


def vmoe(*, router: dict, num_experts: int = 8, moe_blocks="last2", dispatch: str = "gather", **vit_kwargs) -> torch.nn.Module:
    """A small V-MoE: a timm ViT whose chosen MLP blocks are `SparseMoE` layers with an
    expert-choice router. Each image's tokens form one routing group.

    Args:
        router: the router config (``topk``, ``capacity_factor``, ``lam``, ``p``, ``num_iter``).
        num_experts: experts per MoE layer; each has the replaced MLP's shape.
        moe_blocks: see `moe_block_indices`.
        dispatch: ``"gather"`` or ``"einsum"`` (the reference formulation).
        **vit_kwargs: passed to `vit`. With a ``checkpoint``, every expert starts as a copy of the
            pretrained MLP it replaces (sparse upcycling).
    """
    router = dict(router)
    if router.get("topk") in (None, "none"):
        raise ValueError("router: model=vmoe needs a router; choose router=hard, router=smooth_dykstra or "
                         "router=smooth_pav")
    router_kwargs = {k: router[k] for k in ("topk", "capacity_factor", "lam", "p", "num_iter") if k in router}
    model = vit(**vit_kwargs)
    for i in moe_block_indices(len(model.blocks), moe_blocks):
        dense = model.blocks[i].mlp
        moe = SparseMoE(dense.fc1.in_features, dense.fc1.out_features, num_experts, dispatch=dispatch,
                        **router_kwargs)
        if vit_kwargs.get("checkpoint") is not None:
            with torch.no_grad():
                moe.w1.copy_(dense.fc1.weight.t().expand_as(moe.w1))
                moe.b1.copy_(dense.fc1.bias.expand_as(moe.b1))
                moe.w2.copy_(dense.fc2.weight.t().expand_as(moe.w2))
                moe.b2.copy_(dense.fc2.bias.expand_as(moe.b2))
        model.blocks[i].mlp = moe
    return model
