"""Regular training that samples the DLDR trajectory.

Writes <save-dir>/0.pt (the initialisation) before the first step and <save-dir>/k.pt after
epoch k: the snapshots from which train_psgd.py / train_pbfgs.py extract the subspace.  With
--snapshot-every N also every N iterations, all numbered consecutively; the metrics JSON maps
each snapshot number to its epoch and iteration (``snapshots``).

    python -u train_sgd.py --datasets CIFAR10 --lr 0.1 --arch=resnet20 --epochs=150 \
        --save-dir=save_resnet20 |& tee -a log_resnet20
"""
import glob
import math
import os
import re
import time
from collections import Counter

import torch
from torch.nn.parallel import DistributedDataParallel

import distributed
import engine
import flags
import models
import seeds
import tracking
import utils
from utils import UserError

# Learning-rate milestones (x0.1) as the reference; datasets it did not schedule decay at 50% and
# 75% of --epochs.
MILESTONES = {'CIFAR10': (100, 150), 'CIFAR100': (150,), 'ImageNet': (30, 60)}

# Flags that define a trajectory: resuming with other values would mix two runs.
TRAJECTORY_ARGS = ('arch', 'datasets', 'optimizer', 'batch_size', 'lr', 'momentum', 'weight_decay',
                   'randomseed', 'corrupt', 'noise_model', 'smalldatasets', 'amp', 'channels_last',
                   'lr_milestones', 'snapshot_every', 'image_size')


def trajectory_value(run_args, key):
    """The value of the trajectory flag ``key`` in ``run_args`` (a dict): ``noise_model`` counts
    only under ``--corrupt`` and is 'wrong' in checkpoints older than the flag (the only model
    then)."""
    if key == 'noise_model':
        return run_args.get('noise_model', 'wrong') if run_args.get('corrupt') else None
    return run_args.get(key)


def parse_args(argv=None):
    p = flags.common_parser(
        'Regular training (SGD or Adam) that saves a snapshot of the model after every epoch: '
        'the trajectory sampled by DLDR.', epochs=200)
    flags.add_lr(p, 0.1, 'initial learning rate')
    flags.add_momentum(p)
    flags.add_lr_milestones(p, None, 'as the reference, 100 150 on CIFAR10, 150 on CIFAR100, '
                                     '30 60 on ImageNet, else 50%% and 75%% of --epochs, without '
                                     'one at epoch 0 or two at one epoch: --epochs 2 decays once, '
                                     'after epoch 1, --epochs 1 never (the run says so). A '
                                     '--resume follows the milestones of the current flags, '
                                     'recomputed from a changed --epochs')
    flags.add_sgd_args(p)
    return flags.finish_sgd_args(p.parse_args(argv), default_lr=p.get_default('lr'))


def milestones(args):
    """The epochs after which the lr is multiplied by 0.1: --lr-milestones as given; else the
    reference's for its datasets, or 50% and 75% of --epochs with none at epoch 0 (the run would
    start at lr x 0.1) and none twice (two decays at once): short runs decay less."""
    if args.lr_milestones is not None:
        return list(args.lr_milestones)
    if args.datasets in MILESTONES:
        return list(MILESTONES[args.datasets])
    return sorted({args.epochs // 2, args.epochs * 3 // 4} - {0})


def milestones_note(args):
    """The line saying that --epochs is too short for the default two decays (None: it is not)."""
    if args.lr_milestones is not None or args.datasets in MILESTONES or args.epochs == 0:
        return None
    kept = milestones(args)
    if len(kept) == 2:
        return None
    return (f'note: --epochs {args.epochs} is too short for the default x0.1 decays at 50% and 75% '
            f'of the epochs (both would fall at epoch {args.epochs // 2}): '
            + (f'one decay, after epoch {kept[0]}' if kept else 'the lr stays constant')
            + ' (--lr-milestones sets them)')


def schedule_text(steps):
    return f'x0.1 after epochs {" ".join(map(str, steps))}' if steps else 'a constant lr'


def make_optimizer(args, model):
    if args.optimizer == 'adam':
        return torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=args.weight_decay)
    if args.optimizer == 'adamw':
        # timm's rule: no decay on biases, norms, and what the model names (a ViT's position
        # embedding and class token)
        skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        return torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}],
                                 lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def run_files(save_dir):
    """What an earlier run left in ``save_dir`` that a fresh start would replace."""
    snaps = [p for p in glob.glob(os.path.join(save_dir, '*.pt'))
             if re.fullmatch(r'\d+\.pt', os.path.basename(p))]
    extra = [os.path.join(save_dir, n) for n in ('metrics_sgd.json', 'checkpoint.pt', 'label_noise.json')]
    numbered = glob.glob(os.path.join(save_dir, 'checkpoint_*.pt'))
    return snaps + numbered + [p for p in extra if os.path.exists(p)]


def resume_path(args):
    if args.resume == 'auto':
        return os.path.join(args.save_dir, 'checkpoint.pt')
    return args.resume


# ---------------------------------------------------------------------------------------------
# The checkpoint: everything an exact resume needs, written and restored side by side.
# ---------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = {'epoch', 'args', 'best_acc', 'epochs', 'model', 'optimizer', 'scheduler', 'rng'}


def is_checkpoint(obj):
    return isinstance(obj, dict) and CHECKPOINT_KEYS <= obj.keys()


def save_checkpoint(paths, state, epoch, best, record, noise):
    """Write the :class:`TrainingState` after ``epoch`` epochs to each of ``paths`` (rank 0)."""
    device = state.context.device
    checkpoint = {
        'epoch': epoch, 'args': vars(state.args), 'best_acc': best, 'epochs': record.epochs,
        'model': state.model.state_dict(), 'optimizer': state.optimizer.state_dict(),
        'scheduler': state.scheduler.state_dict(),
        'scaler': state.scaler.state_dict() if state.scaler else None,
        'rng': {'data': state.generator.get_state(), 'torch': torch.get_rng_state(),
                'cuda': torch.cuda.get_rng_state(device) if device.type == 'cuda' else None},
        **noise, 'world_size': state.context.world_size, 'snapshots': record.snapshots,
    }
    for path in paths:
        utils.save_tensors(checkpoint, path)


def restore_checkpoint(checkpoint, path, state, record, noise, steps):
    """Put ``state`` and ``record`` where the checkpoint left them; returns (epoch, best)."""
    context, args = state.context, state.args
    utils.check_state_dict(checkpoint['model'], state.model, path)
    state.model.load_state_dict(checkpoint['model'])
    state.optimizer.load_state_dict(checkpoint['optimizer'])
    state.scheduler.load_state_dict(checkpoint['scheduler'])
    if state.scaler is not None and checkpoint.get('scaler'):
        state.scaler.load_state_dict(checkpoint['scaler'])
    for key, what in (('label_noise', 'indices'), ('label_noise_labels', 'labels')):
        saved = checkpoint.get(key)  # what the trajectory was trained with (labels: since --noise-model)
        if saved is not None and not torch.equal(saved, noise[key]):
            raise UserError(f'cannot resume {path}: its label-noise {what} differ from the ones '
                            f'--corrupt {args.corrupt} --noise-model {args.noise_model} draws now '
                            f'(changed data or code?); resuming would mix two runs')
    saved_world = checkpoint.get('world_size', 1)
    if saved_world != context.world_size:
        context.print(f'warning: {path} was written by {saved_world} rank(s), this run has '
                      f'{context.world_size}: the global batches stay the same, but BatchNorm '
                      f'sees per-rank batches of another size from now on')
    state.generator.set_state(checkpoint['rng']['data'])
    torch.set_rng_state(checkpoint['rng']['torch'])
    if context.device.type == 'cuda' and checkpoint['rng'].get('cuda') is not None:
        torch.cuda.set_rng_state(checkpoint['rng']['cuda'], context.device)
    follow_schedule(state, checkpoint)
    epoch = checkpoint['epoch']
    # checkpoints of before --snapshot-every: one snapshot an epoch
    record.resume(checkpoint['epochs'], checkpoint.get('snapshots') or [
        {'snapshot': k, 'epoch': k, 'step': steps if k else 0, 'iteration': k * steps}
        for k in range(epoch + 1)])
    return epoch, checkpoint['best_acc']


def follow_schedule(state, checkpoint):
    """After the scheduler state is restored (which restores the checkpoint's milestones too):
    the milestones of the current flags — the default ones recomputed from a changed --epochs,
    --lr-milestones as given (a changed one is refused) — and the lr they give at the resumed
    epoch; one line says so when --epochs or the milestones changed (not for -e: no training)."""
    args, scheduler = state.args, state.scheduler
    want, saved = milestones(args), sorted(scheduler.milestones.elements())
    old_epochs = checkpoint['args'].get('epochs')
    if args.evaluate or (want == saved and old_epochs == args.epochs):
        return
    scheduler.milestones = Counter(want)
    decays = sum(1 for m in want if m <= scheduler.last_epoch)
    for group, base in zip(state.optimizer.param_groups, scheduler.base_lrs):
        group['lr'] = base * scheduler.gamma ** decays
    scheduler._last_lr = [group['lr'] for group in state.optimizer.param_groups]
    state.context.print(
        f'--resume: --epochs {args.epochs} (the checkpoint\'s run: --epochs {old_epochs}, '
        f'{schedule_text(saved)}): the lr schedule of the current flags is followed, '
        f'{schedule_text(want)}; lr {scheduler._last_lr[0]:g} from epoch {scheduler.last_epoch + 1}'
        if want != saved else
        f'--resume: --epochs {args.epochs} (the checkpoint\'s run: --epochs {old_epochs}); the lr '
        f'schedule does not depend on it: {schedule_text(want)}')


class TrainingState:
    """The live objects a checkpoint holds: model, optimizer, scheduler, scaler, data generator."""

    def __init__(self, args, context, model):
        self.args, self.context, self.model = args, context, model
        self.optimizer = make_optimizer(args, model)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones(args), gamma=0.1)
        self.scaler = engine.grad_scaler(args, context.device)
        self.generator = seeds.generator('data', args.randomseed)


def check_start(args, context, ckpt_path):
    """What this invocation continues: (full checkpoint or None, weights to evaluate or None,
    files of an earlier run that --overwrite replaces).  Refuses to mix two runs."""
    if args.resume == 'auto' and not os.path.isfile(ckpt_path) and not args.evaluate:
        # what a resumable job script runs every time: the first time there is nothing to resume
        context.print(f'--resume auto: no {ckpt_path} yet; starting a new run')
        args.resume = ''
    if not args.resume:
        earlier = [] if args.evaluate else run_files(args.save_dir)
        if earlier and not args.overwrite:
            raise UserError(f'{args.save_dir} already holds a trajectory ({len(earlier)} files, '
                            f'e.g. {os.path.basename(earlier[0])}); pass --resume auto to '
                            f'continue it, --overwrite to replace it, or another --save-dir')
        return None, None, earlier
    path = resume_path(args)
    checkpoint = utils.load_file(path, '--resume checkpoint')
    if args.evaluate and not is_checkpoint(checkpoint):
        return None, utils.weights_of(checkpoint), []  # weights + BN buffers only
    if not is_checkpoint(checkpoint):
        raise UserError(f'{path} is not a full checkpoint of train_sgd.py (a snapshot k.pt or a '
                        f'reference checkpoint holds only weights: evaluate it with -e, start from '
                        f'it with --pretrained): use checkpoint.pt or checkpoint_<epoch>.pt')
    saved, now = checkpoint['args'], vars(args)
    changed = [k for k in TRAJECTORY_ARGS if trajectory_value(saved, k) != trajectory_value(now, k)
               and not (k == 'lr' and args.optimizer == 'adam')]  # (adam: always 0.001)
    if changed:
        k = changed[0]
        raise UserError(f'cannot resume {path}: it was run with --{k} '
                        f'{trajectory_value(saved, k)!r}, not {trajectory_value(now, k)!r}')
    elsewhere = (os.path.realpath(os.path.dirname(os.path.abspath(path)))
                 != os.path.realpath(args.save_dir))
    if elsewhere and run_files(args.save_dir) and not (args.overwrite or args.evaluate):
        raise UserError(f'{args.save_dir} already holds a trajectory and {path} is from another '
                        f'folder: resuming would mix two runs; pass --overwrite to continue there '
                        f'anyway')
    return checkpoint, None, []


def start_new_run(args, context, earlier, data):
    """Rank 0 clears an --overwrite'n run and records the label noise (every rank has checked
    the save-dir first)."""
    context.barrier()
    if not context.is_main:
        return
    for path in earlier:  # --overwrite: only now that the new run is set up
        os.remove(path)
    if earlier:
        print(f'--overwrite: removed {len(earlier)} files of the earlier run in {args.save_dir}')
    if args.start_epoch == 0 and data.corrupted is not None:
        utils.save_json({'corrupt': args.corrupt, 'randomseed': args.randomseed,
                         'noise_model': args.noise_model,
                         'wrong_label_fraction': data.wrong_label_fraction,
                         'indices': data.corrupted.tolist(),
                         'labels': data.train_y[data.corrupted].tolist()},
                        os.path.join(args.save_dir, 'label_noise.json'))


def label_noise(data):
    """What a checkpoint keeps of the label noise, to refuse resuming under other noise: the
    redrawn indices and their new labels (empty without ``--corrupt``)."""
    idx = data.corrupted if data.corrupted is not None else torch.empty(0, dtype=torch.long)
    return {'label_noise': idx, 'label_noise_labels': data.train_y[idx]}


def check_finite(model, train, test, epoch, args, record, context):
    """Stop a run whose loss or weights are no longer finite, naming the last good snapshot."""
    broken = [k for k, v in model.state_dict().items()
              if v.is_floating_point() and not torch.isfinite(v).all()]
    if not (math.isfinite(train[0]) and math.isfinite(test[0])) or broken:
        what = (f'weights ({broken[0]})' if broken else
                'training loss' if not math.isfinite(train[0]) else 'test loss')
        last = utils.snapshot_path(args.save_dir, record.snapshots[-1]['snapshot'])
        raise SystemExit(f'error: non-finite {what} in epoch {epoch + 1}; stopped. The last good '
                         f'snapshot is {last} (try a lower --lr)' if context.is_main else 1)


def print_setting(args, context, data, record):
    context.print(f'{args.arch}: {record.data["n_parameters"] / 1e6:.3f}M parameters on {context.device}'
                  + (f' x {context.world_size} ranks' if context.world_size > 1 else '')
                  + f'; {args.datasets}: {len(data.train_y)} train / {len(data.test_y)} test images'
                  + (f', {len(data.corrupted)} labels corrupted ({args.noise_model} model: '
                     f'{100 * data.wrong_label_fraction:.1f}% of the labels wrong)'
                     if data.corrupted is not None else ''))


def evaluate_only(model, weights, test_loader, context, args):
    """``-e``: the test scores of the model (of ``weights``, a weights-only ``--resume`` file,
    when given)."""
    if weights is not None:
        utils.check_state_dict(weights, model, resume_path(args))
        model.load_state_dict(weights)
    scores = engine.evaluate(model, test_loader, context, args.amp)
    context.print(f'test loss {scores[0]:.4f} acc {scores[1]:.2f}%'
                  + (f' top5 {scores.acc5:.2f}%' if scores.acc5 is not None else ''))


def main(argv=None):
    args = parse_args(argv)
    context = distributed.setup(args)
    metrics_path = os.path.join(args.save_dir, 'metrics_sgd.json')
    ckpt_path = os.path.join(args.save_dir, 'checkpoint.pt')
    checkpoint, eval_weights, earlier = check_start(args, context, ckpt_path)
    utils.prepare_save_dir(args.save_dir)  # (after the checks: a refused run leaves no folder)
    if milestones_note(args) and not args.evaluate:
        context.print(milestones_note(args))

    data = utils.load_data(args)
    noise = label_noise(data)
    model = utils.build_model(args, data, context.device, None if args.resume else args.pretrained)
    state = TrainingState(args, context, model)
    train_loader, test_loader = utils.make_loaders(data, args, context, state.generator)
    record = engine.RunRecord(metrics_path, args, context, method='sgd',
                              n_parameters=sum(p.numel() for p in model.parameters()),
                              n_train=len(data.train_y), **utils.noise_record(data, args), snapshots=[])
    record.watch(model)
    best = 0.0
    if checkpoint is not None:
        args.start_epoch, best = restore_checkpoint(checkpoint, resume_path(args), state, record,
                                                    noise, len(train_loader))
        context.print(f'resumed from {resume_path(args)} at epoch {args.start_epoch}')
    print_setting(args, context, data, record)
    if args.evaluate:
        return evaluate_only(model, eval_weights, test_loader, context, args)
    tracker = tracking.make_tracker(args, context, 'sgd')

    def snapshot(epoch, step, iteration):
        """The next numbered snapshot (written by rank 0), mapped in the record."""
        number = record.add_snapshot(epoch, step, iteration)
        if context.is_main:
            utils.save_tensors(model.state_dict(), utils.snapshot_path(args.save_dir, number))

    start_new_run(args, context, earlier, data)
    if args.start_epoch == 0:
        snapshot(0, 0, 0)
    # Data parallel: gradients all-reduced by DDP; BatchNorm buffers broadcast from rank 0 at every
    # forward (DDP's default), so rank 0's statistics are the run's.
    net = model if context.world_size == 1 else DistributedDataParallel(
        model, device_ids=[context.device] if context.device.type == 'cuda' else None,
        find_unused_parameters=args.arch in models.SOME_PARAMETERS_WITHOUT_GRADIENT)

    run_start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        t0 = time.time()
        lr = state.optimizer.param_groups[0]['lr']
        base, steps = record.snapshots[-1]['iteration'], len(train_loader)
        if context.rank:  # dropout masks of its own, the same after a resume (rank 0: the saved RNG)
            torch.manual_seed(seeds.seed('rank_epoch', args.randomseed, rank=context.rank, epoch=epoch))

        def after_step(i):  # mid-epoch snapshots; one with non-finite weights is not written
            if (base + i + 1) % args.snapshot_every == 0 and i + 1 < steps and torch.stack(
                    [torch.isfinite(p).all() for p in model.parameters()]).all():
                snapshot(epoch + 1, i + 1, base + i + 1)

        train = engine.train_epoch(  # DDP all-reduces the gradients
            net, train_loader, state.optimizer, context, amp=args.amp, scaler=state.scaler,
            after_step=after_step if args.snapshot_every else None,
            log_step=tracker.step_hook(state.optimizer, epoch * steps), desc=f'epoch {epoch + 1}',
            print_freq=args.print_freq)
        state.scheduler.step()
        t1 = time.time()
        engine.broadcast_buffers_(model, context.comm)  # rank 0's BatchNorm statistics
        test = engine.evaluate(model, test_loader, context, args.amp)  # all-reduces the scores
        t2 = time.time()
        check_finite(model, train, test, epoch, args, record, context)
        best = max(best, test[1])
        context.print(engine.epoch_line(epoch + 1, args.epochs, lr, train, test, t1 - t0, t2 - t1))
        snapshot(epoch + 1, steps, base + steps)
        skipped = utils.count_skipped((train_loader, test_loader), context.comm)  # an all-reduce
        record.add_epoch({'epoch': epoch + 1, 'lr': lr, **engine.score_row(train, test),
                          'seconds': t2 - t0, 'train_seconds': t1 - t0, 'eval_seconds': t2 - t1}, skipped)
        tracker.log_epoch(record.data['epochs'][-1])
        if context.is_main:
            kept = (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs
            save_checkpoint([ckpt_path] + [os.path.join(args.save_dir, f'checkpoint_{epoch + 1}.pt')] * kept,
                            state, epoch + 1, best, record, noise)
        context.barrier()  # the others wait until rank 0's files are complete

    record.finish(time.time() - run_start)
    tracker.close()
    context.print(f'final test acc {record.data["final_test_acc"]}  best {record.data["best_test_acc"]}  '
                  f'({time.time() - run_start:.0f}s)')
    context.print(f'trajectory: {args.save_dir}/0.pt .. {len(record.snapshots) - 1}.pt; '
                  f'metrics: {metrics_path}')


if __name__ == '__main__':
    distributed.run_cli(main)
