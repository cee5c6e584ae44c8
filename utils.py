"""Everything the three training scripts share: command-line flags, data on the training device,
label noise, trajectory and checkpoint files, logging.

The method itself (basis, projection, P-BFGS) lives in ``dldr.py``; this module knows about disks,
datasets and users.  Nothing here keeps module-level mutable state.
"""
import argparse
import contextlib
import json
import math
import os
import pickle
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import models


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2, no traceback."""


def run_cli(main):
    """Run ``main()`` and turn a :class:`UserError` into ``error: ...`` on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        sys.exit(130)


# ---------------------------------------------------------------------------------------------
# Command-line flags.  Names, meanings and defaults follow the reference scripts; both the
# hyphenated and the underscored spellings of a flag are accepted (the reference used both).
# ---------------------------------------------------------------------------------------------

DATASET_NAMES = ('CIFAR10', 'CIFAR100', 'MNIST', 'synthetic')


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def _nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def _unit_interval(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must lie in [0, 1], got {text}')
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f'must lie in (0, 1], got {text}')
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line and exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def make_parser(description, *, epochs, lr, lr_help):
    """The flags every script shares (train_sgd's set); subspace scripts add theirs on top."""
    p = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--arch', '-a', metavar='ARCH', default='resnet20',
      help='model architecture: ' + ', '.join(models.available_archs()))
    a('--datasets', metavar='NAME', default='CIFAR10',
      help='training data: ' + ', '.join(DATASET_NAMES) + ' (synthetic: offline, generated in memory)')
    a('--data-dir', '--data_dir', default='./data',
      help='where datasets are read from (standard cifar-10-batches-py / cifar-100-python layout '
           'read directly) and downloaded to when absent')
    a('--optimizer', default='sgd', choices=('sgd', 'adam'),
      help='optimizer of the sampling run (adam uses lr 0.001 as the reference)')
    a('-j', '--workers', default=4, type=int, metavar='N',
      help='data-loading workers; unused: in-memory datasets are augmented on the training device')
    a('--epochs', default=epochs, type=_nonnegative_int, metavar='N', help='number of epochs to run')
    a('--start-epoch', '--start_epoch', default=0, type=_nonnegative_int, metavar='N',
      help='epoch number to start counting from (set automatically by --resume)')
    a('-b', '--batch-size', '--batch_size', default=128, type=_positive_int, metavar='N',
      help='mini-batch size')
    a('--lr', '--learning-rate', '--learning_rate', default=lr, type=float, metavar='LR', help=lr_help)
    a('--momentum', default=0.9, type=float, metavar='M', help='SGD momentum')
    a('--weight-decay', '--weight_decay', '--wd', default=1e-4, type=float, metavar='W',
      help='weight decay (SGD sampling run only)')
    a('-p', '--print-freq', '--print_freq', default=50, type=_nonnegative_int, metavar='N',
      help='when stdout is not a terminal, print a progress line every N iterations (0: never); '
           'on a terminal a progress bar is shown instead')
    a('--resume', default='', metavar='PATH',
      help="resume from a full checkpoint; 'auto' takes <save-dir>/checkpoint.pt")
    a('-e', '--evaluate', action='store_true', help='only evaluate the model on the test set')
    a('--pretrained', action='store_true',
      help='accepted for compatibility with the reference; no pretrained CIFAR weights exist offline')
    a('--half', action='store_true', help='alias of --amp fp16 (the reference cast the model to fp16)')
    a('--amp', default='off', choices=('off', 'bf16', 'fp16'),
      help='mixed precision through autocast (fp16 adds a GradScaler on CUDA)')
    a('--channels-last', '--channels_last', action='store_true',
      help='use the channels_last memory format (faster convolutions on tensor-core GPUs)')
    a('--save-dir', '--save_dir', default='save_temp', metavar='DIR',
      help='directory of the trajectory, checkpoints, final models and metrics JSON')
    a('--save-every', '--save_every', default=10, type=_positive_int, metavar='N',
      help='keep a numbered full checkpoint every N epochs (a rolling checkpoint.pt is written every epoch)')
    a('--overwrite', action='store_true',
      help='allow replacing results of an earlier run in --save-dir (refused otherwise)')
    a('--randomseed', default=1, type=int, metavar='S',
      help='seed of initialisation, data order, augmentation, label noise and subsets')
    a('--deterministic', action='store_true',
      help='use deterministic algorithms (bit-reproducible runs, slower on GPU)')
    a('--corrupt', default=0.0, type=_unit_interval, metavar='C',
      help='label noise: exactly round(C*N) training labels replaced by a different random class')
    a('--smalldatasets', default=None, type=_fraction, metavar='P',
      help='train on a seeded, class-balanced fraction P of the training set')
    a('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    return p


def add_subspace_args(p, *, params_end=51):
    """Flags of the subspace scripts (train_psgd.py, train_pbfgs.py)."""
    a = p.add_argument
    a('--n_components', '--n-components', default=40, type=_positive_int, metavar='D',
      help='dimension d of the subspace (number of DLDR basis vectors)')
    a('--params_start', '--params-start', default=0, type=_nonnegative_int, metavar='N',
      help='first snapshot of the trajectory used for the basis; training starts from it')
    a('--params_end', '--params-end', default=params_end, type=_nonnegative_int, metavar='N',
      help='end of the snapshot range (exclusive): snapshots params_start .. params_end-1')
    a('--pretrain-dir', '--pretrain_dir', default=None, metavar='DIR',
      help='directory holding the sampled trajectory (default: --save-dir)')
    a('--alpha', default=0.0, type=float, metavar='A',
      help='weight of the residual momentum: the gradient part outside the subspace (0: off)')
    a('--gamma', default=0.9, type=float, metavar='G', help='momentum of the residual gradient')
    a('--basis-memory', '--basis_memory', default=256, type=_positive_int, metavar='MiB',
      help='device-memory bound of the streamed basis extraction')


def add_lr_milestones_arg(p, default, default_help):
    """``--lr-milestones`` (train_sgd.py, train_psgd.py): the epochs of the x0.1 decays."""
    p.add_argument('--lr-milestones', '--lr_milestones', default=default, nargs='*',
                   type=_positive_int, metavar='E',
                   help=f'epochs after which the learning rate is multiplied by 0.1 (default: '
                        f'{default_help}; give none for a constant rate)')


def finish_args(args):
    """Checks no single ``type=`` can make, and the ``--half`` alias."""
    if args.half:
        args.amp = 'fp16'
    if args.datasets not in DATASET_NAMES:
        raise UserError(f"unknown dataset {args.datasets!r}; valid: {', '.join(DATASET_NAMES)}")
    if args.arch not in models.ARCHS:
        raise UserError(f"unknown arch {args.arch!r}; valid: {', '.join(models.available_archs())}")
    if hasattr(args, 'params_end') and args.params_end <= args.params_start:
        raise UserError(f'--params_end ({args.params_end}) must be greater than --params_start '
                        f'({args.params_start}): snapshots params_start..params_end-1 are used')
    if hasattr(args, 'n_components') and args.n_components >= args.params_end - args.params_start:
        raise UserError(f'--n_components {args.n_components} must be smaller than the number of '
                        f'snapshots ({args.params_end - args.params_start}: {args.params_start}..'
                        f'{args.params_end - 1}): a centred trajectory of t snapshots has rank <= t-1')
    return args


def pick_device(name=None):
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise UserError(f'bad --device {name!r}: {e}') from None
        # (not index >= count alone: torch wraps a large index, cuda:999 -> cuda:-25)
        if device.type == 'cuda' and not 0 <= (device.index or 0) < torch.cuda.device_count():
            raise UserError(f'--device {name}: torch sees {torch.cuda.device_count()} CUDA '
                            f'device(s) here')
        return device
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def seed_everything(seed, deterministic=False):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    else:
        torch.backends.cudnn.benchmark = True


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

    @property
    def channels(self):
        return self.train_x.shape[1]


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


def corrupt_labels(labels, fraction, num_classes, seed):
    """Replace exactly ``round(fraction * N)`` labels by a uniformly drawn *different* class.

    Returns ``(new_labels, indices)``; the same ``seed`` gives the same result in every script.
    """
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f'--corrupt must lie in [0, 1], got {fraction}')
    n = len(labels)
    count = int(round(fraction * n))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:count].sort().values
    shift = torch.randint(1, num_classes, (count,), generator=g)
    new = labels.clone()
    new[idx] = (labels[idx] + shift) % num_classes
    return new, idx


def balanced_subset(labels, fraction, num_classes, seed):
    """Indices of a seeded, class-balanced fraction of a dataset (round(p * n_c) per class)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        take = int(round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(keep).sort().values


# Seeds of the data-side random choices, derived from --randomseed so that all scripts agree.
def _data_seed(seed, purpose):
    return {'subset': 1_000_003, 'noise': 2_000_003}[purpose] + seed


def load_data(args):
    """The training data of a run: dataset, then ``--smalldatasets`` subset, then label noise."""
    if args.datasets == 'synthetic':
        data = make_synthetic()
    elif args.datasets in _CIFAR:
        data = read_cifar(args.data_dir, args.datasets)
    elif args.datasets == 'MNIST':
        data = read_mnist(args.data_dir)
    else:
        raise UserError(f"unknown dataset {args.datasets!r}; valid: {', '.join(DATASET_NAMES)}")
    if args.smalldatasets is not None and args.smalldatasets < 1:
        keep = balanced_subset(data.train_y, args.smalldatasets, data.num_classes,
                               _data_seed(args.randomseed, 'subset'))
        data.train_x, data.train_y = data.train_x[keep], data.train_y[keep]
    if args.corrupt > 0:
        data.train_y, data.corrupted = corrupt_labels(
            data.train_y, args.corrupt, data.num_classes, _data_seed(args.randomseed, 'noise'))
    return data


class DeviceLoader:
    """Mini-batches of an in-memory dataset, augmented and normalised on the training device.

    The uint8 images are moved to ``device`` once.  Training batches get the standard CIFAR
    augmentation (random 32x32 crop of the image zero-padded by 4, random horizontal flip), drawn
    per sample exactly as torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip would,
    then normalisation; all of it batched on the device.  The random choices of an epoch (order,
    crops, flips) come from ``generator`` (a CPU generator) at the start of the epoch, so saving its
    state at an epoch boundary makes resumed runs identical.
    """

    def __init__(self, x, y, batch_size, mean, std, device, *, train, generator=None,
                 channels_last=False):
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.generator = generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __len__(self):
        return math.ceil(len(self.y) / self.batch_size)

    def _normalise(self, x):
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def __iter__(self):
        n = len(self.y)
        if not self.train:
            for i in range(0, n, self.batch_size):
                yield self._normalise(self.x[i:i + self.batch_size]), self.y[i:i + self.batch_size]
            return
        g = self.generator
        order = torch.randperm(n, generator=g).to(self.device, non_blocking=True)
        shifts = torch.randint(0, 9, (n, 2), generator=g).to(self.device, non_blocking=True)
        flips = torch.rand(n, generator=g).lt(0.5).to(self.device, non_blocking=True)
        size = self.x.shape[-1]
        ar = torch.arange(size, device=self.device)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            sh, fl = shifts[i:i + self.batch_size], flips[i:i + self.batch_size]
            x = F.pad(self.x[idx], (4, 4, 4, 4))
            rows = (sh[:, 0:1] + ar).view(-1, 1, size, 1)
            cols = sh[:, 1:2] + ar
            cols = torch.where(fl.view(-1, 1), cols.flip(1), cols).view(-1, 1, 1, size)
            x = x.gather(2, rows.expand(-1, x.shape[1], -1, x.shape[3]))
            x = x.gather(3, cols.expand(-1, x.shape[1], size, -1))
            yield self._normalise(x), self.y[idx]


def make_loaders(data, args, device, generator):
    train = DeviceLoader(data.train_x, data.train_y, args.batch_size, data.mean, data.std, device,
                         train=True, generator=generator, channels_last=args.channels_last)
    test = DeviceLoader(data.test_x, data.test_y, max(args.batch_size, 1024), data.mean, data.std,
                        device, train=False, channels_last=args.channels_last)
    return train, test


# ---------------------------------------------------------------------------------------------
# Models, snapshots, checkpoints.
# ---------------------------------------------------------------------------------------------

def build_model(args, data, device):
    model = models.get_model(args.arch, num_classes=data.num_classes, in_channels=data.channels)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'corrupt or truncated {what}: {path} ({first[:120]})') from None


def strip_module_prefix(state_dict):
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds (reference trajectories)."""
    if isinstance(state_dict, dict) and state_dict and all(
            isinstance(k, str) and k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


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


def open_trajectory(folder, start, end, model):
    """The snapshots ``start .. end-1`` of ``folder`` as lazily read flat vectors.

    Every file is checked (present, loadable, same shapes as ``model``) before any work starts.
    """
    missing = [snapshot_path(folder, i) for i in range(start, end)
               if not os.path.isfile(snapshot_path(folder, i))]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        raise UserError(f'missing snapshot {missing[0]}{more}: the trajectory needs '
                        f'{start}.pt .. {end - 1}.pt in {folder}')
    return [FlatSnapshot(snapshot_path(folder, i), model) for i in range(start, end)]


# ---------------------------------------------------------------------------------------------
# Training and evaluation helpers, logging.
# ---------------------------------------------------------------------------------------------

def autocast(device, amp):
    if amp == 'off':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


class EpochMeter:
    """Running loss sum and correct count, kept on the device (no per-step host sync)."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.count = 0

    def update(self, loss, output, target):
        n = target.shape[0]
        self.loss += loss.detach().double() * n
        self.correct += (output.detach().argmax(1) == target).sum()
        self.count += n

    def result(self):
        """(mean loss, accuracy in %) — one host sync."""
        if self.count == 0:
            return float('nan'), float('nan')
        return self.loss.item() / self.count, 100.0 * self.correct.item() / self.count


def evaluate(model, loader, device, amp='off'):
    """Test loss and accuracy (%) in eval mode under inference mode."""
    model.eval()
    meter = EpochMeter(device)
    with torch.inference_mode(), autocast(device, amp):
        for x, y in loader:
            out = model(x)
            meter.update(F.cross_entropy(out.float(), y), out, y)
    return meter.result()


def progress(iterable, total, desc, print_freq):
    """tqdm on a terminal; otherwise plain iteration with a line every ``print_freq`` steps."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = time.time()
    for i, item in enumerate(iterable):
        yield item
        if print_freq and (i + 1) % print_freq == 0 and i + 1 < total:
            print(f'  {desc} [{i + 1}/{total}] {time.time() - start:.1f}s', flush=True)


class RunRecord:
    """The run's metrics JSON (args, per-epoch rows, summary), rewritten atomically each epoch."""

    def __init__(self, path, args, **extra):
        self.path = path
        self.data = {'args': vars(args), **extra, 'epochs': [], 'final_test_acc': None,
                     'best_test_acc': None}

    def add_epoch(self, row):
        self.data['epochs'].append(row)
        accs = [r['test_acc'] for r in self.data['epochs']]
        self.data['final_test_acc'] = accs[-1]
        self.data['best_test_acc'] = max(accs)
        self.save()

    def save(self):
        save_json(self.data, self.path)


def epoch_line(epoch, epochs, lr, train_loss, train_acc, test_loss, test_acc, seconds, extra=''):
    return (f'epoch {epoch:>4d}/{epochs}  lr {lr:.4g}  train loss {train_loss:.4f} acc {train_acc:6.2f}%  '
            f'test loss {test_loss:.4f} acc {test_acc:6.2f}%  {seconds:6.1f}s{extra}')


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


def train_epoch(model, loader, optimizer, device, *, amp='off', scaler=None, before_step=None,
                desc='train', print_freq=0):
    """One epoch of mini-batch training; ``before_step()`` runs between backward and the step
    (P-SGD projects the gradient there).  Returns (mean loss, accuracy %); the loss is NaN/inf
    when any step produced a non-finite loss."""
    model.train()
    meter = EpochMeter(device)
    for x, y in progress(loader, len(loader), desc, print_freq):
        with autocast(device, amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if before_step is not None:
                before_step()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
        meter.update(loss, out, y)
    return meter.result()


def grad_scaler(args, device):
    """A GradScaler for fp16 autocast on CUDA (bf16 and CPU need none)."""
    if args.amp == 'fp16' and device.type == 'cuda':
        return torch.amp.GradScaler('cuda')
    return None


# ---------------------------------------------------------------------------------------------
# Subspace runs (train_psgd.py, train_pbfgs.py).
# ---------------------------------------------------------------------------------------------

def subspace_tag(method, args):
    """File-name stem of a subspace run's outputs, e.g. ``pbfgs_d40_0-81``."""
    return f'{method}_d{args.n_components}_{args.params_start}-{args.params_end}'


def extract_basis(args, model, device):
    """Algorithm 1 on the trajectory ``params_start .. params_end-1``, streamed from disk onto
    ``device``; then ``model`` is set to snapshot ``params_start`` (weights and BN buffers).

    Returns the :class:`dldr.Basis` and the ``basis`` entry of the run's JSON.
    """
    import dldr
    folder = args.pretrain_dir or args.save_dir
    t = args.params_end - args.params_start  # finish_args has checked n_components < t
    trajectory = open_trajectory(folder, args.params_start, args.params_end, model)
    start = time.time()
    try:
        basis = dldr.dldr_basis(trajectory, args.n_components, device=device,
                                max_bytes=args.basis_memory * 2**20)
    except ValueError as e:
        raise UserError(f'basis of {folder}/{args.params_start}..{args.params_end - 1}.pt: {e}') from None
    seconds = time.time() - start
    load_snapshot(snapshot_path(folder, args.params_start), model)
    ratio = basis.explained_variance_ratio.tolist()
    cumulative = np.cumsum(ratio)
    print(f'basis: {t} snapshots {args.params_start}..{args.params_end - 1} of {folder}, '
          f'{len(trajectory[0])} parameters -> d = {basis.n_components}, {seconds:.1f}s on {device}')
    print('explained variance ratio: ' + ' '.join(f'{r:.4f}' for r in ratio))
    print('cumulative:               ' + ' '.join(f'{c:.4f}' for c in cumulative))
    info = {'snapshots': [args.params_start, args.params_end], 'folder': folder,
            'n_components': basis.n_components, 'explained_variance_ratio': ratio,
            'cumulative_explained_variance': cumulative.tolist(),
            'singular_values': basis.singular_values.tolist(), 'seconds': seconds}
    return basis, info


def prepare_subspace_run(args, method):
    """Shared start of the subspace scripts: checks, device, data, model at ``params_start``,
    basis, loaders and the run record.  Returns a namespace of them, or None after ``--evaluate``
    (which only evaluates the run's saved final model)."""
    from types import SimpleNamespace
    if args.resume:
        raise UserError('--resume applies to train_sgd.py; rerun the subspace run instead')
    device = pick_device(args.device)
    seed_everything(args.randomseed, args.deterministic)
    prepare_save_dir(args.save_dir)
    tag = subspace_tag(method, args)
    model_path = os.path.join(args.save_dir, f'{tag}.pt')
    metrics_path = os.path.join(args.save_dir, f'metrics_{tag}.json')
    if not args.evaluate:
        refuse_overwrite([model_path, metrics_path], args)
    data = load_data(args)
    model = build_model(args, data, device)
    if args.evaluate:
        load_snapshot(model_path, model)
        loss, acc = evaluate(model, make_loaders(data, args, device, None)[1], device, args.amp)
        print(f'{model_path}: test loss {loss:.4f} acc {acc:.2f}%')
        return None
    basis, info = extract_basis(args, model, device)
    generator = torch.Generator().manual_seed(args.randomseed)
    train_loader, test_loader = make_loaders(data, args, device, generator)
    record = RunRecord(metrics_path, args, method=method, basis=info,
                       n_parameters=sum(p.numel() for p in model.parameters()),
                       n_train=len(data.train_y),
                       n_corrupted=len(data.corrupted) if data.corrupted is not None else 0)
    return SimpleNamespace(device=device, data=data, model=model, basis=basis, record=record,
                           train_loader=train_loader, test_loader=test_loader,
                           model_path=model_path, metrics_path=metrics_path)


def finish_subspace_run(run, start):
    """Save the final model and metrics of a subspace run and print where they are."""
    save_tensors(run.model.state_dict(), run.model_path)
    run.record.data['seconds'] = time.time() - start
    run.record.save()
    print(f'final test acc {run.record.data["final_test_acc"]}  best {run.record.data["best_test_acc"]}  '
          f'({time.time() - start:.0f}s)')
    print(f'model: {run.model_path}; metrics: {run.metrics_path}')
