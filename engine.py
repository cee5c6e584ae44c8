"""Run plumbing shared by the three scripts: flags, device and process group, the training and
evaluation loops, the subspace-run set-up and the metrics record.

The method lives in ``dldr.py`` (pure torch), data and files in ``utils.py``.  A script is
parse -> :func:`setup` -> data -> model -> loop -> report, run through :func:`run_cli`.

Several processes: launched by ``torchrun``, every process reads RANK / LOCAL_RANK / WORLD_SIZE
from its environment, joins the process group (nccl on CUDA, gloo on the CPU) and uses
cuda:LOCAL_RANK.  ``--batch-size`` is the global batch; each rank takes its share of every
mini-batch (:class:`utils.DeviceLoader`).  Global rank 0 alone prints and writes files.
"""
import argparse
import contextlib
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import dldr
import models
import tracking
import utils
from utils import UserError


# ---------------------------------------------------------------------------------------------
# Command line.  Names, meanings and defaults follow the reference scripts; both the hyphenated
# and the underscored spellings of a flag are accepted (the reference used both).
# ---------------------------------------------------------------------------------------------

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def nonnegative_int(text):
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


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line and exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')

    def format_help(self):
        """The --arch choices per dataset family, filled in only when help is shown (listing
        torchvision's models imports torchvision, seconds a script need not spend otherwise)."""
        for action in self._actions:
            if action.dest == 'arch':
                action.help = (f'model architecture. CIFAR10/CIFAR100/MNIST/synthetic: '
                               f'{", ".join(models.available_archs("cifar"))}. ImageNet (torchvision\'s '
                               f'models, the class count from the folder): '
                               f'{", ".join(models.available_archs("imagenet"))}. Any dataset: '
                               f'timm/NAME, timm\'s model NAME (timm.list_models(); e.g. '
                               f'timm/resnet10t, timm/vit_tiny_patch16_224), normalised as its '
                               f'pretrained config says; a fixed-input-size model (a ViT) is built '
                               f'for the data\'s image size: 32 for the in-memory datasets, '
                               f'--image-size for ImageNet')
        return super().format_help()


def make_parser(description, *, epochs, lr, lr_help):
    """The flags every script shares (train_sgd's set); subspace scripts add theirs on top."""
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--arch', '-a', metavar='ARCH', default='resnet20', help='model architecture (ours, '
      'torchvision\'s or timm/NAME)')
    a('--datasets', metavar='NAME', default='CIFAR10',
      help='training data: ' + ', '.join(utils.DATASET_NAMES) + ' (synthetic: offline, generated in '
           'memory; ImageNet: any ImageFolder tree, --data-dir/train and --data-dir/val with one '
           'folder of images per class)')
    a('--data-dir', '--data_dir', default='./data',
      help='where datasets are read from (standard cifar-10-batches-py / cifar-100-python layout '
           'read directly; ImageNet: train/ and val/ in the ImageFolder layout) and, except '
           'ImageNet, downloaded to when absent')
    a('--image-size', '--image_size', default=224, type=positive_int, metavar='S',
      help='ImageNet: training crop RandomResizedCrop(S) + flip; evaluation Resize(S*256/224) + '
           'CenterCrop(S)')
    a('--optimizer', default='sgd', choices=('sgd', 'adam'),
      help='optimizer of the sampling run (adam uses lr 0.001 as the reference)')
    a('-j', '--workers', default=4, type=int, metavar='N',
      help='ImageNet: DataLoader worker processes per rank decoding and augmenting the images '
           '(0: in the training process); unused for the in-memory datasets, which are augmented '
           'on the training device')
    a('--epochs', default=epochs, type=nonnegative_int, metavar='N', help='number of epochs to run')
    a('--start-epoch', '--start_epoch', default=0, type=nonnegative_int, metavar='N',
      help='train_sgd.py with --resume: the epoch to continue from (taken from the checkpoint, '
           'which overrides it); without --resume only 0 is accepted')
    a('-b', '--batch-size', '--batch_size', default=128, type=positive_int, metavar='N',
      help='mini-batch size: the global batch, split evenly over the ranks under torchrun')
    a('--eval-batch-size', '--eval_batch_size', default=None, type=positive_int, metavar='N',
      help='evaluation batch (default: 256 on the CPU, where larger batches fall out of cache; '
           '1024 on CUDA)')
    a('--lr', '--learning-rate', '--learning_rate', default=lr, type=float, metavar='LR', help=lr_help)
    a('--momentum', default=0.9, type=float, metavar='M', help='SGD momentum')
    a('--weight-decay', '--weight_decay', '--wd', default=1e-4, type=float, metavar='W',
      help='weight decay (SGD sampling run only)')
    a('-p', '--print-freq', '--print_freq', default=50, type=nonnegative_int, metavar='N',
      help='when stdout is not a terminal, print a progress line every N iterations (0: never); '
           'on a terminal a progress bar is shown instead')
    a('--resume', default='', metavar='PATH',
      help="train_sgd.py: resume from a full checkpoint of train_sgd.py ('auto': "
           "<save-dir>/checkpoint.pt, or a new run when there is none yet): weights, BN buffers, optimizer, scheduler, RNG states, "
           "epoch and snapshot numbering. With -e also a weights-only file (a snapshot k.pt, or the "
           "reference's checkpoint_*.th / model.th: a dict with 'state_dict', 'module.' keys): only "
           "the weights and BN buffers are restored from it, not optimizer, scheduler or epoch")
    a('-e', '--evaluate', action='store_true', help='only evaluate the model on the test set')
    a('--pretrained', nargs='?', const=True, default=None, metavar='PATH',
      help='train_sgd.py: start from these weights. Alone: torchvision\'s default ImageNet weights '
           'of --arch, read from the local torch hub cache (<torch.hub.get_dir()>/checkpoints/; '
           'never downloaded); for timm/NAME timm\'s weights from the local Hugging Face cache '
           '(classifier re-initialised for the class count; never downloaded). PATH: a state_dict or a checkpoint holding one under "state_dict" '
           '(the reference\'s) or "model" (ours), "module." prefixes dropped. The subspace scripts '
           'start from snapshot --params_start and ignore it')
    a('--half', action='store_true', help='alias of --amp fp16 (the reference cast the model to fp16)')
    a('--amp', default='off', choices=('off', 'bf16', 'fp16'),
      help='mixed precision through autocast (fp16 adds a GradScaler on CUDA)')
    a('--channels-last', '--channels_last', action='store_true',
      help='use the channels_last memory format (faster convolutions on tensor-core GPUs)')
    a('--save-dir', '--save_dir', default='save_temp', metavar='DIR',
      help='directory of the trajectory, checkpoints, final models and metrics JSON')
    a('--save-every', '--save_every', default=10, type=positive_int, metavar='N',
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
    a('--device', default=None,
      help='torch device (default: cuda if available, else cpu; under torchrun cuda:LOCAL_RANK)')
    a('--dist-backend', '--dist_backend', default=None, choices=('nccl', 'gloo'),
      help='torch.distributed backend under torchrun (default: nccl on CUDA, gloo on the CPU)')
    a('--dist-timeout', '--dist_timeout', default=600, type=positive_int, metavar='S',
      help='seconds a rank waits in a collective for the others before the job fails')
    tracking.add_tracking_args(p)
    return p


SUBSPACE_KINDS = ('dldr', 'twa', 'random', 'fastfood', 'redrawn')
SEEDED_KINDS = ('random', 'fastfood', 'redrawn')


def _train_start(text):
    return text if text == 'mean' else nonnegative_int(text)


def add_subspace_args(p, *, params_end=51):
    """Flags of the subspace scripts (train_psgd.py, train_pbfgs.py)."""
    a = p.add_argument
    a('--n_components', '--n-components', default=None, type=positive_int, metavar='D',
      help='dimension d of the subspace (default: 40; twa: the number of snapshots)')
    a('--params_start', '--params-start', default=0, type=nonnegative_int, metavar='N',
      help='first snapshot of the trajectory used for the basis; training starts from it '
           '(see --train-start)')
    a('--params_end', '--params-end', default=params_end, type=nonnegative_int, metavar='N',
      help='end of the snapshot range (exclusive): snapshots params_start .. params_end-1')
    a('--params-step', '--params_step', default=1, type=positive_int, metavar='K',
      help='use every K-th snapshot of params_start..params_end-1 (the reference\'s ImageNet run: 2)')
    a('--pretrain-dir', '--pretrain_dir', default=None, metavar='DIR',
      help='directory holding the sampled trajectory (default: --save-dir)')
    a('--subspace', default='dldr', choices=SUBSPACE_KINDS,
      help='dldr: top-d principal directions of the centred snapshots (the paper); twa: '
           'orthonormal basis of the raw snapshots in order (Trainable Weight Averaging; starts '
           'at their mean); random: a seeded random subspace; fastfood: a seeded structured '
           'random map (Le et al. 2013, O(n) memory); redrawn: a new Fastfood random subspace '
           'at every step (Gressmann et al. 2020; P-SGD only)')
    a('--subspace-seed', '--subspace_seed', default=None, type=int, metavar='S',
      help='seed of the random, fastfood and redrawn subspaces (default: --randomseed)')
    a('--train-start', '--train_start', default=None, type=_train_start, metavar='K|mean',
      help='where training starts: snapshot K, or mean: the mean of snapshots params_start .. '
           'params_end-1 with BatchNorm statistics re-estimated on the training set (default: '
           'mean for twa, params_start otherwise)')
    a('--alpha', default=0.0, type=float, metavar='A',
      help='weight of the residual momentum: the gradient part outside the subspace (0: off)')
    a('--gamma', default=0.9, type=float, metavar='G', help='momentum of the residual gradient')
    a('--basis-memory', '--basis_memory', default=256, type=positive_int, metavar='MiB',
      help='device-memory bound of the streamed basis extraction')
    a('--bn-update', '--bn_update', default=10, type=nonnegative_int, metavar='N',
      help='re-estimate the BatchNorm running statistics on N training batches before each '
           'evaluation and before saving the final model: N forward passes each time, training '
           'itself is unchanged (0: off, as the reference: the running averages of training, '
           'which lag the large early steps of short runs; docs/RESULTS.md)')


def add_lr_milestones_arg(p, default, default_help):
    """``--lr-milestones`` (train_sgd.py, train_psgd.py): the epochs of the x0.1 decays."""
    p.add_argument('--lr-milestones', '--lr_milestones', default=default, nargs='*',
                   type=positive_int, metavar='E',
                   help=f'epochs after which the learning rate is multiplied by 0.1 (default: '
                        f'{default_help}; give none for a constant rate)')


def finish_args(args):
    """Checks no single ``type=`` can make, and the ``--half`` alias."""
    if args.half:
        args.amp = 'fp16'
    if getattr(args, 'start_epoch', 0) and not getattr(args, 'resume', ''):
        # a fresh run numbers its snapshots from the initialisation (0.pt) and its schedule from
        # epoch 0: a run that "starts at N" has neither; the checkpoint carries both
        raise UserError(f'--start-epoch {args.start_epoch} needs --resume: a run continues from a '
                        f'checkpoint of train_sgd.py, whose epoch it then takes')
    if args.datasets not in utils.DATASET_NAMES:
        raise UserError(f"unknown dataset {args.datasets!r}; valid: {', '.join(utils.DATASET_NAMES)}")
    family = utils.dataset_family(args.datasets)
    if models.is_timm(args.arch):
        try:
            models.check_timm_arch(args.arch)
        except ValueError as e:
            raise UserError(str(e)) from None
    elif args.arch not in (models.ARCHS if family == 'cifar' else models.available_archs(family)):
        raise UserError(f"unknown arch {args.arch!r} for {args.datasets}; valid: "
                        f"{', '.join(models.available_archs(family))}")
    if hasattr(args, 'params_end') and args.params_end <= args.params_start:
        raise UserError(f'--params_end ({args.params_end}) must be greater than --params_start '
                        f'({args.params_start}): snapshots params_start..params_end-1 are used')
    if hasattr(args, 'subspace'):
        t = len(snapshot_numbers(args))
        every = f', step {args.params_step}' if args.params_step > 1 else ''
        if args.n_components is None:
            args.n_components = t if args.subspace == 'twa' else 40
        if args.subspace_seed is None:
            args.subspace_seed = args.randomseed
        if args.train_start is None:
            args.train_start = default_train_start(args)
        if args.subspace == 'twa' and args.n_components > t:
            raise UserError(f'--n_components {args.n_components} must not exceed the number of '
                            f'snapshots ({t}{every}) with --subspace twa: their span has dimension <= {t}')
        if args.subspace == 'dldr' and args.n_components >= t:
            raise UserError(f'--n_components {args.n_components} must be smaller than the number '
                            f'of snapshots ({t}: {args.params_start}..{args.params_end - 1}{every}): a '
                            f'centred trajectory of t snapshots has rank <= t-1')
    return args


# ---------------------------------------------------------------------------------------------
# Device and process group.
# ---------------------------------------------------------------------------------------------

class DistComm(dldr.Comm):
    """:class:`dldr.Comm` over the default torch.distributed process group."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_(self, tensor, op='mean'):
        dist.all_reduce(tensor)  # SUM: ReduceOp.AVG exists on nccl only
        if op == 'mean':
            tensor.div_(self.world_size)
        return tensor

    def all_gather_(self, out, tensor):
        dist.all_gather(out, tensor)


@dataclass
class Context:
    """Where this process runs: device, rank and the communicator of its group."""
    device: torch.device
    comm: dldr.Comm = field(default_factory=dldr.Comm)
    local_rank: int = 0

    @property
    def rank(self):
        return self.comm.rank

    @property
    def world_size(self):
        return self.comm.world_size

    @property
    def is_main(self):
        return self.comm.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def print(self, *args, **kwargs):
        """``print`` on global rank 0 only (flushed: logs are read through ``tee``)."""
        if self.is_main:
            print(*args, **kwargs, flush=True)


def pick_device(name=None, local_rank=0):
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise UserError(f'bad --device {name!r}: {e}') from None
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', local_rank)
        # (not index >= count alone: torch wraps a large index, cuda:999 -> cuda:-25)
        if device.type == 'cuda' and not 0 <= device.index < torch.cuda.device_count():
            raise UserError(f'--device {name}: torch sees {torch.cuda.device_count()} CUDA '
                            f'device(s) here')
        return device
    return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')


def under_torchrun():
    return 'WORLD_SIZE' in os.environ and 'RANK' in os.environ


def setup(args):
    """Device, process group (under torchrun) and seeds of this process."""
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = pick_device(args.device, local_rank)
    context = Context(device, local_rank=local_rank)
    if under_torchrun():
        backend = args.dist_backend or ('nccl' if device.type == 'cuda' else 'gloo')
        if backend == 'nccl' and device.type != 'cuda':
            raise UserError(f'--dist-backend nccl needs CUDA devices, not {device}')
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.dist_timeout),
                                device_id=device if backend == 'nccl' else None)
        context.comm = DistComm()
    if args.batch_size % context.world_size:
        raise UserError(f'--batch-size {args.batch_size} (the global batch) must divide evenly '
                        f'over the {context.world_size} ranks')
    seed_everything(args.randomseed, args.deterministic)
    return context


def seed_everything(seed, deterministic=False):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    else:
        torch.backends.cudnn.benchmark = True


def run_cli(main):
    """Run ``main()``: a :class:`UserError` becomes one ``error: ...`` line and exit status 2.

    Under torchrun the same bad input usually fails on every rank at once: rank 0 reports it and
    the other ranks wait a moment first (torchrun ends them as soon as one rank exits), so the
    log shows it once; an error only one rank sees is reported by that rank, tagged with it.
    """
    try:
        main()
    except UserError as e:
        rank = int(os.environ.get('RANK', 0)) if under_torchrun() else 0
        if rank:
            time.sleep(3)
        print(f'error: {f"[rank {rank}] " if rank else ""}{e}', file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Training and evaluation loops.
# ---------------------------------------------------------------------------------------------

def autocast(device, amp):
    if amp == 'off':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


class Scores(tuple):
    """(mean loss, top-1 accuracy %): unpacks as that pair; ``acc5`` is the top-5 accuracy % (None
    with 5 classes or fewer)."""

    def __new__(cls, loss, acc, acc5=None):
        self = super().__new__(cls, (loss, acc))
        self.acc5 = acc5
        return self


class EpochMeter:
    """Running loss sum, top-1 and top-5 correct counts and image count, kept on the device (no
    per-step host sync); :meth:`result` sums them over the ranks."""

    def __init__(self, device):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss * n, top-1, top-5, n
        self.top5 = False

    def update(self, loss, output, target):
        n = target.shape[0]
        output = output.detach()
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += (output.argmax(1) == target).sum()
        if output.shape[1] > 5:
            self.top5 = True
            self.sums[2] += (output.topk(5, 1).indices == target[:, None]).any(1).sum()
        self.sums[3] += n

    def result(self, comm=dldr.LOCAL):
        """:class:`Scores` over every rank's images — one all-reduce, one host sync."""
        loss, correct, correct5, count = comm.all_reduce_(self.sums.clone(), 'sum').tolist()
        if count == 0:
            return Scores(float('nan'), float('nan'))
        return Scores(loss / count, 100.0 * correct / count, 100.0 * correct5 / count if self.top5 else None)


def evaluate(model, loader, context, amp='off'):
    """Test :class:`Scores` in eval mode; each rank evaluates its shard of the test set."""
    model.eval()
    meter = EpochMeter(context.device)
    with torch.inference_mode(), autocast(context.device, amp):
        for x, y in loader:
            out = model(x)
            meter.update(F.cross_entropy(out.float(), y), out, y)
    return meter.result(context.comm)


def progress(iterable, total, desc, print_freq, show=True):
    """tqdm on a terminal; otherwise plain iteration with a line every ``print_freq`` steps."""
    if not show:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = time.time()
    for i, item in enumerate(iterable):
        yield item
        if print_freq and (i + 1) % print_freq == 0 and i + 1 < total:
            print(f'  {desc} [{i + 1}/{total}] {time.time() - start:.1f}s', flush=True)


def train_epoch(model, loader, optimizer, context, *, amp='off', scaler=None, before_step=None,
                after_step=None, log_step=None, desc='train', print_freq=0):
    """One epoch of mini-batch training; ``before_step()`` runs between backward and the step
    (P-SGD projects the gradient there), ``after_step(i)`` after step i (0-based) of the epoch,
    ``log_step(i, loss)`` too, with the step's loss tensor (still on the device: the tracker
    reads it only every --log-every steps, not a host sync per step).
    Returns the :class:`Scores` over all ranks; the loss is NaN/inf when any step produced a
    non-finite loss."""
    model.train()
    device = context.device
    meter = EpochMeter(device)
    for i, (x, y) in enumerate(progress(loader, len(loader), desc, print_freq, context.is_main)):
        with autocast(device, amp):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if before_step is not None:  # on the scaled gradients (linear): every rank's scaler
                before_step()            # then checks the same all-reduced gradient for inf
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
        meter.update(loss, out, y)
        if after_step is not None:
            after_step(i)
        if log_step is not None:
            log_step(i, loss)
    return meter.result(context.comm)


def grad_scaler(args, device):
    """A GradScaler for fp16 autocast on CUDA (bf16 and CPU need none)."""
    if args.amp == 'fp16' and device.type == 'cuda':
        return torch.amp.GradScaler('cuda')
    return None


def _float_buffers(model):
    return [b for b in model.buffers() if b.is_floating_point()]


@torch.no_grad()
def average_buffers_(model, comm):
    """Replace the floating buffers (BatchNorm running statistics) by their mean over the ranks:
    one all-reduce of their concatenation."""
    buffers = _float_buffers(model)
    if comm.world_size == 1 or not buffers:
        return
    flat = comm.all_reduce_(torch.cat([b.reshape(-1).float() for b in buffers]))
    torch._foreach_copy_(buffers, list(flat.split([b.numel() for b in buffers])))


@torch.no_grad()
def broadcast_buffers_(model, context):
    """Give every rank global rank 0's buffers (as DDP does at each training forward)."""
    if context.world_size > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


@torch.no_grad()
def update_bn(model, loader, batches, context, amp='off'):
    """Re-estimate the BatchNorm running statistics as the plain average over ``batches`` training
    batches (as torch.optim.swa_utils.update_bn), averaged over the ranks.  Trainable parameters
    are untouched; the model is left in train mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or batches == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with autocast(context.device, amp):
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    average_buffers_(model, context.comm)


class RunRecord:
    """The run's metrics JSON (args, per-epoch rows, summary), rewritten atomically each epoch (by
    rank 0 of the whole job)."""

    def __init__(self, path, args, context, loaders=(), **extra):
        self.path = path
        self.context = context
        self.loaders = loaders
        self.data = {'args': vars(args), **extra, 'world_size': context.world_size,
                     'batch_per_rank': args.batch_size // context.world_size,
                     'epochs': [], 'final_test_acc': None, 'best_test_acc': None, 'skipped_images': 0}

    def add_epoch(self, row):
        """Append an epoch's row (on every rank: counting the skipped images is a collective)."""
        self.data['skipped_images'] = utils.count_skipped(self.loaders, self.context.comm)
        self.data['epochs'].append(row)
        accs = [r['test_acc'] for r in self.data['epochs']]
        self.data['final_test_acc'] = accs[-1]
        self.data['best_test_acc'] = max(accs)
        self.save()

    def save(self):
        if self.context.is_main:
            utils.save_json(self.data, self.path)


def epoch_line(epoch, epochs, lr, train_loss, train_acc, test_loss, test_acc, train_seconds,
               eval_seconds, extra='', train_acc5=None, test_acc5=None):
    lr_text = f'lr {lr:.4g}  ' if lr is not None else ''
    train5 = f' top5 {train_acc5:6.2f}%' if train_acc5 is not None else ''
    test5 = f' top5 {test_acc5:6.2f}%' if test_acc5 is not None else ''
    return (f'epoch {epoch:>4d}/{epochs}  {lr_text}train loss {train_loss:.4f} acc {train_acc:6.2f}%'
            f'{train5}  test loss {test_loss:.4f} acc {test_acc:6.2f}%{test5}  train '
            f'{train_seconds:.1f}s eval {eval_seconds:.1f}s{extra}')


def score_row(train, test):
    """The loss / accuracy entries of a JSON row from the train and test :class:`Scores`."""
    row = {'train_loss': train[0], 'train_acc': train[1], 'test_loss': test[0], 'test_acc': test[1]}
    if test.acc5 is not None:
        row.update(train_acc5=train.acc5, test_acc5=test.acc5)
    return row


# ---------------------------------------------------------------------------------------------
# Subspace runs (train_psgd.py, train_pbfgs.py).
# ---------------------------------------------------------------------------------------------

def default_train_start(args):
    return 'mean' if args.subspace == 'twa' else args.params_start


def subspace_tag(method, args):
    """File-name stem of a subspace run's outputs: ``pbfgs_d40_0-81`` for DLDR (the reference's
    names), ``psgd_twa_d40_0-81``, ``psgd_random_s3_d40_0-81`` (kind, and seed where it matters),
    plus ``_step<K>`` with ``--params-step K`` and ``_mean`` or ``_from<K>`` for a --train-start
    other than the kind's default."""
    kind = args.subspace
    seed = f'_s{args.subspace_seed}' if kind in SEEDED_KINDS else ''
    tag = (method if kind == 'dldr' else f'{method}_{kind}{seed}') + \
        f'_d{args.n_components}_{args.params_start}-{args.params_end}'
    if args.params_step > 1:
        tag += f'_step{args.params_step}'
    if args.train_start != default_train_start(args):
        tag += '_mean' if args.train_start == 'mean' else f'_from{args.train_start}'
    return tag


def snapshot_numbers(args):
    """The snapshots of a subspace run's basis."""
    return range(args.params_start, args.params_end, args.params_step)


def build_subspace(args, model, context):
    """The ``--subspace`` of the trajectory ``params_start .. params_end-1``, streamed from disk
    onto the device (each rank streaming its block of coordinates); then ``model`` is set to the
    ``--train-start``: snapshot K (weights and BN buffers), or the snapshots' mean (weights; the
    caller re-estimates the BN statistics).

    Returns the :class:`dldr.Subspace` and the ``basis`` entry of the run's JSON.
    """
    folder = args.pretrain_dir or args.save_dir
    kind, d, t = args.subspace, args.n_components, len(snapshot_numbers(args))
    trajectory = utils.open_trajectory(folder, args.params_start, args.params_end, model,
                                       args.params_step)
    n, memory, comm = len(trajectory[0]), args.basis_memory * 2**20, context.comm
    info = {'kind': kind, 'seed': args.subspace_seed if kind in SEEDED_KINDS else None,
            'snapshots': [args.params_start, args.params_end], 'step': args.params_step,
            'used': list(snapshot_numbers(args)), 'folder': folder, 'start': args.train_start,
            'n_components': d}
    start = time.time()
    try:
        if kind == 'dldr':
            basis = dldr.dldr_basis(trajectory, d, device=context.device, max_bytes=memory, comm=comm)
            subspace = dldr.DenseSubspace(basis.P)
            ratio = basis.explained_variance_ratio.tolist()
            info.update(explained_variance_ratio=ratio,
                        cumulative_explained_variance=np.cumsum(ratio).tolist(),
                        singular_values=basis.singular_values.tolist())
        elif kind == 'twa':
            subspace = dldr.DenseSubspace(dldr.twa_basis(trajectory, d, device=context.device,
                                                         max_bytes=memory, comm=comm))
        elif kind == 'random':
            subspace = dldr.DenseSubspace(dldr.random_basis(d, n, args.subspace_seed, device=context.device,
                                                            max_bytes=memory, comm=comm))
        elif kind == 'fastfood':
            subspace = dldr.FastfoodSubspace(d, n, args.subspace_seed, context.device)
        else:
            subspace = dldr.RedrawnSubspace(lambda seed: dldr.FastfoodSubspace(d, n, seed, context.device),
                                            d, n, args.subspace_seed)
    except ValueError as e:
        raise UserError(f'{"" if kind == "dldr" else kind + " "}basis of {folder}/{args.params_start}..'
                        f'{args.params_end - 1}.pt: {e}') from None
    info['seconds'] = time.time() - start
    if args.train_start == 'mean':
        utils.load_snapshot(utils.snapshot_path(folder, args.params_start), model)
        dldr.set_flat_params_(dldr.trainable_params(model),
                              dldr.snapshot_mean(trajectory, device=context.device, max_bytes=memory))
    else:
        utils.load_snapshot(utils.snapshot_path(folder, args.train_start), model)
    where = 'the mean' if args.train_start == 'mean' else f'snapshot {args.train_start}'
    seed = f', seed {info["seed"]}' if info['seed'] is not None else ''
    ranks = f' x {context.world_size} ranks' if context.world_size > 1 else ''
    every = f', step {args.params_step}' if args.params_step > 1 else ''
    context.print(f'basis: {kind}, {t} snapshots {args.params_start}..{args.params_end - 1}{every} of '
                  f'{folder}, {n} parameters -> d = {d}{seed}, {info["seconds"]:.1f}s on '
                  f'{context.device}{ranks}; training starts at {where}')
    if kind == 'dldr':
        context.print('explained variance ratio: ' + ' '.join(f'{r:.4f}' for r in ratio))
        context.print('cumulative:               ' + ' '.join(f'{c:.4f}' for c in
                                                              info['cumulative_explained_variance']))
    return subspace, info


def prepare_subspace_run(args, method):
    """Shared start of the subspace scripts: checks, device and process group, data, model at
    ``params_start``, basis, loaders and the run record.  Returns a namespace of them, or None
    after ``--evaluate`` (which only evaluates the run's saved final model)."""
    if args.resume:
        raise UserError('--resume applies to train_sgd.py; rerun the subspace run instead')
    context = setup(args)
    if args.pretrained:
        context.print(f'note: --pretrained is ignored: a subspace run starts from snapshot '
                      f'{args.params_start} (give --pretrained to train_sgd.py)')
    utils.prepare_save_dir(args.save_dir)
    tag = subspace_tag(method, args)
    model_path = os.path.join(args.save_dir, f'{tag}.pt')
    metrics_path = os.path.join(args.save_dir, f'metrics_{tag}.json')
    if not args.evaluate:
        utils.refuse_overwrite([model_path, metrics_path], args)
    data = utils.load_data(args)
    model = utils.build_model(args, data, context.device)
    generator = torch.Generator().manual_seed(args.randomseed)
    train_loader, test_loader = utils.make_loaders(data, args, context, generator)
    # BatchNorm re-estimation reads the training data in its own order (the training order is
    # untouched), through the training loader's data: no second copy, no second worker pool
    bn_loader = train_loader.with_generator(torch.Generator()) if args.bn_update else None
    if args.evaluate:  # the saved final model (not rewritten), BN re-estimated as after the last epoch
        utils.load_snapshot(model_path, model)
        run = SimpleNamespace(model=model, context=context, test_loader=test_loader, bn_loader=bn_loader)
        scores, _ = evaluate_subspace_model(run, args, args.epochs - 1)
        context.print(f'{model_path}: test loss {scores[0]:.4f} acc {scores[1]:.2f}%'
                      + (f' top5 {scores.acc5:.2f}%' if scores.acc5 is not None else '')
                      + (f' (BatchNorm statistics re-estimated on {args.bn_update} training batches)'
                         if args.bn_update else ''))
        return None
    subspace, info = build_subspace(args, model, context)
    if context.rank:  # dropout masks of its own (all ranks were seeded alike for the same init)
        torch.manual_seed(args.randomseed + 1000 * context.rank)
    if args.train_start == 'mean':  # the averaged weights get their own BN statistics, as in TWA
        loader = train_loader.with_generator(torch.Generator().manual_seed(args.randomseed))
        update_bn(model, loader, len(loader), context, args.amp)
    record = RunRecord(metrics_path, args, context, (train_loader, test_loader, bn_loader),
                       method=method, basis=info, n_parameters=sum(p.numel() for p in model.parameters()),
                       n_train=len(data.train_y),
                       n_corrupted=len(data.corrupted) if data.corrupted is not None else 0)
    return SimpleNamespace(context=context, device=context.device, data=data, model=model,
                           subspace=subspace, record=record, train_loader=train_loader,
                           test_loader=test_loader, bn_loader=bn_loader,
                           model_path=model_path, metrics_path=metrics_path)


def evaluate_subspace_model(run, args, epoch):
    """BatchNorm statistics averaged over the ranks (re-estimated first with ``--bn-update``),
    then the sharded test evaluation.  Returns (:class:`Scores`, seconds)."""
    t0 = time.time()
    if args.bn_update:
        run.bn_loader.generator.manual_seed(args.randomseed + 7919 * (epoch + 1))
        update_bn(run.model, run.bn_loader, args.bn_update, run.context, args.amp)
    else:
        average_buffers_(run.model, run.context.comm)
    scores = evaluate(run.model, run.test_loader, run.context, args.amp)
    return scores, time.time() - t0


def finish_subspace_run(run, start):
    """Save the final model (rank 0) and metrics of a subspace run and print where they are."""
    if run.context.is_main:
        utils.save_tensors(run.model.state_dict(), run.model_path)
    run.record.data['seconds'] = time.time() - start
    run.record.save()
    run.context.barrier()
    run.context.print(f'final test acc {run.record.data["final_test_acc"]}  best '
                      f'{run.record.data["best_test_acc"]}  ({time.time() - start:.0f}s)')
    run.context.print(f'model: {run.model_path}; metrics: {run.metrics_path}')


# ---------------------------------------------------------------------------------------------
# Local process groups for tests and bench.py (the scripts are launched by torchrun).
# ---------------------------------------------------------------------------------------------

def spawn_local(fn, world_size, *args, timeout=120):
    """Run ``fn(context, *args)`` in ``world_size`` fresh CPU processes (one thread each) joined
    by gloo through a file:// rendezvous; returns their results in rank order.

    ``fn`` must be importable (a module-level function) and its results picklable.  A rank that
    raises makes this raise RuntimeError with its traceback; the other ranks are terminated
    (they may be waiting in a collective), and nothing waits longer than ``timeout`` seconds.
    """
    import pickle
    import queue as queue_module
    import tempfile
    import torch.multiprocessing as mp
    spawn = mp.get_context('spawn')
    with tempfile.TemporaryDirectory(prefix='dldr_spawn_') as folder:
        results = spawn.Queue()
        procs = [spawn.Process(target=_spawned_rank, daemon=True,
                               args=(fn, rank, world_size, f'file://{folder}/rendezvous', timeout,
                                     results, args)) for rank in range(world_size)]
        for p in procs:
            p.start()
        out = {}
        try:
            deadline = time.monotonic() + timeout
            while len(out) < world_size:
                try:
                    rank, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue_module.Empty:
                    raise RuntimeError(f'spawn_local: no result from ranks '
                                       f'{sorted(set(range(world_size)) - set(out))} within {timeout}s') from None
                if not ok:
                    raise RuntimeError(f'rank {rank} failed:\n{value}')
                out[rank] = pickle.loads(value)
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
    return [out[r] for r in range(world_size)]


def _spawned_rank(fn, rank, world_size, init_method, timeout, results, args):
    import pickle
    import traceback
    torch.set_num_threads(1)
    try:
        limit = datetime.timedelta(seconds=timeout)
        dist.init_process_group('gloo', timeout=limit, init_method=init_method, rank=rank,
                                world_size=world_size)
        context = Context(torch.device('cpu'), comm=DistComm())
        # plain pickle: tensors travel by value, not as shared memory of an exiting process
        results.put((rank, True, pickle.dumps(fn(context, *args))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
