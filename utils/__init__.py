"""Data, models and files of the training scripts, one module per concern; every name is
re-exported here, so callers write ``utils.load_data``, ``utils.DeviceLoader``, ``utils.save_tensors``.

=======================  ===========================================================================
``utils/data.py``        in-memory datasets (CIFAR-10/100, MNIST, synthetic) and
                         :class:`DeviceLoader` (batches augmented and normalised on the device)
``utils/imagefolder.py`` ImageFolder datasets (ImageNet layout) decoded by DataLoader workers
``utils/noise.py``       label noise (``--corrupt``, ``--noise-model``)
``utils/loading.py``     from the flags to a run's data (subset, noise) and this rank's loaders
``utils/model.py``       ``--arch`` built for the data, ``--pretrained`` weights, ``--compile``
``utils/files.py``       atomic writes, safe loads, trajectory snapshots, save-dir checks
``utils/subset.py``      ``python -m utils.subset``: a class-balanced CIFAR subset as pickles (not
                         re-exported: it is a command)
=======================  ===========================================================================

The method itself (basis, projection, P-BFGS) lives in the ``dldr`` package, the loops in
``engine.py``, flags in ``flags.py``, the process group in ``distributed.py``, the seeds in
``seeds.py``, :class:`UserError` (re-exported here) in ``errors.py``.  Nothing here keeps
module-level mutable state.
"""
from errors import UserError

from .data import DeviceLoader, Dataset, Normalise, make_synthetic, rank_shares, read_cifar, read_mnist
from .files import (FlatSnapshot, atomic_write, check_state_dict, check_trajectory_files, existing_ancestor,
                    load_file, load_snapshot, open_trajectory, prepare_save_dir, refuse_overwrite,
                    save_json, save_tensors, snapshot_path, strip_module_prefix, unwritable_dir, weights_of)
from .imagefolder import (IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, FolderData, FolderLoader, ImageFiles,
                          ShardedBatches, count_skipped, folder_transforms, read_image_folder,
                          scan_image_folder)
from .loading import DATASET_NAMES, balanced_subset, dataset_family, eval_batch_size, load_data, make_loaders
from .model import build_model, compile_model, is_compiled, pretrained_weights
from .noise import NOISE_MODELS, corrupt_labels, noise_record

__all__ = [
    'UserError',
    # data
    'Dataset', 'DeviceLoader', 'Normalise', 'make_synthetic', 'rank_shares', 'read_cifar', 'read_mnist',
    # imagefolder
    'IMAGE_EXTENSIONS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'FolderData', 'FolderLoader', 'ImageFiles',
    'ShardedBatches', 'count_skipped', 'folder_transforms', 'read_image_folder', 'scan_image_folder',
    # noise
    'NOISE_MODELS', 'corrupt_labels', 'noise_record',
    # loading
    'DATASET_NAMES', 'balanced_subset', 'dataset_family', 'eval_batch_size', 'load_data', 'make_loaders',
    # model
    'build_model', 'compile_model', 'is_compiled', 'pretrained_weights',
    # files
    'FlatSnapshot', 'atomic_write', 'check_state_dict', 'check_trajectory_files', 'existing_ancestor',
    'load_file', 'load_snapshot', 'open_trajectory', 'prepare_save_dir', 'refuse_overwrite', 'save_json',
    'save_tensors', 'snapshot_path', 'strip_module_prefix', 'unwritable_dir', 'weights_of',
]
