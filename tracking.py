"""Experiment tracking: TensorBoard and Weights & Biases, behind one small :class:`Tracker`.

A run with ``--logger tensorboard wandb`` (either or both) logs

* its arguments as the run's config (:meth:`Tracker.log_config`, done by :func:`make_tracker`);
* every number of each per-epoch row of the metrics JSON under ``epoch/<key>``, x = the epoch
  (:meth:`Tracker.log_epoch`, next to ``record.add_epoch(row)``);
* the training loss (and learning rate where there is one) every ``--log-every`` steps under
  ``train/loss``, ``train/lr``, x = the global iteration (:meth:`Tracker.step_hook`): the loss
  of global rank 0's share of the batch, read from the device only on those steps;
* for subspace runs the basis (kind, d, explained variance ratio per component) under
  ``basis/...`` (:meth:`Tracker.log_basis`);
* plot.py's figures as images when it is given ``--logger`` (:meth:`Tracker.log_images`).

Global rank 0 alone logs; the other ranks get a tracker without backends, whose calls do nothing.
TensorBoard writes ``<log-dir>/<run name>/events.out.tfevents.*`` (run name: ``sgd`` or the
subspace run's file stem, so the runs of one save-dir sit side by side).  W&B writes under
``<log-dir>/wandb/``; without credentials (no WANDB_API_KEY, no api.wandb.ai entry in ~/.netrc)
it runs offline — never a prompt, never the network — and says where the run is, to upload later
with ``wandb sync``.  tensorboard and wandb are imported only when asked for, so a run without
``--logger`` pays no import time.
"""
import argparse
import atexit
import importlib.util
import json
import netrc
import os

import utils
from errors import UserError

LOGGERS = ('tensorboard', 'wandb')
PACKAGES = {'tensorboard': 'tensorboard', 'wandb': 'wandb'}  # --logger value: module / pip name


def missing_package(name):
    """The one-line error of a ``--logger`` whose package is not installed."""
    return UserError(f'--logger {name} needs the {PACKAGES[name]} package, which is not installed: '
                     f'pip install {PACKAGES[name]}')


class _LoggerAction(argparse.Action):
    """``--logger``: checked when parsed, so a missing package fails before any work (and before
    sweep.py starts its runs) — without importing it (find_spec only)."""

    def __call__(self, parser, namespace, values, option_string=None):
        for name in values:
            try:
                found = importlib.util.find_spec(PACKAGES[name]) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise missing_package(name)
        setattr(namespace, self.dest, sorted(set(values), key=LOGGERS.index))


WANDB_PROJECT_FORBIDDEN = '/\\#?%:'  # (wandb.Settings refuses these, and names over 128 characters)


def _wandb_project(text):
    """``--wandb-project``: a name W&B accepts, checked when parsed (W&B would fail at
    ``wandb.init``, after the basis was built)."""
    bad = sorted(set(text) & set(WANDB_PROJECT_FORBIDDEN))
    if not text.strip() or bad or len(text) > 128:
        raise argparse.ArgumentTypeError(
            f'must be a W&B project name: not empty, at most 128 characters, none of '
            f'{" ".join(WANDB_PROJECT_FORBIDDEN)}; got {text!r}')
    return text


def log_dir(args):
    """The folder of the run's logs: ``--log-dir``, else ``<save-dir>/logs``."""
    return args.log_dir or os.path.join(args.save_dir, 'logs')


def check_log_dir(args):
    """With ``--logger``: a log folder that cannot be written (a file, a read-only folder) is a
    one-line error while the flags are parsed, on every rank, before any work (not a traceback
    of TensorBoard after the basis was built; not W&B's silent switch to a temporary folder)."""
    if not args.logger:
        return
    folder = log_dir(args)
    problem = utils.unwritable_dir(folder)
    if problem:
        flag = '--log-dir' if args.log_dir else '--save-dir (its logs/ folder: the default --log-dir)'
        raise UserError(f'{flag} {folder}: {problem}; --logger {" ".join(args.logger)} writes there')


def add_tracking_args(p, steps=True):
    """``--logger``, ``--log-dir``, ``--wandb-project`` and (``steps``) ``--log-every``."""
    from flags import positive_int  # (here: flags imports this module)
    a = p.add_argument
    a('--logger', nargs='+', default=[], choices=LOGGERS, action=_LoggerAction, metavar='NAME',
      help='experiment tracking: tensorboard and/or wandb (default: none). Logged: the arguments, '
           'every per-epoch number of the metrics JSON, the training loss (and lr) every '
           '--log-every steps, the basis of subspace runs; global rank 0 only. wandb runs offline '
           'without credentials (upload later with wandb sync)')
    a('--log-dir', '--log_dir', default=None, metavar='DIR',
      help='folder of the TensorBoard event files (DIR/<run>/) and W&B runs (DIR/wandb/) '
           '(default: <save-dir>/logs); with --logger it must be a writable folder (or one that '
           'can be made), checked before any work')
    a('--wandb-project', '--wandb_project', default='dldr', type=_wandb_project, metavar='NAME',
      help='W&B project')
    if steps:
        a('--log-every', '--log_every', default=50, type=positive_int, metavar='N',
          help='with --logger: log the training loss (and lr) every N steps (x: the global '
               'iteration); the loss is read from the device only on those steps')


def passed_on(args):
    """The tracking flags of ``args`` as command-line arguments (sweep.py -> train_psgd.py)."""
    if not args.logger:
        return []
    argv = ['--logger', *args.logger, '--wandb-project', args.wandb_project]
    if args.log_dir is not None:
        argv += ['--log-dir', args.log_dir]
    if getattr(args, 'log_every', None) is not None:
        argv += ['--log-every', str(args.log_every)]
    return argv


def _numbers(mapping):
    """The finite-or-not real numbers of ``mapping`` (no bools, None, strings or lists)."""
    return {k: float(v) for k, v in mapping.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """The run's backends (none: every call is a no-op).  Methods take plain Python numbers."""

    def __init__(self, backends=(), log_every=None):
        self.backends = list(backends)
        self.log_every = log_every
        if self.backends:
            atexit.register(self.close)  # a run that stops on an error still flushes its logs

    def __bool__(self):
        return bool(self.backends)

    def log_config(self, config):
        for b in self.backends:
            b.config(config)

    def log_scalars(self, step, scalars, prefix='train', x='iteration'):
        """``scalars`` ({name: number}) as ``prefix/name`` at ``step`` of the axis ``x``."""
        values = _numbers(scalars)
        if values:
            for b in self.backends:
                b.scalars(prefix, step, values, x)

    def log_epoch(self, row):
        """Every number of a metrics-JSON epoch row, as ``epoch/<key>`` at x = ``row['epoch']``."""
        self.log_scalars(row['epoch'], {k: v for k, v in row.items() if k != 'epoch'}, 'epoch', 'epoch')

    def log_basis(self, info):
        """The ``basis`` entry of a subspace run's JSON: kind and d, and the explained variance
        ratio (and its cumulative sum) per component k = 1..d where the kind has one."""
        for b in self.backends:
            b.text('basis/kind', info['kind'])
        self.log_scalars(0, {'d': info['n_components'], 'seconds': info.get('seconds')}, 'basis', 'component')
        for k, (ratio, cumulative) in enumerate(zip(info.get('explained_variance_ratio') or [],
                                                    info.get('cumulative_explained_variance') or [])):
            self.log_scalars(k + 1, {'explained_variance_ratio': ratio,
                                     'cumulative_explained_variance': cumulative}, 'basis', 'component')

    def log_images(self, images, step=0):
        """``images``: {name: PNG path}."""
        for b in self.backends:
            for name, path in images.items():
                b.image(name, path, step)

    def step_hook(self, optimizer=None, first_step=0):
        """A ``log_step(i, loss)`` for :func:`engine.train_epoch` (None without backends, so the
        loop does nothing extra): every ``--log-every`` global iterations (``first_step + i + 1``)
        the loss (a device tensor: reading it is a host sync, hence only then) and the lr."""
        if not self.backends:
            return None
        every = self.log_every

        def log_step(i, loss):
            step = first_step + i + 1
            if step % every == 0:
                scalars = {'loss': float(loss.detach())}
                if optimizer is not None and 'lr' in optimizer.param_groups[0]:
                    scalars['lr'] = optimizer.param_groups[0]['lr']
                self.log_scalars(step, scalars)
        return log_step

    def close(self):
        backends, self.backends = self.backends, []
        for b in backends:
            b.close()


class TensorBoardBackend:
    def __init__(self, folder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise missing_package('tensorboard') from None
        self.writer = SummaryWriter(log_dir=folder)

    def config(self, config):
        text = json.dumps(config, indent=1, default=str)
        self.writer.add_text('config', f'```\n{text}\n```', 0)  # markdown code block: kept as is

    def scalars(self, prefix, step, values, x):
        for k, v in values.items():
            self.writer.add_scalar(f'{prefix}/{k}', v, step)
        self.writer.flush()  # a few scalars at a time: readable while the run goes on

    def text(self, tag, text):
        self.writer.add_text(tag, text, 0)

    def image(self, name, path, step):
        import numpy as np
        from PIL import Image
        with Image.open(path) as im:
            self.writer.add_image(name, np.asarray(im.convert('RGB')), step, dataformats='HWC')
        self.writer.flush()

    def close(self):
        self.writer.close()


def _wandb_credentials():
    """Whether W&B could log in without asking: an API key in the environment or in ~/.netrc."""
    if os.environ.get('WANDB_API_KEY'):
        return True
    try:
        host = os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai').split('://')[-1].split('/')[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbBackend:
    def __init__(self, folder, project, name, config):
        # silent: no banner in the run's log; a run without credentials is offline: never a
        # login prompt, never the network
        os.environ.setdefault('WANDB_SILENT', 'true')
        try:
            import wandb
        except ImportError:
            raise missing_package('wandb') from None
        mode = os.environ.get('WANDB_MODE') or ('online' if _wandb_credentials() else 'offline')
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):  # wandb would log to a temporary folder
            raise UserError(f'--log-dir {folder} is not writable: wandb cannot write its run there')
        # console off: the run's stdout stays ours (wandb would wrap it); no system-stats
        # sampler competing with training for the CPUs; no git/code capture
        settings = dict(console='off', silent=True, x_disable_stats=True, disable_git=True,
                        save_code=False, init_timeout=60)
        init = dict(project=project, name=name, dir=folder, config=config, reinit='create_new')
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **init)
        except Exception as e:  # wandb raises its own types for a failed online start
            if mode != 'online':
                raise UserError(f'wandb could not start an {mode} run in {folder}: {e}') from None
            mode = 'offline'
            print(f'wandb: no connection ({type(e).__name__}); logging offline instead', flush=True)
            self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **init)
        self.wandb = wandb
        for x, glob in (('iteration', 'train/*'), ('epoch', 'epoch/*'), ('component', 'basis/*')):
            self.run.define_metric(x, hidden=True)
            self.run.define_metric(glob, step_metric=x)
        if mode == 'offline':
            where = os.path.dirname(self.run.dir)  # run.dir is <run folder>/files
            print(f'wandb: offline run in {where}; upload it with: wandb sync {where}', flush=True)

    def config(self, config):
        self.run.config.update(config, allow_val_change=True)

    def scalars(self, prefix, step, values, x):
        self.run.log({x: step, **{f'{prefix}/{k}': v for k, v in values.items()}})

    def text(self, tag, text):
        self.run.summary[tag] = text

    def image(self, name, path, step):
        self.run.log({name: self.wandb.Image(path)})

    def close(self):
        self.run.finish()


def make_tracker(args, context=None, name='run'):
    """The :class:`Tracker` of a run named ``name`` with ``args.logger`` backends on global rank
    0 (``context``: an ``engine.Context``; None: a single process), the arguments logged as its
    config; a tracker without backends elsewhere and without ``--logger``."""
    if not args.logger or (context is not None and not context.is_main):
        return Tracker()
    folder = log_dir(args)
    config = {k: v for k, v in vars(args).items() if not callable(v)}
    backends = []
    try:
        for logger in args.logger:
            if logger == 'tensorboard':
                backends.append(TensorBoardBackend(os.path.join(folder, name)))
            else:
                backends.append(WandbBackend(folder, args.wandb_project, name, config))
    except BaseException as e:
        for b in backends:
            b.close()
        if isinstance(e, OSError):  # (checked when parsed; here if the folder changed since)
            raise UserError(f'--log-dir {folder}: {e.strerror or e}') from None
        raise
    tracker = Tracker(backends, getattr(args, 'log_every', None))
    tracker.log_config(config)
    return tracker

