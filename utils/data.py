"""Data and files of the three training scripts: datasets on the training device (CIFAR, MNIST,
synthetic), ImageFolder datasets (ImageNet) decoded by DataLoader workers, label noise, subsets, trajectory snapshots, checkpoints and JSON written atomically, user errors.

The method itself (basis, projection, P-BFGS) lives in ``dldr.py``, the loops in ``engine.py``,
flags in ``flags.py``, the process group in ``distributed.py``, the seeds in ``seeds.py``.
Nothing here keeps module-level mutable state.
"""
import contextlib
import copy
import json
import math
import os
import pickle
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import models
import seeds
from errors import UserError  # noqa: F401  (utils.UserError: its former home)


DATASET_NAMES = ('CIFAR10', 'CIFAR100', 'MNIST', 'synthetic', 'ImageNet')


def dataset_family(name):
    """The model family (``models.FAMILIES``) of a dataset: torchvision's models for ImageFolder data."""
    return 'imagenet' if name == 'ImageNet' else 'cifar'


# ---------------------------------------------------------------------------------------------
# Datasets, held in memory as uint8 NCHW tensors.
# ---------------------------------------------------------------------------------------------

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
                b'labels', 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'CIFAR100': ('cifar-100-python', ['train'], ['test'], b'fine_labels', 100,
                 (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
}


def _read_cifar_pickles(folder, files, label_key):
    xs, ys = [], []
    for name in files:
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as f:
                entry = pickle.load(f, encoding='bytes')
            entry = {k.encode() if isinstance(k, str) else k: v for k, v in entry.items()}
            data, labels = entry[b'data'], entry[label_key]  # bytes keys (original) or str keys (rebuilt)
        except FileNotFoundError:
            raise UserError(f'incomplete dataset folder: {path} is missing') from None
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
            raise UserError(f'corrupt dataset file {path}: {type(e).__name__}: {e}') from None
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


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


# --noise-model: how --corrupt draws the new labels.  'uniform' is the reference's model (its
# utils.get_datasets: np.random.choice(10) for each of int(c * N) labels), 'wrong' always picks
# another class.
NOISE_MODELS = ('uniform', 'wrong')


def corrupt_labels(labels, fraction, num_classes, seed, model='uniform'):
    """Redraw the labels of ``int(N * fraction)`` training images (the reference's count: int,
    not round), chosen by a seeded random permutation.  ``model='uniform'`` (the reference's):
    each new label is drawn uniformly from all ``num_classes`` classes, so about 1/num_classes of
    them keep their true class; ``'wrong'``: drawn uniformly among the ``num_classes - 1`` others.

    Returns ``(new_labels, indices)`` (the redrawn indices, sorted); the same ``seed`` gives the
    same result in every script.
    """
    if model not in NOISE_MODELS:
        raise ValueError(f'unknown noise model {model!r}; known: {", ".join(NOISE_MODELS)}')
    n = len(labels)
    count = int(n * fraction)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:count].sort().values
    new = labels.clone()
    if model == 'wrong':
        shift = torch.randint(1, num_classes, (count,), generator=g)
        new[idx] = (labels[idx] + shift) % num_classes
    else:
        new[idx] = torch.randint(0, num_classes, (count,), generator=g)
    return new, idx


def noise_record(data, args):
    """The label-noise fields of a run's metrics JSON: ``n_corrupted`` (labels redrawn),
    ``noise_model`` (the ``--noise-model`` that drew them; None without ``--corrupt``) and
    ``wrong_label_fraction`` (the share of the training labels that differ from the true ones)."""
    if data.corrupted is None:
        return {'n_corrupted': 0, 'noise_model': None, 'wrong_label_fraction': 0.0}
    return {'n_corrupted': len(data.corrupted), 'noise_model': args.noise_model,
            'wrong_label_fraction': data.wrong_label_fraction}


def balanced_subset(labels, fraction, num_classes, seed):
    """Indices of a seeded, class-balanced fraction of a dataset (round(p * n_c) per class)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        take = int(round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(keep).sort().values


def load_data(args):
    """The training data of a run: dataset, then ``--smalldatasets`` subset, then label noise."""
    if args.datasets == 'ImageNet':
        data = read_image_folder(args.data_dir, args.image_size)
    elif args.datasets == 'synthetic':
        data = make_synthetic()
    elif args.datasets == 'MNIST':
        data = read_mnist(args.data_dir)
    else:  # CIFAR10, CIFAR100: the flags admit nothing else (flags.py)
        data = read_cifar(args.data_dir, args.datasets)
    if models.is_timm(getattr(args, 'arch', '')):  # the normalisation timm's pretrained weights expect
        norm = models.timm_normalisation(args.arch)
        if norm is not None and len(norm[0]) == data.channels:
            data.mean, data.std = norm
    if args.smalldatasets is not None and args.smalldatasets < 1:
        keep = balanced_subset(data.train_y, args.smalldatasets, data.num_classes,
                               seeds.seed('subset', args.randomseed))
        data.keep_train(keep)
    if args.corrupt > 0:
        clean = data.train_y
        data.train_y, data.corrupted = corrupt_labels(
            clean, args.corrupt, data.num_classes, seeds.seed('label_noise', args.randomseed),
            args.noise_model)
        data.wrong_label_fraction = (data.train_y != clean).sum().item() / max(len(clean), 1)
    return data


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


def eval_batch_size(args, device):
    """``--eval-batch-size``, else the measured default: 256 on the CPU (larger batches fall out of
    cache and cost more per image, docs/BENCHMARKS.md), 1024 on CUDA."""
    if args.eval_batch_size:
        return args.eval_batch_size
    return 1024 if device.type == 'cuda' else 256


def make_loaders(data, args, context, generator):
    """Training and test loaders of ``data`` for this rank of ``context``: :class:`DeviceLoader`
    for in-memory data, :class:`FolderLoader` for ImageFolder data."""
    device, rank, world = context.device, context.rank, context.world_size
    if isinstance(data, FolderData):
        train_t, test_t = folder_transforms(data.image_size, args.augment)
        common = dict(mean=data.mean, std=data.std, device=device, workers=args.workers,
                      channels_last=args.channels_last, rank=rank, world_size=world)
        return (FolderLoader(ImageFiles(data.train_paths, data.train_y, train_t), args.batch_size,
                             train=True, generator=generator, **common),
                FolderLoader(ImageFiles(data.test_paths, data.test_y, test_t),
                             eval_batch_size(args, device), train=False, **common))
    train = DeviceLoader(data.train_x, data.train_y, args.batch_size, data.mean, data.std, device,
                         train=True, generator=generator, channels_last=args.channels_last,
                         rank=rank, world_size=world, augment=args.augment)
    test = DeviceLoader(data.test_x, data.test_y, eval_batch_size(args, device), data.mean,
                        data.std, device, train=False, channels_last=args.channels_last,
                        rank=rank, world_size=world)
    return train, test


# ---------------------------------------------------------------------------------------------
# ImageFolder datasets (the ImageNet layout DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg),
# decoded and augmented by DataLoader workers, normalised on the training device.
# ---------------------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


@dataclass
class FolderData:
    """An ImageFolder dataset: file paths and int64 labels of both splits (the images stay on disk)."""
    name: str
    classes: list
    train_paths: list
    train_y: torch.Tensor
    test_paths: list
    test_y: torch.Tensor
    image_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    corrupted: torch.Tensor = None
    wrong_label_fraction: float = 0.0
    channels = 3

    @property
    def num_classes(self):
        return len(self.classes)

    def keep_train(self, idx):
        self.train_paths = [self.train_paths[i] for i in idx.tolist()]
        self.train_y = self.train_y[idx]


def scan_image_folder(root, classes=None):
    """(classes, paths, labels) of ``root/<class>/<image>``, all sorted.  With ``classes`` (the
    training set's, for val/) every folder must be one of them."""
    if not os.path.isdir(root):
        raise UserError(f'missing folder {root}: --data-dir must hold train/ and val/ with one '
                        f'sub-folder of images per class')
    found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not found:
        raise UserError(f'{root} holds no class folders (expected {root}/<class>/<image>)')
    classes = classes or found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise UserError(f'{os.path.join(root, unknown[0])} is not a class of the training set')
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in found:
        files = sorted(e.path for e in os.scandir(os.path.join(root, c))
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise UserError(f'empty class folder {os.path.join(root, c)}: no {"/".join(IMAGE_EXTENSIONS)} files')
        paths += files
        labels += [index[c]] * len(files)
    return classes, paths, torch.tensor(labels, dtype=torch.int64)


def read_image_folder(root, image_size):
    classes, train_paths, train_y = scan_image_folder(os.path.join(root, 'train'))
    _, test_paths, test_y = scan_image_folder(os.path.join(root, 'val'), classes)
    return FolderData('ImageNet', classes, train_paths, train_y, test_paths, test_y, image_size)


def folder_transforms(size, augment=True):
    """The reference's ImageNet transforms at ``size`` (224: RandomResizedCrop(224) + flip for
    training, Resize(256) + CenterCrop(224) for evaluation), ending in uint8 tensors: the loader
    normalises on the device.  ``augment=False``: training images transformed as the test ones."""
    from torchvision import transforms as T
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
    test = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])
    return (train if augment else test), test


class ImageFiles(torch.utils.data.Dataset):
    """Image files read with PIL and transformed; item i is ``(image, label, skipped)``.

    A file that cannot be read or decoded does not end the run: the next readable file (in index
    order, with its own label) takes its place, and ``skipped`` lists ``(index, reason)`` of every
    file passed over, for the loader to report in the main process (it works with workers too).
    """

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels.tolist(), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        skipped = []
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                with Image.open(self.paths[j]) as image:
                    return self.transform(image.convert('RGB')), self.labels[j], skipped
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                skipped.append((j, f'{type(e).__name__}: {e}'))
        raise RuntimeError(f'no readable image among {len(self.paths)} files')


def _collate(items):
    images, labels, skipped = zip(*items)
    return torch.stack(images), torch.tensor(labels), [s for group in skipped for s in group]


class ShardedBatches:
    """Batch sampler of :class:`FolderLoader`: the batches of :class:`DeviceLoader` (an epoch's order
    drawn from ``generator``, global batches, each rank its contiguous share)."""

    def __init__(self, n, batch_size, rank, world_size, generator):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.generator = generator

    def __len__(self):
        return len(rank_shares(self.n, self.batch_size, self.rank, self.world_size))

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        for i, j in rank_shares(self.n, self.batch_size, self.rank, self.world_size):
            yield order[i:j].tolist()


class FolderLoader:
    """Mini-batches of an :class:`ImageFiles` split through a torch DataLoader with ``workers``
    processes (persistent; pinned memory on CUDA), moved to ``device`` as uint8 (a quarter of the
    bytes of float) and normalised there; iterates ``(x, y)`` on the device like DeviceLoader.

    Training: each epoch draws the order (and the workers' seeds) from ``generator``, which every
    rank holds in the same state, so saving it at an epoch boundary makes resumed runs take the
    same batches; batches and rank shares as DeviceLoader.  Evaluation: each rank reads a
    contiguous block, every image counted once.  ``skipped`` maps the index of every unreadable
    file this rank met to the reason; each is reported once, by the rank that met it.
    """

    def __init__(self, dataset, batch_size, mean, std, device, *, train, generator=None, workers=0,
                 channels_last=False, rank=0, world_size=1):
        self.dataset, self.device, self.generator, self.rank = dataset, device, generator, rank
        self.world_size = world_size
        self.skipped = {}
        self._config = dict(batch_size=batch_size, mean=mean, std=std, device=device,
                            channels_last=channels_last, rank=rank, world_size=world_size)
        if train:
            # the workers' seeds come from a generator of their own: ``generator`` draws only the
            # epochs' orders, so a resumed run (a new worker pool) takes the same batches
            workers_seed = seeds.generator('workers', generator.initial_seed(), rank=rank)
            split = dict(batch_sampler=ShardedBatches(len(dataset), batch_size, rank, world_size,
                                                      generator), generator=workers_seed)
        else:
            n = math.ceil(len(dataset) / world_size)
            block = range(rank * n, min((rank + 1) * n, len(dataset)))
            split = dict(dataset=torch.utils.data.Subset(dataset, block), batch_size=batch_size)
        self.loader = torch.utils.data.DataLoader(
            **{'dataset': dataset, **split}, num_workers=workers, collate_fn=_collate,
            pin_memory=device.type == 'cuda', persistent_workers=workers > 0)
        self._normalise = Normalise(mean, std, device, channels_last)

    def with_generator(self, generator):
        """The same training files in another random order, read in this process (no worker
        pool: BatchNorm re-estimation reads a few batches); skipped files count once with ours."""
        return FolderLoader(self.dataset, **self._config, train=True, generator=generator)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y, skipped in self.loader:
            for j, reason in skipped:
                if j not in self.skipped:
                    self.skipped[j] = reason
                    tag = f'[rank {self.rank}] ' if self.world_size > 1 else ''
                    print(f'warning: {tag}skipped unreadable image {self.dataset.paths[j]} ({reason})',
                          file=sys.stderr, flush=True)
            yield (self._normalise(x.to(self.device, non_blocking=True)),
                   y.to(self.device, non_blocking=True))


def count_skipped(loaders, comm):
    """Distinct unreadable files any rank skipped so far in ``loaders`` (one all-reduce of a mask
    over the files; 0 without a collective for in-memory data)."""
    datasets = {}
    for loader in loaders:
        if isinstance(loader, FolderLoader):
            datasets.setdefault(id(loader.dataset), (loader.dataset, loader.device, set()))[2].update(loader.skipped)
    if not datasets:
        return 0
    masks = []
    for dataset, device, skipped in datasets.values():
        masks.append(torch.zeros(len(dataset), device=device))
        masks[-1][sorted(skipped)] = 1
    return int(comm.all_reduce_(torch.cat(masks), 'sum').count_nonzero())


# ---------------------------------------------------------------------------------------------
# Models, snapshots, checkpoints.
# ---------------------------------------------------------------------------------------------

def build_model(args, data, device, pretrained=None):
    """``--arch`` for ``data`` on ``device``; ``pretrained``: True (torchvision's default weights,
    from the local torch hub cache) or the path of a state_dict / checkpoint to start from."""
    family = dataset_family(args.datasets)
    timm_file = None
    if pretrained is True and models.is_timm(args.arch):  # timm's weights, from the local cache only
        try:
            timm_file = models.timm_cached_weights(args.arch)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f'--pretrained: {e}') from None
        pretrained = None
    # the in-memory datasets have their images' size (32x32); ImageFolder data --image-size
    image_size = data.image_size if isinstance(data, FolderData) else data.train_x.shape[-1]
    try:
        model = models.get_model(args.arch, num_classes=data.num_classes, in_channels=data.channels,
                                 family=family, image_size=image_size, pretrained_file=timm_file)
    except ValueError as e:
        raise UserError(str(e)) from None
    if pretrained:
        path, state = pretrained_weights(pretrained, args.arch, family)
        check_state_dict(state, model, path)
        model.load_state_dict(state)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if getattr(args, 'compile', None):
        compile_model(model, args.compile)
    return model


def compile_model(model, mode='default', backend='inductor', warn=print):
    """``torch.compile`` ``model`` in place (``nn.Module.compile``: the module is not wrapped, so
    its state_dict keys carry no ``_orig_mod.`` and snapshots, checkpoints and the reference's
    files load into compiled and eager models alike).  Compilation happens at the first call of
    each new graph; if it fails there, the model runs eager from then on after one ``warn`` line,
    and :func:`is_compiled` turns False."""
    model.compile(mode=None if mode == 'default' else mode, backend=backend)
    compiled = model._compiled_call_impl

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # dynamo's Unsupported, BackendCompilerFailed, ...
            if not _compile_error(e):
                raise
            model._compiled_call_impl = None
            first = (str(e).strip().splitlines() or [''])[0][:200]
            warn(f'warning: torch.compile failed for {type(model).__name__} ({type(e).__name__}: '
                 f'{first}); running eager')
            return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = call
    return model


def _compile_error(e):
    """Whether ``e`` came from torch.compile (not from the model's own code or bad input)."""
    from torch import _dynamo
    return isinstance(e, (_dynamo.exc.BackendCompilerFailed, _dynamo.exc.Unsupported,
                          _dynamo.exc.InternalTorchDynamoError, _dynamo.exc.TorchRuntimeError))


def is_compiled(model):
    """Whether ``model`` (or the model a DDP wrapper holds) runs through torch.compile."""
    model = getattr(model, 'module', model)
    return getattr(model, '_compiled_call_impl', None) is not None


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file in the target folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a truncated one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_tensors(obj, path):
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    """Write ``obj`` as strict JSON: a non-finite float (a diverged loss) becomes null."""
    text = json.dumps(_strict_json(obj), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write((text + '\n').encode()))


def _strict_json(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def load_file(path, what='file', mmap=False):
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or unsafe files."""
    if not os.path.isfile(path):
        raise UserError(f'missing {what}: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f'refusing to load {path}: it holds pickled objects other than tensors '
                        f'and plain containers ({first[:120]})') from None
    except Exception as e:  # noqa: BLE001 -- junk bytes fail anywhere in torch.load (a text
        # file: KeyError 101 from the unpickler's memo): the file is not one torch.save wrote
        known = isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError))
        first = (str(e).strip().splitlines()[0] if known and str(e).strip() else
                 type(e).__name__ if known else 'not a file torch.save wrote')
        raise UserError(f'corrupt or truncated {what}: {path} ({first[:120]})') from None


def strip_module_prefix(state_dict):
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds (reference trajectories)."""
    if isinstance(state_dict, dict) and state_dict and all(
            isinstance(k, str) and k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def weights_of(obj):
    """The state_dict inside a loaded weights file: the file itself, or its ``state_dict`` (the
    reference's checkpoints) or ``model`` (train_sgd.py's checkpoints) entry; ``module.`` dropped."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    return strip_module_prefix(obj)


def pretrained_weights(spec, arch, family):
    """(path, state_dict) of ``--pretrained``: a file, or (``spec`` True) torchvision's default
    weights of ``arch``, which must be in the local torch hub cache: nothing is downloaded."""
    path = spec
    if spec is True:
        if family != 'imagenet':
            raise UserError('--pretrained without a file means torchvision\'s ImageNet weights '
                            '(--datasets ImageNet only); give --pretrained PATH for a weights file')
        import torchvision
        try:
            url = torchvision.models.get_model_weights(arch).DEFAULT.url
        except (ValueError, AttributeError, KeyError):
            raise UserError(f'torchvision has no pretrained weights for {arch}') from None
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))
        if not os.path.isfile(path):
            raise UserError(f'--pretrained: {path} is missing; download {url} and put it there '
                            f'(nothing is downloaded automatically), or give --pretrained PATH')
    if str(path).endswith('.safetensors'):  # timm's hub files (safetensors comes with timm)
        if not os.path.isfile(path):
            raise UserError(f'missing weights file: {path}')
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors
        try:
            return path, load_safetensors(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f'corrupt or truncated weights file: {path} ({str(e)[:120]})') from None
    return path, weights_of(load_file(path, '--pretrained weights file'))


def snapshot_path(folder, i):
    return os.path.join(folder, f'{i}.pt')


def check_state_dict(state, model, path):
    """Raise a UserError naming ``path`` when ``state`` does not fit ``model``."""
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise UserError(f'{path} is not a state_dict')
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    bad = [k for k in expected if k in state and k not in not_tensors
           and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or not_tensors or bad:
        detail = (f'missing {missing[:2]}' if missing else f'unexpected {extra[:2]}' if extra else
                  f'{not_tensors[0]} is not a tensor' if not_tensors else
                  f'{bad[0]} has shape {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}')
        raise UserError(f'{path} does not fit this model (another arch or class count?): {detail}')


def load_snapshot(path, model):
    """Load a trajectory snapshot (a state_dict) into ``model``, checking it fits."""
    state = strip_module_prefix(load_file(path, 'snapshot'))
    check_state_dict(state, model, path)
    model.load_state_dict(state)


class FlatSnapshot:
    """A snapshot file seen as the flat vector of trainable parameters, sliced lazily.

    The file is memory-mapped, so ``snap[a:b]`` reads only the pages holding those coordinates:
    the basis extraction streams the trajectory without ever holding it whole in memory.
    """

    def __init__(self, path, model):
        state = strip_module_prefix(load_file(path, 'snapshot', mmap=True))
        check_state_dict(state, model, path)
        self.path = path
        self.tensors = [state[name].reshape(-1) for name, p in model.named_parameters() if p.requires_grad]
        self.offsets = np.cumsum([0] + [t.numel() for t in self.tensors])

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, sl):
        start, stop, _ = sl.indices(len(self))
        first = int(np.searchsorted(self.offsets, start, side='right') - 1)
        pieces = []
        for k in range(first, len(self.tensors)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            if lo >= stop:
                break
            pieces.append(self.tensors[k][max(start, lo) - lo:min(stop, hi) - lo])
        return torch.cat(pieces) if pieces else torch.empty(0)


def open_trajectory(folder, start, end, model, step=1):
    """The snapshots ``start, start+step, .. < end`` of ``folder`` as lazily read flat vectors.

    Every file is checked (present, loadable, same shapes as ``model``) before any work starts.
    """
    check_trajectory_files(folder, start, end, step)
    return [FlatSnapshot(snapshot_path(folder, i), model) for i in range(start, end, step)]


def check_trajectory_files(folder, start, end, step=1):
    """One-line UserError unless the snapshots ``start, start+step, .. < end`` are files in
    ``folder`` (present only: :func:`open_trajectory` reads and checks them)."""
    numbers = range(start, end, step)
    missing = [snapshot_path(folder, i) for i in numbers if not os.path.isfile(snapshot_path(folder, i))]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        every = f', step {step}' if step > 1 else ''
        raise UserError(f'missing snapshot {missing[0]}{more}: the trajectory needs '
                        f'{start}.pt .. {numbers[-1]}.pt{every} in {folder}')


def existing_ancestor(path):
    """``path`` itself, or the nearest folder above it that exists: where it would be made
    (None: a broken symbolic link on the way, which cannot be made)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        if os.path.lexists(path):
            return None
        path = os.path.dirname(path)
    return path


def unwritable_dir(path):
    """Why ``path`` cannot be used, or made, as a folder this process writes into (None: it
    can); found without creating anything: a file or broken link on the way, or a read-only
    folder (a read-only file system included, which ``os.access`` reports even to root)."""
    where = existing_ancestor(path)
    if where is None:
        return 'a broken symbolic link is on the way'
    if not os.path.isdir(where):
        return f'{where} is a file, not a folder'
    if not os.access(where, os.W_OK | os.X_OK):
        return f'{where} is not writable'
    return None


def prepare_save_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create --save-dir {path}: {e.strerror}') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f'--save-dir {path} is not writable')


def refuse_overwrite(paths, args):
    """Refuse to replace existing results unless ``--overwrite`` was given."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not args.overwrite:
        raise UserError(f'{existing[0]} already exists; pass --overwrite to replace it '
                        f'or choose another --save-dir')
