"""Compact sparse checkpoints in safetensors format.

File layout (format version 1). Every tensor of the (hardened, un-parametrized) state_dict is
stored either

* dense, under its own name, or
* sparse, when that is smaller: ``NAME::values`` (the nonzero entries in row-major order, in the
  tensor's dtype) plus either ``NAME::bitmask`` (uint8, one bit per entry, little-endian bit
  order within a byte) or ``NAME::indices`` (int32/int64 flat positions), whichever is smaller.

A tensor that is the same view of the same storage as an earlier one (tied weights) is stored
once: its entry is ``{"encoding": "alias", "alias_of": EARLIER, ...}`` and it loads as that very
tensor, so the ties survive the round trip.

The safetensors metadata holds ``smoothprune`` = JSON: ``{"format_version": 1, "tensors":
{NAME: {"shape", "dtype", "encoding", "nnz", "sparsity", "sha256"}}, "tensors_sha256"}``; the
sha256 of each stored piece detects corruption that the safetensors header cannot, and
``tensors_sha256`` (of the canonical JSON of ``tensors``) a modified entry (a shape, an encoding).
Every entry is also checked against its data (shape against sizes, indices strictly increasing
and in range, bitmask population, dtype). Files are written to a temporary file next to the
target and renamed into place, so a failure never leaves a partial file; the destination must be
a regular file or a new one (a symlink is followed to its target; a FIFO, a device or a
directory is refused, never replaced). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

import torch

from smoothprune.checkpoint import hardened_state_dict
from smoothprune.ops.sharded import is_dtensor
from smoothprune.validation import is_int

__all__ = [
    "save_sparse", "load_sparse", "read_sparse_metadata", "read_sparse_header", "read_tensors",
    "FORMAT_VERSION", "ENCODINGS",
]

FORMAT_VERSION = 1
_SEP = "::"
ENCODINGS = ("dense", "bitmask", "indices", "alias")


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

    A model whose state_dict holds sharded tensors (DTensors: FSDP2, tensor parallel) is
    written by rank 0 of the default process group, every rank calling ``save_sparse``: each
    tensor is gathered in turn and encoded before the next, so no rank ever holds the whole
    dense model (rank 0 keeps the compact encodings; the other ranks return shapes only).

    Returns:
        The per-tensor metadata written (shape, dtype, encoding, nnz, sparsity).

    Raises:
        ValueError: on something that is not a model or a state_dict of tensors, an empty
            state_dict, or a destination that is not a regular file (or in a missing folder).

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
    if not state:
        raise ValueError("save_sparse: nothing to save: the state_dict holds no tensors")
    sharded = any(is_dtensor(v) for v in state.values())
    writer = not sharded or torch.distributed.get_rank() == 0
    path = _destination(path) if writer else None
    aliases = _aliases(state, sharded)
    tensors, entries, storages = {}, {}, set()
    for name, value in state.items():
        if _SEP in name:
            raise ValueError(f"save_sparse: expected tensor names without {_SEP!r}, got {name!r}")
        if name in aliases:  # the same tensor under a second name: stored once
            first = aliases[name]
            entries[name] = {k: entries[first][k] for k in ("shape", "dtype", "nnz", "sparsity")}
            entries[name] |= {"encoding": "alias", "alias_of": first, "sha256": {}}
            continue
        if is_dtensor(value):  # gathered one tensor at a time (every rank takes part); rank 0 keeps it
            value = value.full_tensor()
        if not writer:  # (what the aliases above read; rank 0 writes the real entries)
            entries[name] = {"shape": list(value.shape), "dtype": str(value.dtype), "nnz": 0, "sparsity": 0.0}
            continue
        stored, entry = _encode(name, value)
        for key, t in stored.items():  # tied tensors share storage, which safetensors refuses
            if t.numel() and t.untyped_storage().data_ptr() in storages:
                stored[key] = t.clone()
            storages.add(stored[key].untyped_storage().data_ptr())
        tensors |= stored
        entries[name] = entry
    if not writer:
        return entries
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta = {"format_version": FORMAT_VERSION, "tensors": entries, "tensors_sha256": _entries_digest(entries)}
    if pruning is not None:
        meta["pruning"] = pruning
    header["smoothprune"] = json.dumps(meta)
    directory = os.path.dirname(path)
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


def _aliases(state: dict, sharded: bool) -> dict[str, str]:
    """``{name: first name}`` of the entries that hold the same tensor as an earlier one (tied
    weights). A sharded state_dict's ties are decided on rank 0 and sent to every rank, so that
    all ranks gather the same tensors (a rank whose shards are empty cannot tell ties apart)."""
    aliases, views = {}, {}
    for name, value in state.items():
        local = value.to_local() if is_dtensor(value) else value
        view = (local.device, local.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if value.numel() and view in views:
            aliases[name] = views[view]
        views.setdefault(view, name)
    if sharded:
        box = [aliases]
        torch.distributed.broadcast_object_list(box, src=0)
        aliases = box[0]
    return aliases


def _destination(path) -> str:
    """The file to write: symlinks followed; a FIFO, a device, a directory or a missing folder
    refused (os.replace would replace a special file with the new one)."""
    import stat

    real = os.path.realpath(os.fspath(path))
    if os.path.lexists(real):
        mode = os.stat(real).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
            raise ValueError(f"save_sparse: expected path to be a regular file or a new file, got {kind}: {path}")
    if not os.path.isdir(os.path.dirname(real)):
        raise ValueError(f"save_sparse: the folder of {path} does not exist")
    return real


def _entries_digest(entries: dict) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


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
    if not isinstance(entries, dict):
        raise _corrupt(path, "malformed metadata ('tensors' is not a mapping)")
    digest = meta.get("tensors_sha256")  # (absent from files of smoothprune <= 0.1)
    if digest is not None and digest != _entries_digest(entries):
        raise _corrupt(path, "the tensor entries of its metadata were modified (tensors_sha256 mismatch)")
    for name, e in entries.items():
        _check_entry(path, name, e, entries)
    return meta | {"tensors": entries}


def _check_entry(path, name, e, entries) -> None:
    """An entry's fields have the types and ranges save_sparse writes (its data is checked
    against them on load)."""
    if not isinstance(e, dict):
        raise _corrupt(path, f"malformed entry for {name!r}")
    shape, dtype, encoding, nnz = e.get("shape"), e.get("dtype"), e.get("encoding"), e.get("nnz")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"malformed shape {shape!r} for {name!r}")
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise _corrupt(path, f"unknown dtype {dtype!r} for {name!r}")
    if encoding not in ENCODINGS:
        raise _corrupt(path, f"unknown encoding {encoding!r} for {name!r}")
    if not is_int(nnz) or not 0 <= nnz <= math.prod(shape):
        raise _corrupt(path, f"nnz {nnz!r} out of range for {name!r} of shape {shape}")
    if not isinstance(e.get("sparsity"), (int, float)) or not isinstance(e.get("sha256"), dict):
        raise _corrupt(path, f"malformed entry for {name!r}")
    if encoding == "alias":
        first = entries.get(e.get("alias_of"))
        if not isinstance(first, dict) or first.get("encoding") == "alias" or first.get("shape") != shape \
                or first.get("dtype") != dtype:
            raise _corrupt(path, f"{name!r} is an alias of {e.get('alias_of')!r}, which is not a stored tensor "
                                 "of its shape and dtype")


def load_sparse(path) -> dict[str, torch.Tensor]:
    """Reads a file written by `save_sparse` into a dense state_dict with identical values.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, corrupted or not a smoothprune file.
    """
    return read_tensors(path)


def read_tensors(path, as_csr=None) -> dict[str, torch.Tensor]:
    """`load_sparse`, with the 2-D sparse-encoded tensors for which ``as_csr(name, entry)`` is
    true returned as sparse CSR tensors built straight from the file's encoding (never dense:
    the bitmask is unpacked a slice of rows at a time). Every check of `load_sparse` applies."""
    from safetensors import SafetensorError, safe_open

    entries = read_sparse_metadata(path)
    out = {}
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            stored = set(f.keys())
            for name, e in entries.items():
                if e["encoding"] != "alias":
                    csr = as_csr is not None and e["encoding"] != "dense" and len(e["shape"]) == 2 and as_csr(name, e)
                    out[name] = _decode(path, name, e, f, stored, csr=bool(csr))
            for name, e in entries.items():
                if e["encoding"] == "alias":  # tied tensors come back as one tensor
                    out[name] = out[e["alias_of"]]
    except SafetensorError as exc:
        raise _corrupt(path, f"unreadable tensor data ({exc})") from None
    return out


def _decode(path, name, e, f, stored, csr=False) -> torch.Tensor:
    shape, dtype, encoding = tuple(e["shape"]), getattr(torch, e["dtype"]), e["encoding"]  # (checked)
    digests, nnz = e["sha256"], e["nnz"]
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
        if data["bitmask"].numel() != (numel + 7) // 8:
            raise _corrupt(path, f"{name!r} has a bitmask that does not match its {nnz} values")
        if csr:
            return _csr_from_bitmask(path, name, data["bitmask"], values, shape)
        mask = _unpack_bits(data["bitmask"], numel)
        if int(mask.sum()) != nnz:
            raise _corrupt(path, f"{name!r} has a bitmask that does not match its {nnz} values")
        dense = torch.zeros(numel, dtype=dtype)
        dense[mask] = values
    elif encoding == "indices":
        idx = data["indices"].long()
        if idx.numel() != nnz or (nnz and (int(idx.min()) < 0 or int(idx.max()) >= numel)):
            raise _corrupt(path, f"{name!r} has indices out of range")
        if nnz > 1 and not bool((idx[1:] > idx[:-1]).all()):  # save_sparse writes them ascending
            raise _corrupt(path, f"{name!r} has indices that are not strictly increasing (duplicates)")
        if csr:
            rows, cols = shape
            return _csr(torch.bincount(idx // cols, minlength=rows), idx % cols, values, shape)
        dense = torch.zeros(numel, dtype=dtype)
        dense[idx] = values
    else:
        raise _corrupt(path, f"unknown encoding {encoding!r} for {name!r}")
    return dense.reshape(shape)


def _csr(row_counts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A CSR matrix from its rows' entry counts, column indices and values (row-major order),
    with 32-bit indices where they fit (half the index memory of torch's default)."""
    import warnings

    index_dtype = torch.int32 if max(values.numel(), shape[1]) < 2**31 else torch.int64
    crow = torch.zeros(shape[0] + 1, dtype=index_dtype)
    crow[1:] = torch.cumsum(row_counts, 0)
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, columns.to(index_dtype), values, size=tuple(shape),
                                       check_invariants=True)


def _csr_from_bitmask(path, name, packed: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    rows, cols = shape
    chunk = max(1, (1 << 22) // max(cols, 1))  # rows per slice: ~4M bits unpacked at a time
    counts = torch.zeros(rows, dtype=torch.int64)
    columns = []
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        start, end = r0 * cols, r1 * cols
        b0, b1 = start // 8, (end + 7) // 8
        bits = _unpack_bits(packed[b0:b1], (b1 - b0) * 8)[start - 8 * b0:end - 8 * b0]
        pos = bits.nonzero().reshape(-1)
        counts[r0:r1] = torch.bincount(pos // cols, minlength=r1 - r0)
        columns.append((pos % cols).to(torch.int32 if cols < 2**31 else torch.int64))
    if int(counts.sum()) != values.numel():
        raise _corrupt(path, f"{name!r} has a bitmask that does not match its {values.numel()} values")
    return _csr(counts, torch.cat(columns), values, shape)
