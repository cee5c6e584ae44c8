"""From a run's flags to its data and loaders: the ``--datasets`` read (:func:`load_data`, with
the ``--smalldatasets`` subset and the ``--corrupt`` labels applied) and this rank's training and
test loaders (:func:`make_loaders`).
"""
import torch

import models
import seeds

from .data import DeviceLoader, make_synthetic, read_cifar, read_mnist
from .imagefolder import FolderData, FolderLoader, ImageFiles, folder_transforms, read_image_folder
from .noise import corrupt_labels


DATASET_NAMES = ('CIFAR10', 'CIFAR100', 'MNIST', 'synthetic', 'ImageNet')


def dataset_family(name):
    """The model family (``models.FAMILIES``) of a dataset: torchvision's models for ImageFolder data."""
    return 'imagenet' if name == 'ImageNet' else 'cifar'


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
