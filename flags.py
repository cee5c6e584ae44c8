"""Command lines of the three training scripts.

Names, meanings and defaults follow the reference scripts; both the hyphenated and the
underscored spellings of a flag are accepted (the reference used both).  Each script builds its
parser from :func:`common_parser` plus its own group — :func:`add_sgd_args` (train_sgd.py) or
:func:`add_subspace_args` (train_psgd.py, train_pbfgs.py) — so its ``--help`` lists only the
flags it uses; a flag that a script accepts only so that the reference's command lines still run
is added by :func:`add_ignored` and says so in ``--help``.  Then :func:`finish_sgd_args` or
:func:`finish_subspace_args` make the checks no single ``type=`` can and fill the defaults that
depend on other flags, and :func:`freeze` turns the result into the run's settings: a frozen,
typed dataclass that nothing changes afterwards.
"""
import argparse
import dataclasses
import math
import os
import sys
import time
import typing

import dldr
import distributed
import models
import seeds
import tracking
import utils
from errors import UserError

IGNORED = '(ignored: kept for the reference\'s command lines)'
BN_UPDATE_IMAGES = 2048
"""--bn-update's default, in images: as accurate as 10,240 on CIFAR-10 (docs/RESULTS.md)."""
ADAM_LR = 0.001
"""The learning rate of ``--optimizer adam`` (the reference's, whatever --lr says)."""


def positive_int(text) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def nonnegative_int(text) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def _finite(text) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {text}')
    return value


def positive_float(text) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def nonnegative_float(text) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def momentum(text) -> float:
    """A momentum coefficient: [0, 1) (1 would never forget a gradient)."""
    value = _finite(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f'must lie in [0, 1), got {text}')
    return value


def seed(text) -> int:
    """A seed every generator of the run accepts (numpy's: [0, 2**32))."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f'must lie in [0, 2**32), got {text}')
    return value


def unit_interval(text) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must lie in [0, 1], got {text}')
    return value


def fraction(text) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f'must lie in (0, 1], got {text}')
    return value


def _field_type(action, value):
    """The type of a flag's setting: bool for switches, a tuple for lists, the return type of
    its ``type=`` parser, else the type of its value; Optional where it may be None."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    if action.nargs in ('*', '+'):
        return tuple | None
    base = typing.get_type_hints(action.type).get('return') if callable(action.type) else None
    base = base or (type(value) if value is not None else str)
    return base | None if action.default is None or value is None else base


def freeze(parser, args):
    """The run's settings: an instance of a frozen dataclass with one typed field per flag of
    ``parser`` (named by its ``dest``), built once from the parsed and finished ``args``; lists
    become tuples.  Nothing changes it afterwards, so the metrics JSON (:func:`as_dict`) records
    exactly what ran."""
    values = vars(args)
    dests = list(dict.fromkeys(a.dest for a in parser._actions if a.dest != 'help'))
    actions = {a.dest: a for a in parser._actions}
    cls = dataclasses.make_dataclass(
        'Config', [(d, _field_type(actions[d], values[d])) for d in dests], frozen=True)
    cls.__doc__ = f'The settings of {parser.prog}, frozen after parsing (flags.freeze).'
    return cls(**{d: tuple(values[d]) if isinstance(values[d], list) else values[d] for d in dests})


def as_dict(config):
    """The settings as a plain dict (tuples as lists), as the metrics JSON and checkpoints keep
    them; an ``argparse.Namespace`` works too."""
    items = (dataclasses.asdict(config) if dataclasses.is_dataclass(config) else vars(config)).items()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items if not callable(v)}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line and exit status 2 (no usage dump)."""

    def error(self, message):
        # under torchrun every rank parses the same command line: rank 0 alone says what is
        # wrong; the others exit silently, a moment later (torchrun ends them when rank 0 exits)
        if distributed.global_rank():
            time.sleep(3)
            self.exit(2)
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, but not for on/off flags (``--no-augment``'s default, True, is the
    setting's, not the flag's, and would read as if the flag were on) nor where the default is
    None (unset: the help says what then happens)."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def common_parser(description, *, epochs):
    """The flags every training script uses."""
    p = Parser(description=description, formatter_class=HelpFormatter)
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
    a('-j', '--workers', default=4, type=nonnegative_int, metavar='N',
      help='ImageNet: DataLoader worker processes per rank decoding and augmenting the images '
           '(0: in the training process); unused for the in-memory datasets, which are augmented '
           'on the training device')
    a('--epochs', default=epochs, type=nonnegative_int, metavar='N', help='number of epochs to run')
    a('-b', '--batch-size', '--batch_size', default=128, type=positive_int, metavar='N',
      help='mini-batch size: the global batch, split evenly over the ranks under torchrun')
    a('--eval-batch-size', '--eval_batch_size', default=None, type=positive_int, metavar='N',
      help='evaluation batch (default: 256 on the CPU, where larger batches fall out of cache; '
           '1024 on CUDA)')
    a('-p', '--print-freq', '--print_freq', default=50, type=nonnegative_int, metavar='N',
      help='when stdout is not a terminal, print a progress line every N iterations (0: never); '
           'on a terminal a progress bar is shown instead')
    a('-e', '--evaluate', action='store_true', help='only evaluate the model on the test set')
    a('--half', action='store_true', help='alias of --amp fp16 (the reference cast the model to fp16)')
    a('--amp', default='off', choices=('off', 'bf16', 'fp16'),
      help='mixed precision through autocast (fp16 adds a GradScaler on CUDA)')
    a('--channels-last', '--channels_last', action='store_true',
      help='use the channels_last memory format (faster convolutions on tensor-core GPUs)')
    a('--compile', nargs='?', const='default', default=None,
      choices=('default', 'reduce-overhead', 'max-autotune'), metavar='MODE',
      help='torch.compile the model (MODE: default, reduce-overhead = CUDA graphs, max-autotune); '
           'the first steps of each new graph (training, evaluation, P-BFGS\'s no-grad line '
           'search) compile first. A model that does not compile runs eager after one warning '
           'line. Files stay interchangeable with eager runs (docs/BENCHMARKS.md: when it pays)')
    a('--save-dir', '--save_dir', default='save_temp', metavar='DIR',
      help='directory of the trajectory, checkpoints, final models and metrics JSON')
    a('--overwrite', action='store_true',
      help='allow replacing results of an earlier run in --save-dir (refused otherwise)')
    a('--randomseed', default=1, type=seed, metavar='S',
      help='seed of initialisation, data order, augmentation, label noise and subsets')
    a('--deterministic', action='store_true',
      help='use deterministic algorithms (bit-reproducible runs, slower on GPU)')
    a('--corrupt', default=0.0, type=unit_interval, metavar='C',
      help='label noise: the labels of int(C*N) seeded training images redrawn (see --noise-model)')
    a('--noise-model', '--noise_model', default='uniform', choices=utils.NOISE_MODELS,
      help="how --corrupt redraws a label: 'uniform' (the reference's) from all classes, so about "
           "1/K keep their class; 'wrong': a different class, always")
    a('--no-augment', '--no_augment', dest='augment', action='store_false',
      help='train on the images as they are: no random crop or flip (label-noise studies: '
           'memorisation of wrong labels shows within a short schedule)')
    a('--smalldatasets', default=None, type=fraction, metavar='P',
      help='train on a seeded, class-balanced fraction P of the training set')
    a('--device', default=None,
      help='torch device (default: cuda if available, else cpu; under torchrun cuda:LOCAL_RANK)')
    a('--dist-backend', '--dist_backend', default=None, choices=('nccl', 'gloo'),
      help='torch.distributed backend under torchrun (default: nccl on CUDA, gloo on the CPU)')
    a('--dist-timeout', '--dist_timeout', default=600, type=positive_int, metavar='S',
      help='seconds a rank waits in a collective for the others before the job fails')
    tracking.add_tracking_args(p)
    return p


def add_lr(p, default, help):
    p.add_argument('--lr', '--learning-rate', '--learning_rate', default=default, type=positive_float,
                   metavar='LR', help=help)


def add_momentum(p):
    p.add_argument('--momentum', default=0.9, type=momentum, metavar='M', help='SGD momentum')


def add_lr_milestones(p, default, default_help):
    """``--lr-milestones`` (train_sgd.py, train_psgd.py): the epochs of the x0.1 decays."""
    p.add_argument('--lr-milestones', '--lr_milestones', default=default, nargs='*',
                   type=positive_int, metavar='E',
                   help=f'epochs after which the learning rate is multiplied by 0.1, each epoch at '
                        f'most once (default: {default_help}; give none for a constant rate)')


def add_ignored_lr(p):
    """train_pbfgs.py's ``--lr``: accepted only so that the reference's command lines run
    unchanged (its line search sets the step); the default is the value the JSON always held."""
    p.add_argument('--lr', '--learning-rate', '--learning_rate', default=1.0, type=float,
                   metavar='LR', help=f'the line search sets the step {IGNORED}')


# --optimizer galore's settings unless given: GaLore's README example (rank 128, gap 200, scale 0.25).
GALORE_DEFAULTS = {'galore_rank': 128, 'galore_gap': 200, 'galore_scale': 0.25}


def add_sgd_args(p):
    """Flags of the sampling run (train_sgd.py) only."""
    g = p.add_argument_group('sampling run')
    a = g.add_argument
    a('--optimizer', default='sgd', choices=('sgd', 'adam', 'adamw', 'galore'),
      help='optimizer of the sampling run (adam uses lr 0.001 as the reference, whatever --lr '
           'says, and records that lr; adamw --lr and '
           '--weight-decay as given, e.g. --lr 1e-3 --wd 0.05 for a ViT, no decay on biases, '
           'norms, position embedding and class token; galore: adamw with the decayed weight '
           'matrices\' gradients projected on their top --galore-rank singular vectors, '
           'dldr.GaLoreAdamW)')
    a('--galore-rank', type=positive_int, default=None, metavar='R',
      help=f'--optimizer galore: rank of the projection (default {GALORE_DEFAULTS["galore_rank"]}); '
           f'only matrices whose smaller side is above R are reduced (the run says how many)')
    a('--galore-gap', type=positive_int, default=None, metavar='T',
      help=f'--optimizer galore: steps between re-drawn projections (default '
           f'{GALORE_DEFAULTS["galore_gap"]})')
    a('--galore-scale', type=positive_float, default=None, metavar='S',
      help=f'--optimizer galore: factor of the projected update (default '
           f'{GALORE_DEFAULTS["galore_scale"]})')
    a('--start-epoch', '--start_epoch', default=0, type=nonnegative_int, metavar='N',
      help='with --resume: the epoch to continue from (taken from the checkpoint, which overrides '
           'it); without --resume only 0 is accepted')
    a('--weight-decay', '--weight_decay', '--wd', default=1e-4, type=nonnegative_float, metavar='W',
      help='weight decay')
    a('--resume', default='', metavar='PATH',
      help="resume from a full checkpoint of train_sgd.py ('auto': "
           "<save-dir>/checkpoint.pt, or a new run when there is none yet): weights, BN buffers, "
           "optimizer, scheduler, RNG states, epoch and snapshot numbering. With -e also a "
           "weights-only file (a snapshot k.pt, or the reference's checkpoint_*.th / model.th: a "
           "dict with 'state_dict', 'module.' keys): only the weights and BN buffers are restored "
           "from it, not optimizer, scheduler or epoch")
    a('--pretrained', nargs='?', const=True, default=None, metavar='PATH',
      help='start from these weights. Alone: torchvision\'s default ImageNet weights '
           'of --arch, read from the local torch hub cache (<torch.hub.get_dir()>/checkpoints/; '
           'never downloaded); for timm/NAME timm\'s weights from the local Hugging Face cache '
           '(classifier re-initialised for the class count; never downloaded). PATH: a state_dict '
           'or a checkpoint holding one under "state_dict" (the reference\'s) or "model" (ours), '
           '"module." prefixes dropped')
    a('--save-every', '--save_every', default=10, type=positive_int, metavar='N',
      help='keep a numbered full checkpoint every N epochs (a rolling checkpoint.pt is written every epoch)')
    a('--snapshot-every', '--snapshot_every', default=None, type=positive_int,
      metavar='N', help='also write a snapshot every N iterations (the reference\'s '
      'ImageNet run: 1000); snapshots are then numbered consecutively, not by epoch')


def _train_start(text):
    return text if text == 'mean' else nonnegative_int(text)


def add_subspace_args(p, *, params_end=51):
    """Flags of the subspace scripts (train_psgd.py, train_pbfgs.py)."""
    import subspace_run as subspaces  # (it imports run, which imports this module)
    g = p.add_argument_group('subspace')
    a = g.add_argument
    a('--n_components', '--n-components', default=None, type=positive_int, metavar='D',
      help='dimension d of the subspace (default: ' + subspaces.default_dims_text() + ')')
    a('--params_start', '--params-start', default=0, type=nonnegative_int, metavar='N',
      help='first snapshot of the trajectory used for the basis; training starts from it '
           '(see --train-start)')
    a('--params_end', '--params-end', default=params_end, type=nonnegative_int, metavar='N',
      help='end of the snapshot range (exclusive): snapshots params_start .. params_end-1')
    a('--params-step', '--params_step', default=1, type=positive_int, metavar='K',
      help='use every K-th snapshot of params_start..params_end-1 (the reference\'s ImageNet run: 2)')
    a('--pretrain-dir', '--pretrain_dir', default=None, metavar='DIR',
      help='directory holding the sampled trajectory (default: --save-dir)')
    a('--subspace', default='dldr', choices=tuple(subspaces.KINDS),
      help='; '.join(f'{k.name}: {k.help}' for k in subspaces.KINDS.values()))
    a('--subspace-seed', '--subspace_seed', default=None, type=seed, metavar='S',
      help='seed of the ' + ', '.join(k for k, kind in subspaces.KINDS.items() if kind.seeded)
           + ' subspaces (default: --randomseed)')
    a('--train-start', '--train_start', default=None, type=_train_start, metavar='K|mean',
      help='where training starts: snapshot K, or mean: the mean of snapshots params_start .. '
           'params_end-1 with BatchNorm statistics re-estimated on the training set (default: '
           'mean for ' + ', '.join(k for k, kind in subspaces.KINDS.items() if kind.starts_at_mean)
           + ', params_start otherwise)')
    a('--alpha', default=0.0, type=nonnegative_float, metavar='A',
      help='weight of the residual momentum: the gradient part outside the subspace (0: off)')
    a('--gamma', default=0.9, type=momentum, metavar='G', help='momentum of the residual gradient')
    a('--basis-memory', '--basis_memory', default=256, type=positive_int, metavar='MiB',
      help='device-memory bound of the streamed basis extraction')
    a('--shard-basis', '--shard_basis', action='store_true',
      help='each rank keeps only its block of P\'s columns (P per rank / world size); a step then '
           'reduce-scatters the gradient and all-gathers the update (about DDP\'s traffic instead '
           'of d numbers; docs/USAGE.md: when to use it). Not with fastfood, redrawn')
    a('--basis-dtype', '--basis_dtype', default='float32', choices=tuple(dldr.BASIS_DTYPES),
      help='storage type of P (products accumulate in float32; fp16 and int8 with a scale per '
           'row): bf16 halves P\'s memory (docs/USAGE.md: its measured accuracy). Not with fastfood, redrawn')
    a('--basis-device', '--basis_device', default=None, metavar='DEVICE',
      help='where P is computed and stored, e.g. cpu while training on a GPU (default: --device); '
           'each step moves the gradient there and the update back. Not with fastfood, redrawn')
    a('--bn-update', '--bn_update', default=None, type=nonnegative_int, metavar='N',
      help=f'also measure the test set with the BatchNorm statistics re-estimated on N training '
           f'batches (test_acc_bn), besides the running statistics that training left (test_acc, '
           f'the reference\'s metric, always measured); the running statistics are put back '
           f'afterwards, so training and the saved model are the reference\'s. Costs N forward '
           f'passes and a second test pass per evaluation (default: the batches that make '
           f'{BN_UPDATE_IMAGES} images, e.g. 16 of 128 or 2 of 1024; 0: off; at most the '
           f'batches of one epoch: a larger N uses them all, and the run says so and records the '
           f'number used)')


def _finish_common(args):
    if args.half:
        args.amp = 'fp16'
    if args.datasets not in utils.DATASET_NAMES:
        raise UserError(f"--datasets: unknown dataset {args.datasets!r}; valid: "
                        f"{', '.join(utils.DATASET_NAMES)}")
    family = utils.dataset_family(args.datasets)
    if models.is_timm(args.arch):
        try:
            models.check_timm_arch(args.arch)
        except ValueError as e:
            raise UserError(f'--arch: {e}') from None
    elif args.arch not in (models.ARCHS if family == 'cifar' else models.available_archs(family)):
        raise UserError(f"--arch: unknown arch {args.arch!r} for {args.datasets}; valid: "
                        f"{', '.join(models.available_archs(family))}")
    _check_milestones(args)
    # the device now, not at the first copy onto it (meta, an absent accelerator: a traceback
    # after the data was read, or a 0.pt of nothing); setup() picks it again
    distributed.pick_device(args.device, int(os.environ.get('LOCAL_RANK', 0)))
    _check_folders(args)
    return args


def _check_milestones(args):
    """--lr-milestones: each epoch once (MultiStepLR decays twice at a repeated one)."""
    given = getattr(args, 'lr_milestones', None) or []
    repeated = sorted({m for m in given if given.count(m) > 1})
    if repeated:
        raise UserError(f'--lr-milestones {" ".join(map(str, given))}: epoch {repeated[0]} is given '
                        f'twice, which would multiply the rate by 0.01 at once; give each epoch once')


def _check_folders(args):
    """The folders the run writes (--save-dir, and --log-dir with --logger) can be written and
    --data-dir is not a file: before any work, on every rank."""
    problem = utils.unwritable_dir(args.save_dir)
    if problem:
        raise UserError(f'--save-dir {args.save_dir}: {problem}')
    where = utils.existing_ancestor(args.data_dir)  # (absent: downloaded to, or an error later)
    if where is not None and not os.path.isdir(where):
        raise UserError(f'--data-dir {args.data_dir}: {where} is a file, not a folder')
    tracking.check_log_dir(args)


def _check_input_file(path, flag, what):
    """A file the run reads (--resume, --pretrained PATH) exists and is a file."""
    if os.path.isdir(path):
        raise UserError(f'{flag} {path} is a folder, not a {what} file')
    if not os.path.isfile(path):
        raise UserError(f'{flag}: missing {what}: {path}')


def _note(text):
    """A line about how a flag is used, printed once (global rank 0) while parsing."""
    if not distributed.global_rank():
        print(text, file=sys.stdout, flush=True)


def finish_sgd_args(args, default_lr=None):
    """train_sgd.py's checks no single ``type=`` can make, and the ``--half`` alias;
    ``--optimizer adam`` records the lr it trains with (``default_lr``: --lr's default, to tell a
    --lr the user gave)."""
    if args.start_epoch and not args.resume:
        # a fresh run numbers its snapshots from the initialisation (0.pt) and its schedule from
        # epoch 0: a run that "starts at N" has neither; the checkpoint carries both
        raise UserError(f'--start-epoch {args.start_epoch} needs --resume: a run continues from a '
                        f'checkpoint of train_sgd.py, whose epoch it then takes')
    _finish_common(args)
    galore_given = [f'--{k.replace("_", "-")}' for k in GALORE_DEFAULTS if getattr(args, k) is not None]
    if args.optimizer == 'galore':
        for key, value in GALORE_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    elif galore_given:
        raise UserError(f'{" ".join(galore_given)} only apply to --optimizer galore, not '
                        f'--optimizer {args.optimizer}')
    if args.resume and args.resume != 'auto':
        _check_input_file(args.resume, '--resume', 'checkpoint')
    if isinstance(args.pretrained, str):
        _check_input_file(args.pretrained, '--pretrained', 'weights')
    elif args.pretrained and not models.is_timm(args.arch) and \
            utils.dataset_family(args.datasets) != 'imagenet':  # (as utils.pretrained_weights)
        raise UserError('--pretrained without a file means torchvision\'s ImageNet weights '
                        '(--datasets ImageNet only); give --pretrained PATH for a weights file')
    if args.optimizer == 'adam' and args.lr != ADAM_LR:
        if args.lr != default_lr:
            _note(f'note: --optimizer adam trains at lr {ADAM_LR} (the reference\'s), not --lr '
                  f'{args.lr}; the metrics record {ADAM_LR}')
        args.lr = ADAM_LR
    return args


def finish_subspace_args(args):
    """The subspace scripts' checks no single ``type=`` can make, the ``--half`` alias, and the
    defaults that depend on the subspace kind (d, seed, where training starts)."""
    import subspace_run as subspaces
    _finish_common(args)
    if args.pretrain_dir and os.path.exists(args.pretrain_dir) and not os.path.isdir(args.pretrain_dir):
        raise UserError(f'--pretrain-dir {args.pretrain_dir} is a file, not the folder of a trajectory')
    if args.params_end <= args.params_start:
        raise UserError(f'--params_end ({args.params_end}) must be greater than --params_start '
                        f'({args.params_start}): snapshots params_start..params_end-1 are used')
    kind = subspaces.KINDS[args.subspace]
    if args.n_components is None:
        args.n_components = kind.dim(args)
    if args.subspace_seed is None:
        args.subspace_seed = seeds.seed('subspace', args.randomseed)
    if args.train_start is None:
        args.train_start = kind.default_start(args)
    if args.bn_update is None:  # sized in images, not batches: 10 batches of 1024 cost 5x more
        args.bn_update = -(-BN_UPDATE_IMAGES // args.batch_size)
    kind.check_dim(args)
    _check_storage(args, kind)
    return args


def _check_storage(args, kind):
    """--shard-basis / --basis-dtype / --basis-device: an explicit P only, a device torch knows."""
    given = [flag for flag, on in (('--shard-basis', args.shard_basis),
                                   (f'--basis-dtype {args.basis_dtype}', args.basis_dtype != 'float32'),
                                   (f'--basis-device {args.basis_device}', args.basis_device))
             if on]
    if given and not kind.explicit:
        raise UserError(f'{" ".join(given)}: --subspace {kind.name} holds no d x n basis P to '
                        f'store differently; use dldr, twa or random')
    if args.basis_device:  # checked as --device is (a GPU torch does not see: one error line)
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        args.basis_device = str(distributed.pick_device(args.basis_device, local_rank, '--basis-device'))
