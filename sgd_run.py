"""The sampling run (train_sgd.py): its learning-rate schedule and optimizer, the snapshots of
its trajectory, and its checkpoint — one state dict that an exact ``--resume`` restores.

:class:`SGDRun` is the :class:`run.Run` of train_sgd.py.  A checkpoint holds model, optimizer,
scheduler, scaler, RNG states, epoch, best accuracy, the record's rows and snapshot map, the
label noise and the settings; a resume refuses to mix two trajectories (other trajectory flags,
other label noise, a save-dir holding another run).
"""
import glob
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

import dldr
import distributed
import engine
import flags
import models
import seeds
import utils
from run import Evaluation, Run, RunRecord
from errors import UserError

# Learning-rate milestones (x0.1) as the reference; datasets it did not schedule decay at 50% and
# 75% of --epochs.
MILESTONES = {'CIFAR10': (100, 150), 'CIFAR100': (150,), 'ImageNet': (30, 60)}

# Flags that define a trajectory: resuming with other values would mix two runs.
TRAJECTORY_ARGS = ('arch', 'datasets', 'optimizer', 'batch_size', 'lr', 'momentum', 'weight_decay',
                   'randomseed', 'corrupt', 'noise_model', 'smalldatasets', 'amp', 'channels_last',
                   'lr_milestones', 'snapshot_every', 'image_size', 'galore_rank', 'galore_gap',
                   'galore_scale')

CHECKPOINT_KEYS = {'epoch', 'args', 'best_acc', 'epochs', 'model', 'optimizer', 'scheduler', 'rng'}


# ---------------------------------------------------------------------------------------------
# The schedule and the optimizer.
# ---------------------------------------------------------------------------------------------

def milestones(config):
    """The epochs after which the lr is multiplied by 0.1: --lr-milestones as given; else the
    reference's for its datasets, or 50% and 75% of --epochs with none at epoch 0 (the run would
    start at lr x 0.1) and none twice (two decays at once): short runs decay less."""
    if config.lr_milestones is not None:
        return list(config.lr_milestones)
    if config.datasets in MILESTONES:
        return list(MILESTONES[config.datasets])
    return sorted({config.epochs // 2, config.epochs * 3 // 4} - {0})


def milestones_note(config):
    """The line saying that --epochs is too short for the default two decays (None: it is not)."""
    if config.lr_milestones is not None or config.datasets in MILESTONES or config.epochs == 0:
        return None
    kept = milestones(config)
    if len(kept) == 2:
        return None
    return (f'note: --epochs {config.epochs} is too short for the default x0.1 decays at 50% and '
            f'75% of the epochs (both would fall at epoch {config.epochs // 2}): '
            + (f'one decay, after epoch {kept[0]}' if kept else 'the lr stays constant')
            + ' (--lr-milestones sets them)')


def schedule_text(steps):
    return f'x0.1 after epochs {" ".join(map(str, steps))}' if steps else 'a constant lr'


def make_optimizer(config, model):
    if config.optimizer == 'adam':
        return torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=config.weight_decay)
    if config.optimizer in ('adamw', 'galore'):
        # timm's rule: no decay on biases, norms, and what the model names (a ViT's position
        # embedding and class token)
        skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        groups = [{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}]
        if config.optimizer == 'adamw':
            return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        # GaLore projects the decayed matrices (GaLore's own scripts: the transformer's linear
        # layers); the rest trains as AdamW
        groups[0].update(rank=config.galore_rank, update_proj_gap=config.galore_gap,
                         scale=config.galore_scale)
        return dldr.GaLoreAdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def galore_note(config, optimizer):
    """How many weight matrices --galore-rank actually reduces; a note that says so when none."""
    reduced, total = dldr.galore.projected_count(optimizer.param_groups[0]['params'], config.galore_rank)
    text = (f'--optimizer galore: rank {config.galore_rank} reduces {reduced} of the {total} decayed '
            f'weight matrices (those whose smaller side is above {config.galore_rank})')
    if not reduced:
        text = ('note: ' + text + '; each of the others steps as AdamW in a rotated basis, times '
                f'--galore-scale, and keeps full-size moments: give a smaller --galore-rank')
    return text


# ---------------------------------------------------------------------------------------------
# What a new run or a resume continues.
# ---------------------------------------------------------------------------------------------

def trajectory_value(settings, key):
    """The value of the trajectory flag ``key`` in ``settings`` (a dict): ``noise_model`` counts
    only under ``--corrupt`` and is 'wrong' in checkpoints older than the flag (the only model
    then)."""
    if key == 'noise_model':
        return settings.get('noise_model', 'wrong') if settings.get('corrupt') else None
    return settings.get(key)


def run_files(save_dir):
    """What an earlier run left in ``save_dir`` that a fresh start would replace."""
    snaps = [p for p in glob.glob(os.path.join(save_dir, '*.pt'))
             if re.fullmatch(r'\d+\.pt', os.path.basename(p))]
    extra = [os.path.join(save_dir, n) for n in ('metrics_sgd.json', 'checkpoint.pt', 'label_noise.json')]
    numbered = glob.glob(os.path.join(save_dir, 'checkpoint_*.pt'))
    return snaps + numbered + [p for p in extra if os.path.exists(p)]


def is_checkpoint(obj):
    return isinstance(obj, dict) and CHECKPOINT_KEYS <= obj.keys()


@dataclass(frozen=True)
class Start:
    """What this invocation continues: the file to resume from ('' for a new run), the full
    checkpoint in it, or the weights a ``-e`` evaluates, and the files of an earlier run that
    ``--overwrite`` replaces."""
    resume: str = ''
    checkpoint: dict | None = None
    eval_weights: dict | None = None
    earlier: tuple = ()


def check_start(config, context):
    """The :class:`Start` of this invocation; refuses to mix two runs."""
    resume = config.resume
    if resume == 'auto':
        resume = os.path.join(config.save_dir, 'checkpoint.pt')
        if not os.path.isfile(resume) and not config.evaluate:
            # what a resumable job script runs every time: the first time there is nothing to resume
            context.print(f'--resume auto: no {resume} yet; starting a new run')
            resume = ''
    if not resume:
        earlier = () if config.evaluate else tuple(run_files(config.save_dir))
        if earlier and not config.overwrite:
            raise UserError(f'{config.save_dir} already holds a trajectory ({len(earlier)} files, '
                            f'e.g. {os.path.basename(earlier[0])}); pass --resume auto to '
                            f'continue it, --overwrite to replace it, or another --save-dir')
        return Start(earlier=earlier)
    checkpoint = utils.load_file(resume, '--resume checkpoint')
    if config.evaluate and not is_checkpoint(checkpoint):
        return Start(resume, eval_weights=utils.weights_of(checkpoint))  # weights + BN buffers only
    if not is_checkpoint(checkpoint):
        raise UserError(f'{resume} is not a full checkpoint of train_sgd.py (a snapshot k.pt or a '
                        f'reference checkpoint holds only weights: evaluate it with -e, start from '
                        f'it with --pretrained): use checkpoint.pt or checkpoint_<epoch>.pt')
    saved, now = checkpoint['args'], flags.as_dict(config)
    changed = [k for k in TRAJECTORY_ARGS if trajectory_value(saved, k) != trajectory_value(now, k)
               and not (k == 'lr' and config.optimizer == 'adam')]  # (adam: always 0.001)
    if changed:
        k = changed[0]
        raise UserError(f'cannot resume {resume}: it was run with --{k} '
                        f'{trajectory_value(saved, k)!r}, not {trajectory_value(now, k)!r}')
    elsewhere = (os.path.realpath(os.path.dirname(os.path.abspath(resume)))
                 != os.path.realpath(config.save_dir))
    if elsewhere and run_files(config.save_dir) and not (config.overwrite or config.evaluate):
        raise UserError(f'{config.save_dir} already holds a trajectory and {resume} is from another '
                        f'folder: resuming would mix two runs; pass --overwrite to continue there '
                        f'anyway')
    return Start(resume, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------

@dataclass
class SGDRun(Run):
    """train_sgd.py's run: besides :class:`run.Run`'s, the optimizer, scheduler, GradScaler and
    data generator (what a checkpoint holds), the epoch it starts at, the best test accuracy
    and the label noise it trains with."""
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    generator: Any = None
    noise: dict | None = None
    start: Start = Start()
    start_epoch: int = 0
    best: float = 0.0

    @classmethod
    def start_run(cls, config):
        """Device and process group, the checks of what this invocation continues, data,
        model, optimizer, loaders and record; a checkpoint restored."""
        context = distributed.setup(config)
        start = check_start(config, context)
        utils.prepare_save_dir(config.save_dir)  # (after the checks: a refused run leaves no folder)
        if milestones_note(config) and not config.evaluate:
            context.print(milestones_note(config))
        data = utils.load_data(config)
        model = utils.build_model(config, data, context.device,
                                  None if start.resume else config.pretrained)
        optimizer = make_optimizer(config, model)
        if config.optimizer == 'galore' and not config.evaluate:
            context.print(galore_note(config, optimizer))
        generator = seeds.generator('data', config.randomseed)
        train_loader, test_loader = utils.make_loaders(data, config, context, generator)
        run = cls(config, context, 'sgd', data, model, train_loader, test_loader,
                  optimizer=optimizer,
                  scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(config), gamma=0.1),
                  scaler=engine.grad_scaler(config, context.device), generator=generator,
                  noise=label_noise(data), start=start)
        run.record = RunRecord(os.path.join(config.save_dir, 'metrics_sgd.json'), config, context,
                               method='sgd', n_parameters=sum(p.numel() for p in model.parameters()),
                               n_train=len(data.train_y), **utils.noise_record(data, config),
                               snapshots=[])
        run.record.watch(model)
        if start.checkpoint is not None:
            run.load_state_dict(start.checkpoint)
            context.print(f'resumed from {start.resume} at epoch {run.start_epoch}')
        run.print_setting()
        return run

    # -- the checkpoint --------------------------------------------------------------------

    def state_dict(self, epoch):
        """The checkpoint after ``epoch`` epochs."""
        device = self.context.device
        return {
            'epoch': epoch, 'args': flags.as_dict(self.config), 'best_acc': self.best,
            'epochs': self.record.epochs, 'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict() if self.scaler else None,
            'rng': {'data': self.generator.get_state(), 'torch': torch.get_rng_state(),
                    'cuda': torch.cuda.get_rng_state(device) if device.type == 'cuda' else None},
            **self.noise, 'world_size': self.context.world_size, 'snapshots': self.record.snapshots,
        }

    def load_state_dict(self, checkpoint):
        """Put the run where ``checkpoint`` left it (refusing other label noise)."""
        path, config = self.start.resume, self.config
        utils.check_state_dict(checkpoint['model'], self.model, path)
        self.model.load_state_dict(checkpoint['model'])
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.scheduler.load_state_dict(checkpoint['scheduler'])
        if self.scaler is not None and checkpoint.get('scaler'):
            self.scaler.load_state_dict(checkpoint['scaler'])
        for key, what in (('label_noise', 'indices'), ('label_noise_labels', 'labels')):
            saved = checkpoint.get(key)  # what the trajectory was trained with (labels: since --noise-model)
            if saved is not None and not torch.equal(saved, self.noise[key]):
                raise UserError(f'cannot resume {path}: its label-noise {what} differ from the ones '
                                f'--corrupt {config.corrupt} --noise-model {config.noise_model} draws '
                                f'now (changed data or code?); resuming would mix two runs')
        saved_world = checkpoint.get('world_size', 1)
        if saved_world != self.context.world_size:
            self.context.print(f'warning: {path} was written by {saved_world} rank(s), this run has '
                               f'{self.context.world_size}: the global batches stay the same, but '
                               f'BatchNorm sees per-rank batches of another size from now on')
        self.generator.set_state(checkpoint['rng']['data'])
        torch.set_rng_state(checkpoint['rng']['torch'])
        if self.context.device.type == 'cuda' and checkpoint['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(checkpoint['rng']['cuda'], self.context.device)
        self._follow_schedule(checkpoint['args'].get('epochs'))
        self.start_epoch, self.best = checkpoint['epoch'], checkpoint['best_acc']
        steps = len(self.train_loader)  # checkpoints of before --snapshot-every: one snapshot an epoch
        self.record.resume(checkpoint['epochs'], checkpoint.get('snapshots') or [
            {'snapshot': k, 'epoch': k, 'step': steps if k else 0, 'iteration': k * steps}
            for k in range(self.start_epoch + 1)])

    def _follow_schedule(self, old_epochs):
        """After the scheduler state is restored (its milestones too): the milestones of the
        current flags and the lr they give at the resumed epoch; one line says so when --epochs
        or the milestones changed (not for -e: no training)."""
        config, scheduler = self.config, self.scheduler
        want, saved = milestones(config), sorted(scheduler.milestones.elements())
        if config.evaluate or (want == saved and old_epochs == config.epochs):
            return
        scheduler.milestones = Counter(want)
        decays = sum(1 for m in want if m <= scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, scheduler.base_lrs):
            group['lr'] = base * scheduler.gamma ** decays
        scheduler._last_lr = [group['lr'] for group in self.optimizer.param_groups]
        self.context.print(
            f'--resume: --epochs {config.epochs} (the checkpoint\'s run: --epochs {old_epochs}, '
            f'{schedule_text(saved)}): the lr schedule of the current flags is followed, '
            f'{schedule_text(want)}; lr {scheduler._last_lr[0]:g} from epoch {scheduler.last_epoch + 1}'
            if want != saved else
            f'--resume: --epochs {config.epochs} (the checkpoint\'s run: --epochs {old_epochs}); '
            f'the lr schedule does not depend on it: {schedule_text(want)}')

    # -- the trajectory --------------------------------------------------------------------

    def begin(self):
        """Rank 0 clears an --overwrite'n run, records the label noise and writes snapshot 0 of
        a new run (every rank has checked the save-dir first); the tracker is opened.  Returns
        the model to train: wrapped in DistributedDataParallel under torchrun (gradients
        all-reduced; BatchNorm buffers broadcast from rank 0 at every forward, DDP's default, so
        rank 0's statistics are the run's)."""
        context, config, data = self.context, self.config, self.data
        self.open_tracker('sgd')
        context.barrier()
        if context.is_main:
            for path in self.start.earlier:  # --overwrite: only now that the new run is set up
                os.remove(path)
            if self.start.earlier:
                print(f'--overwrite: removed {len(self.start.earlier)} files of the earlier run in '
                      f'{config.save_dir}')
            if self.start_epoch == 0 and data.corrupted is not None:
                utils.save_json({'corrupt': config.corrupt, 'randomseed': config.randomseed,
                                 'noise_model': config.noise_model,
                                 'wrong_label_fraction': data.wrong_label_fraction,
                                 'indices': data.corrupted.tolist(),
                                 'labels': data.train_y[data.corrupted].tolist()},
                                os.path.join(config.save_dir, 'label_noise.json'))
        if self.start_epoch == 0:
            self.snapshot(0, 0, 0)
        if context.world_size == 1:
            return self.model
        return DistributedDataParallel(
            self.model, device_ids=[context.device] if context.device.type == 'cuda' else None,
            find_unused_parameters=config.arch in models.SOME_PARAMETERS_WITHOUT_GRADIENT)

    def snapshot(self, epoch, step, iteration):
        """The next numbered snapshot (written by rank 0), mapped in the record."""
        number = self.record.add_snapshot(epoch, step, iteration)
        if self.context.is_main:
            utils.save_tensors(self.model.state_dict(), utils.snapshot_path(self.config.save_dir, number))

    def begin_epoch(self, epoch):
        """Start epoch ``epoch`` (0-based): ranks > 0 draw dropout masks of their own (the same
        after a resume; rank 0's come from the saved RNG).  Returns ``engine.train_epoch``'s
        ``after_step`` under ``--snapshot-every``: a snapshot every N iterations inside the
        epoch (not of non-finite weights; the epoch's last step is the epoch's own snapshot);
        None without the flag."""
        if self.context.rank:
            torch.manual_seed(seeds.seed('rank_epoch', self.config.randomseed, rank=self.context.rank,
                                         epoch=epoch))
        every, steps = self.config.snapshot_every, len(self.train_loader)
        base = self._epoch_base = self.record.snapshots[-1]['iteration']
        if not every:
            return None

        def after_step(i):
            if (base + i + 1) % every == 0 and i + 1 < steps and torch.stack(
                    [torch.isfinite(p).all() for p in self.model.parameters()]).all():
                self.snapshot(epoch + 1, i + 1, base + i + 1)
        return after_step

    def evaluate(self):
        """The test scores with rank 0's BatchNorm statistics (SGD measures only those)."""
        t0 = time.time()
        engine.broadcast_buffers_(self.model, self.context.comm)
        test = engine.evaluate(self.model, self.test_loader, self.context, self.config.amp)  # all-reduces
        return Evaluation(test, None, time.time() - t0)

    def end_epoch(self, epoch, train, evaluation, **kwargs):
        """Besides :meth:`run.Run.end_epoch`: stop on non-finite values, snapshot ``epoch``,
        write the checkpoint (rank 0; a numbered one every --save-every epochs)."""
        self._check_finite(train, evaluation.test, epoch)
        self.best = max(self.best, evaluation.test.acc)
        steps = len(self.train_loader)
        self.snapshot(epoch, steps, self._epoch_base + steps)
        super().end_epoch(epoch, train, evaluation, **kwargs)
        if self.context.is_main:
            save_dir = self.config.save_dir
            kept = epoch % self.config.save_every == 0 or epoch == self.config.epochs
            state = self.state_dict(epoch)
            for path in [os.path.join(save_dir, 'checkpoint.pt')] + \
                    [os.path.join(save_dir, f'checkpoint_{epoch}.pt')] * kept:
                utils.save_tensors(state, path)
        self.context.barrier()  # the others wait until rank 0's files are complete

    def _check_finite(self, train, test, epoch):
        """Stop a run whose loss or weights are no longer finite, naming the last good snapshot."""
        broken = [k for k, v in self.model.state_dict().items()
                  if v.is_floating_point() and not torch.isfinite(v).all()]
        if not (math.isfinite(train.loss) and math.isfinite(test.loss)) or broken:
            what = (f'weights ({broken[0]})' if broken else
                    'training loss' if not math.isfinite(train.loss) else 'test loss')
            last = utils.snapshot_path(self.config.save_dir, self.record.snapshots[-1]['snapshot'])
            raise SystemExit(f'error: non-finite {what} in epoch {epoch}; stopped. The last good '
                             f'snapshot is {last} (try a lower --lr)' if self.context.is_main else 1)

    def print_setting(self):
        config, data, context = self.config, self.data, self.context
        n = sum(p.numel() for p in self.model.parameters())
        context.print(f'{config.arch}: {n / 1e6:.3f}M parameters on '
                      f'{context.device}'
                      + (f' x {context.world_size} ranks' if context.world_size > 1 else '')
                      + f'; {config.datasets}: {len(data.train_y)} train / {len(data.test_y)} test images'
                      + (f', {len(data.corrupted)} labels corrupted ({config.noise_model} model: '
                         f'{100 * data.wrong_label_fraction:.1f}% of the labels wrong)'
                         if data.corrupted is not None else ''))

    def evaluate_only(self):
        """``-e``: the test scores of the model (of the weights-only ``--resume`` file, when
        given)."""
        weights = self.start.eval_weights
        if weights is not None:
            utils.check_state_dict(weights, self.model, self.start.resume)
            self.model.load_state_dict(weights)
        scores = engine.evaluate(self.model, self.test_loader, self.context, self.config.amp)
        self.context.print(f'test loss {scores.loss:.4f} acc {scores.acc:.2f}%'
                           + (f' top5 {scores.acc5:.2f}%' if scores.acc5 is not None else ''))

    def finish(self):
        super().finish()
        self.context.print(f'trajectory: {self.config.save_dir}/0.pt .. '
                           f'{len(self.record.snapshots) - 1}.pt; metrics: {self.record.path}')


def label_noise(data):
    """What a checkpoint keeps of the label noise, to refuse resuming under other noise: the
    redrawn indices and their new labels (empty without ``--corrupt``)."""
    idx = data.corrupted if data.corrupted is not None else torch.empty(0, dtype=torch.long)
    return {'label_noise': idx, 'label_noise_labels': data.train_y[idx]}
