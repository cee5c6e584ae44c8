"""ImageFolder datasets (the ImageNet layout DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg):
scanned into file lists, decoded and augmented by DataLoader workers, normalised on the training
device; unreadable files are skipped and counted.
"""
import math
import os
import sys
from dataclasses import dataclass

import torch

import seeds
from errors import UserError

from .data import Normalise, rank_shares


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
