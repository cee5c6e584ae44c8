"""In-memory datasets (CIFAR-10/100, MNIST, synthetic) as uint8 tensors, and :class:`DeviceLoader`,
which batches, augments and normalises them on the training device (each rank its share).

:func:`rank_shares` and :class:`Normalise` serve the ImageFolder loader too (utils/imagefolder.py).
"""
import copy
import math
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from errors import UserError


@dataclass
class Dataset:
    """An in-memory image classification dataset: uint8 images (N, C, H, W) and int64 labels."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    corrupted: torch.Tensor = None  # indices (into train set) whose label was replaced
    wrong_label_fraction: float = 0.0  # share of training labels that differ from the true ones

    @property
    def channels(self):
        return self.train_x.shape[1]

    def keep_train(self, idx):
        self.train_x, self.train_y = self.train_x[idx], self.train_y[idx]


_CIFAR = {
    # name: (folder, train files, test files, label key, classes, mean, std)
    'CIFAR10': ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'],
                'labels', 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'CIFAR100': ('cifar-100-python', ['train'], ['test'], 'fine_labels', 100,
                 (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
}


def load_cifar_file(path, label_key):
    """One CIFAR pickle (the original's bytes keys or a rebuilt copy's str keys) as a dict with str
    keys, its ``data`` as uint8 rows of 3072 and ``label_key``'s labels as int64; a missing or
    unreadable file is a UserError that names it."""
    try:
        with open(path, 'rb') as f:
            entry = pickle.load(f, encoding='latin1')
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        entry['data'] = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3072)
        entry[label_key] = np.asarray(entry[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise UserError(f'incomplete dataset folder: {path} is missing') from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f'corrupt dataset file {path}: {type(e).__name__}: {e}') from None
    return entry


def _read_cifar_pickles(folder, files, label_key):
    entries = [load_cifar_file(os.path.join(folder, name), label_key) for name in files]
    x = np.concatenate([e['data'] for e in entries]).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x), torch.from_numpy(np.concatenate([e[label_key] for e in entries]))


def read_cifar(root, name):
    """Read CIFAR-10/100 from the standard python-pickle layout under ``root``.

    The pickles are read directly (no md5 check), so rebuilt or re-encoded copies load too.
    When the folder is absent, torchvision downloads it; offline that fails with a message
    saying where to put the files.
    """
    folder, train_files, test_files, label_key, num_classes, mean, std = _CIFAR[name]
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
        import torchvision
        try:
            getattr(torchvision.datasets, name)(root, train=True, download=True)
        except Exception as e:  # offline, disk full, HTTP error ...: all the user can act on
            raise UserError(f'{name} not found at {path} and the download failed '
                            f'({type(e).__name__}); put the python-version pickles there '
                            f'(or point --data-dir at their parent)') from None
    train_x, train_y = _read_cifar_pickles(path, train_files, label_key)
    test_x, test_y = _read_cifar_pickles(path, test_files, label_key)
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, mean, std)


def read_mnist(root):
    """MNIST through torchvision, zero-padded from 28x28 to 32x32 so every model applies."""
    import torchvision
    try:
        train = torchvision.datasets.MNIST(root, train=True, download=True)
        test = torchvision.datasets.MNIST(root, train=False, download=True)
    except Exception as e:
        raise UserError(f'MNIST not found under {os.path.join(root, "MNIST")} and the download failed '
                        f'({type(e).__name__}); put the raw MNIST files there') from None

    def prep(x):
        return F.pad(x.unsqueeze(1), (2, 2, 2, 2))
    return Dataset('MNIST', prep(train.data), train.targets.long(), prep(test.data),
                   test.targets.long(), 10, (0.0,), (1.0,))


def make_synthetic(seed=0, n_train=10000, n_test=2000, num_classes=10):
    """A seeded, offline, CIFAR-shaped (3x32x32, 10 classes) dataset generated in memory.

    Each class owns a smooth random colour template; an image is its class template at a
    random contrast, shifted by up to 4 pixels, blended with a random other class's template
    and a smooth clutter field, plus pixel noise.  Templates share a common component, so
    classes are confusable: a ResNet20 learns it well above chance after a few epochs, yet not
    perfectly.  The generator does not depend on ``--randomseed`` (the data is fixed; the seed
    varies the run), so every run sees the same images.
    """
    g = torch.Generator().manual_seed(seed)

    def smooth(n, cells):  # low-frequency random fields in [-1, 1]
        field = torch.randn(n, 3, cells, cells, generator=g)
        field = F.interpolate(field, size=(40, 40), mode='bicubic', align_corners=False)
        return field / field.flatten(1).abs().amax(1).view(-1, 1, 1, 1)

    common = smooth(1, 4)
    templates = 0.6 * smooth(num_classes, 4) + 0.4 * common

    def sample(n):
        y = torch.randint(num_classes, (n,), generator=g)
        other = (y + torch.randint(1, num_classes, (n,), generator=g)) % num_classes
        contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
        x = contrast * templates[y] + 0.45 * templates[other] + 0.5 * smooth(n, 6)
        dx, dy = torch.randint(0, 9, (2, n), generator=g)
        rows = (dy.view(-1, 1) + torch.arange(32)).view(n, 1, 32, 1).expand(n, 3, 32, 40)
        cols = (dx.view(-1, 1) + torch.arange(32)).view(n, 1, 1, 32).expand(n, 3, 32, 32)
        x = x.gather(2, rows).gather(3, cols)
        x = x + 0.35 * torch.randn(x.shape, generator=g)
        return ((x * 0.25 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8), y

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    mean = tuple(train_x.float().div(255).mean((0, 2, 3)).tolist())
    std = tuple(train_x.float().div(255).std((0, 2, 3)).tolist())
    return Dataset('synthetic', train_x, train_y, test_x, test_y, num_classes, mean, std)


def rank_shares(n, batch_size, rank, world_size):
    """[(i, j)) into an epoch's order of ``rank``'s contiguous share of every global batch of
    ``batch_size``; a short last batch is cut to a multiple of the world size (dropped if empty)."""
    shares = []
    for a in range(0, n, batch_size):
        share = (min(a + batch_size, n) - a) // world_size
        if share:
            shares.append((a + rank * share, a + (rank + 1) * share))
    return shares


class Normalise:
    """uint8 images -> float, (x - mean) / std per channel, in ``channels_last`` if asked; on the
    training device."""

    def __init__(self, mean, std, device, channels_last=False):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x):
        return ((x.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)


class DeviceLoader:
    """Mini-batches of an in-memory dataset, augmented and normalised on the training device.

    The uint8 images are moved to ``device`` once.  Training batches get the standard CIFAR
    augmentation (random 32x32 crop of the image zero-padded by 4, random horizontal flip), drawn
    per sample exactly as torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip would,
    then normalisation; all of it batched on the device.  The random choices of an epoch (order,
    crops, flips) come from ``generator`` (a CPU generator) at the start of the epoch, so saving its
    state at an epoch boundary makes resumed runs identical.

    ``augment=False`` skips the crop and flip (the order is still shuffled).

    Several ranks (``rank`` of ``world_size``): every rank draws the same order, crops and flips
    from the same generator state, cuts the same global batches of ``batch_size`` and takes its
    contiguous ``batch_size / world_size`` share of each, so together the ranks see exactly the
    batches one process would.  A last global batch that does not divide by the world size is
    cut to a multiple of it (at most world_size - 1 images an epoch, others each epoch; one
    process drops none).  Evaluation (``train=False``): each rank takes a contiguous block of the
    images, every image counted exactly once.
    """

    def __init__(self, x, y, batch_size, mean, std, device, *, train, generator=None,
                 channels_last=False, rank=0, world_size=1, augment=True):
        if train:
            self.x, self.y = x.to(device), y.to(device)
        else:
            n = math.ceil(len(y) / world_size)
            self.x, self.y = x[rank * n:(rank + 1) * n].to(device), y[rank * n:(rank + 1) * n].to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = augment
        self.generator = generator
        self.rank, self.world_size = (rank, world_size) if train else (0, 1)
        self._normalise = Normalise(mean, std, device, channels_last)

    def with_generator(self, generator):
        """The same training batches in another random order: shares the images on the device."""
        other = copy.copy(self)
        other.generator = generator
        return other

    def __len__(self):
        if self.train:
            return len(rank_shares(len(self.y), self.batch_size, self.rank, self.world_size))
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        n = len(self.y)
        if not self.train:
            for i in range(0, n, self.batch_size):
                yield self._normalise(self.x[i:i + self.batch_size]), self.y[i:i + self.batch_size]
            return
        g = self.generator
        order = torch.randperm(n, generator=g).to(self.device, non_blocking=True)
        if not self.augment:
            for i, j in rank_shares(n, self.batch_size, self.rank, self.world_size):
                yield self._normalise(self.x[order[i:j]]), self.y[order[i:j]]
            return
        shifts = torch.randint(0, 9, (n, 2), generator=g).to(self.device, non_blocking=True)
        flips = torch.rand(n, generator=g).lt(0.5).to(self.device, non_blocking=True)
        size = self.x.shape[-1]
        ar = torch.arange(size, device=self.device)
        for i, j in rank_shares(n, self.batch_size, self.rank, self.world_size):
            idx, sh, fl = order[i:j], shifts[i:j], flips[i:j]
            x = F.pad(self.x[idx], (4, 4, 4, 4))
            rows = (sh[:, 0:1] + ar).view(-1, 1, size, 1)
            cols = sh[:, 1:2] + ar
            cols = torch.where(fl.view(-1, 1), cols.flip(1), cols).view(-1, 1, 1, size)
            x = x.gather(2, rows.expand(-1, x.shape[1], -1, x.shape[3]))
            x = x.gather(3, cols.expand(-1, x.shape[1], size, -1))
            yield self._normalise(x), self.y[idx]
