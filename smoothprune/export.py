"""Compact sparse checkpoints in safetensors format.

File layout (format version 1). Every tensor of the (hardened, un-parametrized) state_dict is
stored either

* dense, under its own name, or
* sparse, when that is smaller: ``NAME::values`` (the nonzero entries in row-major order, in the
  tensor's dtype) plus either ``NAME::bitmask`` (uint8, one bit per entry, little-endian bit
  order within a byte) or ``NAME::indices`` (int32/int64 flat positions), whichever is smaller.

The safetensors metadata holds ``smoothprune`` = JSON: ``{"format_version": 1, "tensors":
{NAME: {"shape", "dtype", "encoding", "nnz", "sparsity", "sha256"}}}``; the sha256 of each
stored piece detects corruption that the safetensors header cannot. Files are written to a
temporary file next to the target and renamed into place, so a failure never leaves a partial
file. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch

from smoothprune.checkpoint import hardened_state_dict

FORMAT_VERSION = 1
_SEP = "::"


# ------------------------------------------------------------------------------------------------
# from a model or a (possibly parametrized) state_dict to the hardened state_dict
# ------------------------------------------------------------------------------------------------
def _as_state_dict(model_or_state_dict) -> dict:
    if isinstance(model_or_state_dict, torch.nn.Module):
        return hardened_state_dict(model_or_state_dict.state_dict())
    if isinstance(model_or_state_dict, dict):
        bad = [k for k, v in model_or_state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"save_sparse: expected a state_dict of str -> Tensor, got entry {bad[0]!r}")
        return hardened_state_dict(model_or_state_dict)
    raise ValueError(f"save_sparse: expected an nn.Module or a state_dict, got {type(model_or_state_dict).__name__}")


# ------------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------------
def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = mask.reshape(-1).to(torch.uint8)
    bits = torch.nn.functional.pad(bits, (0, (-bits.numel()) % 8)).reshape(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:numel].bool()


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() if t.numel() else ""


def _encode(name: str, tensor: torch.Tensor):
    """Returns ({stored name: tensor}, metadata entry)."""
    t = tensor.detach().cpu().contiguous()
    numel, item = t.numel(), t.element_size()
    entry = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if t.dtype.is_floating_point and numel:
        nonzero = t != 0
        nnz = int(nonzero.sum())
        index_dtype = torch.int32 if numel < 2**31 else torch.int64
        bitmask_bytes = (numel + 7) // 8
        index_bytes = nnz * torch.empty((), dtype=index_dtype).element_size()
        if nnz * item + min(bitmask_bytes, index_bytes) < numel * item:
            values = t.reshape(-1)[nonzero.reshape(-1)]
            if bitmask_bytes <= index_bytes:
                pieces = {"values": values, "bitmask": _pack_bits(nonzero)}
            else:
                pieces = {"values": values, "indices": nonzero.reshape(-1).nonzero().reshape(-1).to(index_dtype)}
            entry |= {"encoding": "bitmask" if "bitmask" in pieces else "indices", "nnz": nnz,
                      "sparsity": 1.0 - nnz / numel}
            stored = {f"{name}{_SEP}{piece}": v for piece, v in pieces.items()}
            entry["sha256"] = {piece: _sha256(v) for piece, v in pieces.items()}
            return stored, entry
    nnz = int((t != 0).sum()) if numel else 0
    entry |= {"encoding": "dense", "nnz": nnz, "sparsity": 1.0 - nnz / numel if numel else 0.0,
              "sha256": {"dense": _sha256(t)}}
    return {name: t}, entry


def save_sparse(model_or_state_dict, path, *, metadata: dict | None = None, pruning: dict | None = None) -> dict:
    """Writes a compact safetensors file of a pruned model (hardened on the way out).

    Args:
        model_or_state_dict: a model (parametrized or already hardened) or a state_dict (for
            example ``checkpoint["state_dict"]`` of a Lightning checkpoint).
        path: the file to write (replaced atomically).
        metadata: extra str -> str entries for the file header.
        pruning: what the file records of the pruning run (``smoothprune inspect`` shows it):
            ``{"target_sparsity": float, "sparsity": the schedule's value, "tensors": [names]}``.

    Returns:
        The per-tensor metadata written (shape, dtype, encoding, nnz, sparsity).

    Raises:
        ValueError: on something that is not a model or a state_dict of tensors.

    Example:
        >>> import torch, smoothprune as sp, tempfile, os
        >>> model = torch.nn.Linear(64, 64)
        >>> _ = sp.prune_(model, 0.9); _ = sp.harden_(model)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> _ = sp.save_sparse(model, path)
        >>> torch.equal(sp.load_sparse(path)["weight"], model.weight)
        True
    """
    from safetensors.torch import save_file

    state = _as_state_dict(model_or_state_dict)
    tensors, entries, storages = {}, {}, set()
    for name, value in state.items():
        if _SEP in name:
            raise ValueError(f"save_sparse: expected tensor names without {_SEP!r}, got {name!r}")
        stored, entry = _encode(name, value)
        for key, t in stored.items():  # tied tensors share storage, which safetensors refuses
            if t.numel() and t.untyped_storage().data_ptr() in storages:
                stored[key] = t.clone()
            storages.add(stored[key].untyped_storage().data_ptr())
        tensors |= stored
        entries[name] = entry
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta = {"format_version": FORMAT_VERSION, "tensors": entries}
    if pruning is not None:
        meta["pruning"] = pruning
    header["smoothprune"] = json.dumps(meta)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".smoothprune-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return entries


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------
def _corrupt(path, why: str) -> ValueError:
    return ValueError(f"load_sparse: {path} is not a valid smoothprune sparse file: {why}")


def read_sparse_metadata(path) -> dict:
    """The per-tensor metadata of a file written by `save_sparse` (no tensor data is read)."""
    return read_sparse_header(path)["tensors"]


def read_sparse_header(path) -> dict:
    """The smoothprune metadata of a file written by `save_sparse`: ``tensors`` (per-tensor
    metadata) and, when recorded, ``pruning`` (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _corrupt(path, f"unreadable safetensors file ({exc})") from None
    if "smoothprune" not in header:
        raise _corrupt(path, "no 'smoothprune' entry in its metadata (not written by save_sparse)")
    try:
        meta = json.loads(header["smoothprune"])
        version, entries = meta["format_version"], meta["tensors"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, f"malformed metadata ({exc})") from None
    if version != FORMAT_VERSION:
        raise _corrupt(path, f"format_version {version!r}, this smoothprune reads {FORMAT_VERSION}")
    return meta | {"tensors": entries}


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Reads a file written by `save_sparse` into a dense state_dict with identical values.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, corrupted or not a smoothprune file.
    """
    from safetensors import SafetensorError, safe_open

    entries = read_sparse_metadata(path)
    out = {}
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            stored = set(f.keys())
            for name, e in entries.items():
                out[name] = _decode(path, name, e, f, stored)
    except SafetensorError as exc:
        raise _corrupt(path, f"unreadable tensor data ({exc})") from None
    return out


def _decode(path, name, e, f, stored) -> torch.Tensor:
    try:
        shape, dtype, encoding = tuple(e["shape"]), getattr(torch, e["dtype"]), e["encoding"]
        digests, nnz = e["sha256"], int(e["nnz"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise _corrupt(path, f"malformed entry for {name!r} ({exc})") from None
    pieces = ["dense"] if encoding == "dense" else ["values", encoding]
    keys = {p: (name if p == "dense" else f"{name}{_SEP}{p}") for p in pieces}
    for p, key in keys.items():
        if key not in stored:
            raise _corrupt(path, f"tensor {key!r} is missing")
    data = {p: f.get_tensor(key) for p, key in keys.items()}
    for p, t in data.items():
        if _sha256(t) != digests.get(p):
            raise _corrupt(path, f"checksum mismatch in {keys[p]!r} (the file is corrupted)")
    numel = int(torch.Size(shape).numel())
    if encoding == "dense":
        if tuple(data["dense"].shape) != shape or data["dense"].dtype != dtype:
            raise _corrupt(path, f"{name!r} does not match its recorded shape/dtype")
        return data["dense"]
    values = data["values"]
    if values.dtype != dtype or values.numel() != nnz:
        raise _corrupt(path, f"{name!r} has {values.numel()} values of {values.dtype}, expected {nnz} of {dtype}")
    if encoding == "bitmask":
        mask = _unpack_bits(data["bitmask"], numel)
        if data["bitmask"].numel() != (numel + 7) // 8 or int(mask.sum()) != nnz:
            raise _corrupt(path, f"{name!r} has a bitmask that does not match its {nnz} values")
        dense = torch.zeros(numel, dtype=dtype)
        dense[mask] = values
    elif encoding == "indices":
        idx = data["indices"].long()
        if idx.numel() != nnz or (nnz and (int(idx.min()) < 0 or int(idx.max()) >= numel)):
            raise _corrupt(path, f"{name!r} has indices out of range")
        dense = torch.zeros(numel, dtype=dtype)
        dense[idx] = values
    else:
        raise _corrupt(path, f"unknown encoding {encoding!r} for {name!r}")
    return dense.reshape(shape)
