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

import torch
from torch.nn.parallel import DistributedDataParallel

import engine
import models
import tracking
import utils

# Learning-rate milestones (x0.1) as the reference; datasets it did not schedule decay at 50% and
# 75% of --epochs.
MILESTONES = {'CIFAR10': (100, 150), 'CIFAR100': (150,), 'ImageNet': (30, 60)}

# Flags that define a trajectory: resuming with other values would mix two runs.
TRAJECTORY_ARGS = ('arch', 'datasets', 'optimizer', 'batch_size', 'lr', 'momentum', 'weight_decay',
                   'randomseed', 'corrupt', 'smalldatasets', 'amp', 'channels_last', 'lr_milestones',
                   'snapshot_every', 'image_size')
CHECKPOINT_KEYS = {'epoch', 'args', 'best_acc', 'epochs', 'model', 'optimizer', 'scheduler', 'rng'}


def parse_args(argv=None):
    p = engine.make_parser(
        'Regular training (SGD or Adam) that saves a snapshot of the model after every epoch: '
        'the trajectory sampled by DLDR.', epochs=200, lr=0.1, lr_help='initial learning rate')
    engine.add_lr_milestones_arg(p, None, 'as the reference, 100 150 on CIFAR10, 150 on CIFAR100, '
                                         '30 60 on ImageNet, else 50%% and 75%% of --epochs')
    p.add_argument('--snapshot-every', '--snapshot_every', default=None, type=engine.positive_int,
                   metavar='N', help='also write a snapshot every N iterations (the reference\'s '
                   'ImageNet run: 1000); snapshots are then numbered consecutively, not by epoch')
    return engine.finish_args(p.parse_args(argv))


def milestones(args):
    if args.lr_milestones is not None:
        return args.lr_milestones
    return MILESTONES.get(args.datasets, (args.epochs // 2, args.epochs * 3 // 4))


def make_optimizer(args, model):
    if args.optimizer == 'adam':
        return torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=args.weight_decay)
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


def main(argv=None):
    args = parse_args(argv)
    context = engine.setup(args)
    utils.prepare_save_dir(args.save_dir)
    metrics_path = os.path.join(args.save_dir, 'metrics_sgd.json')
    ckpt_path = os.path.join(args.save_dir, 'checkpoint.pt')

    checkpoint, earlier, eval_weights = None, [], None
    if args.resume == 'auto' and not os.path.isfile(ckpt_path) and not args.evaluate:
        # what a resumable job script runs every time: the first time there is nothing to resume
        context.print(f'--resume auto: no {ckpt_path} yet; starting a new run')
        args.resume = ''
    if args.resume:
        checkpoint = utils.load_file(resume_path(args), 'checkpoint')
        if args.evaluate and not (isinstance(checkpoint, dict) and CHECKPOINT_KEYS <= checkpoint.keys()):
            eval_weights, checkpoint = utils.weights_of(checkpoint), None  # weights + BN buffers only
    if checkpoint is not None:
        if not isinstance(checkpoint, dict) or not CHECKPOINT_KEYS <= checkpoint.keys():
            raise utils.UserError(f'{resume_path(args)} is not a full checkpoint of train_sgd.py '
                                  f'(a snapshot k.pt or a reference checkpoint holds only weights: '
                                  f'evaluate it with -e, start from it with --pretrained): use '
                                  f'checkpoint.pt or checkpoint_<epoch>.pt')
        changed = [k for k in TRAJECTORY_ARGS if checkpoint['args'].get(k) != getattr(args, k)]
        if changed:
            k = changed[0]
            raise utils.UserError(f'cannot resume {resume_path(args)}: it was run with --{k} '
                                  f'{checkpoint["args"].get(k)!r}, not {getattr(args, k)!r}')
        elsewhere = (os.path.realpath(os.path.dirname(os.path.abspath(resume_path(args))))
                     != os.path.realpath(args.save_dir))
        if elsewhere and run_files(args.save_dir) and not (args.overwrite or args.evaluate):
            raise utils.UserError(f'{args.save_dir} already holds a trajectory and '
                                  f'{resume_path(args)} is from another folder: resuming would mix '
                                  f'two runs; pass --overwrite to continue there anyway')
    elif not args.evaluate:
        earlier = run_files(args.save_dir)
        if earlier and not args.overwrite:
            raise utils.UserError(f'{args.save_dir} already holds a trajectory ({len(earlier)} files, '
                                  f'e.g. {os.path.basename(earlier[0])}); pass --resume auto to '
                                  f'continue it, --overwrite to replace it, or another --save-dir')

    data = utils.load_data(args)
    noise = data.corrupted if data.corrupted is not None else torch.empty(0, dtype=torch.long)
    model = utils.build_model(args, data, context.device, None if args.resume else args.pretrained)
    optimizer = make_optimizer(args, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(args), gamma=0.1)
    scaler = engine.grad_scaler(args, context.device)
    generator = torch.Generator().manual_seed(args.randomseed)
    train_loader, test_loader = utils.make_loaders(data, args, context, generator)
    record = engine.RunRecord(metrics_path, args, context, (train_loader, test_loader), method='sgd',
                              n_parameters=sum(p.numel() for p in model.parameters()),
                              n_train=len(data.train_y), n_corrupted=len(data.corrupted)
                              if data.corrupted is not None else 0)
    best = 0.0
    snapshots = record.data['snapshots'] = []  # [{'snapshot': k, 'epoch', 'step', 'iteration'}]
    if eval_weights is not None:
        utils.check_state_dict(eval_weights, model, resume_path(args))
        model.load_state_dict(eval_weights)

    if checkpoint is not None:
        utils.check_state_dict(checkpoint['model'], model, resume_path(args))
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        if scaler is not None and checkpoint.get('scaler'):
            scaler.load_state_dict(checkpoint['scaler'])
        saved = checkpoint.get('label_noise')  # the indices the trajectory was trained with
        if saved is not None and not torch.equal(saved, noise):
            raise utils.UserError(f'cannot resume {resume_path(args)}: its label-noise indices differ '
                                  f'from the ones --corrupt {args.corrupt} draws now (changed data or '
                                  f'code?); resuming would mix two runs')
        saved_world = checkpoint.get('world_size', 1)
        if saved_world != context.world_size:
            context.print(f'warning: {resume_path(args)} was written by {saved_world} rank(s), this '
                          f'run has {context.world_size}: the global batches stay the same, but '
                          f'BatchNorm sees per-rank batches of another size from now on')
        generator.set_state(checkpoint['rng']['data'])
        torch.set_rng_state(checkpoint['rng']['torch'])
        if context.device.type == 'cuda' and checkpoint['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(checkpoint['rng']['cuda'], context.device)
        args.start_epoch = checkpoint['epoch']
        best = checkpoint['best_acc']
        record.data['epochs'] = checkpoint['epochs']
        steps = len(train_loader)  # checkpoints of before --snapshot-every: one snapshot an epoch
        snapshots += checkpoint.get('snapshots') or [
            {'snapshot': k, 'epoch': k, 'step': steps if k else 0, 'iteration': k * steps}
            for k in range(args.start_epoch + 1)]
        if record.data['epochs']:
            record.data['final_test_acc'] = record.data['epochs'][-1]['test_acc']
            record.data['best_test_acc'] = max(r['test_acc'] for r in record.data['epochs'])
        context.print(f'resumed from {resume_path(args)} at epoch {args.start_epoch}')

    context.print(f'{args.arch}: {record.data["n_parameters"] / 1e6:.3f}M parameters on {context.device}'
                  + (f' x {context.world_size} ranks' if context.world_size > 1 else '')
                  + f'; {args.datasets}: {len(data.train_y)} train / {len(data.test_y)} test images'
                  + (f', {len(data.corrupted)} labels corrupted' if data.corrupted is not None else ''))

    if args.evaluate:
        scores = engine.evaluate(model, test_loader, context, args.amp)
        context.print(f'test loss {scores[0]:.4f} acc {scores[1]:.2f}%'
                      + (f' top5 {scores.acc5:.2f}%' if scores.acc5 is not None else ''))
        return

    def snapshot(epoch, step, iteration):
        """The next numbered snapshot (written by rank 0), mapped in the JSON."""
        if context.is_main:
            utils.save_tensors(model.state_dict(), utils.snapshot_path(args.save_dir, len(snapshots)))
        snapshots.append({'snapshot': len(snapshots), 'epoch': epoch, 'step': step, 'iteration': iteration})

    context.barrier()  # every rank has checked the save-dir before rank 0 writes into it
    if context.is_main:
        for path in earlier:  # --overwrite: only now that the new run is set up
            os.remove(path)
        if earlier:
            print(f'--overwrite: removed {len(earlier)} files of the earlier run in {args.save_dir}')
        if args.start_epoch == 0 and data.corrupted is not None:
                utils.save_json({'corrupt': args.corrupt, 'randomseed': args.randomseed,
                                 'indices': data.corrupted.tolist()},
                                os.path.join(args.save_dir, 'label_noise.json'))
    if args.start_epoch == 0:
        snapshot(0, 0, 0)
    # Data parallel: gradients all-reduced by DDP; BatchNorm buffers broadcast from rank 0 at every
    # forward (DDP's default), so rank 0's statistics are the run's.
    net = model if context.world_size == 1 else DistributedDataParallel(
        model, device_ids=[context.device] if context.device.type == 'cuda' else None,
        find_unused_parameters=args.arch in models.SOME_PARAMETERS_WITHOUT_GRADIENT)

    tracker = tracking.make_tracker(args, context, 'sgd')
    run_start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        t0 = time.time()
        lr = optimizer.param_groups[0]['lr']
        base, steps = snapshots[-1]['iteration'], len(train_loader)
        if context.rank:  # dropout masks of its own, the same after a resume (rank 0: the saved RNG)
            torch.manual_seed(args.randomseed + 1000 * context.rank + epoch)

        def after_step(i):  # mid-epoch snapshots; one with non-finite weights is not written
            if (base + i + 1) % args.snapshot_every == 0 and i + 1 < steps and torch.stack(
                    [torch.isfinite(p).all() for p in model.parameters()]).all():
                snapshot(epoch + 1, i + 1, base + i + 1)

        train = engine.train_epoch(
            net, train_loader, optimizer, context, amp=args.amp, scaler=scaler,
            after_step=after_step if args.snapshot_every else None,
            log_step=tracker.step_hook(optimizer, epoch * steps), desc=f'epoch {epoch + 1}', print_freq=args.print_freq)
        scheduler.step()
        t1 = time.time()
        engine.broadcast_buffers_(model, context)
        test = engine.evaluate(model, test_loader, context, args.amp)
        t2 = time.time()
        (train_loss, train_acc), (test_loss, test_acc) = train, test
        broken = [k for k, v in model.state_dict().items()
                  if v.is_floating_point() and not torch.isfinite(v).all()]
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)) or broken:
            what = (f'weights ({broken[0]})' if broken else
                    'training loss' if not math.isfinite(train_loss) else 'test loss')
            raise SystemExit(f'error: non-finite {what} in epoch {epoch + 1}; stopped. The last '
                             f'good snapshot is {utils.snapshot_path(args.save_dir, snapshots[-1]["snapshot"])} (try a '
                             f'lower --lr)' if context.is_main else 1)
        best = max(best, test_acc)
        context.print(engine.epoch_line(epoch + 1, args.epochs, lr, *train, *test, t1 - t0, t2 - t1,
                                        train_acc5=train.acc5, test_acc5=test.acc5))
        snapshot(epoch + 1, steps, base + steps)
        record.add_epoch({'epoch': epoch + 1, 'lr': lr, **engine.score_row(train, test),
                          'seconds': t2 - t0, 'train_seconds': t1 - t0, 'eval_seconds': t2 - t1})
        tracker.log_epoch(record.data['epochs'][-1])
        if context.is_main:
            checkpoint = {
                'epoch': epoch + 1, 'args': vars(args), 'best_acc': best, 'epochs': record.data['epochs'],
                'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict() if scaler else None,
                'rng': {'data': generator.get_state(), 'torch': torch.get_rng_state(),
                        'cuda': torch.cuda.get_rng_state(context.device)
                        if context.device.type == 'cuda' else None},
                'label_noise': noise, 'world_size': context.world_size, 'snapshots': snapshots,
            }
            utils.save_tensors(checkpoint, ckpt_path)
            if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
                utils.save_tensors(checkpoint, os.path.join(args.save_dir, f'checkpoint_{epoch + 1}.pt'))
        context.barrier()  # the others wait until rank 0's files are complete

    record.data['seconds'] = record.data.get('seconds', 0) + time.time() - run_start
    record.save()
    context.print(f'final test acc {record.data["final_test_acc"]}  best {record.data["best_test_acc"]}  '
                  f'({time.time() - run_start:.0f}s)')
    context.print(f'trajectory: {args.save_dir}/0.pt .. {len(snapshots) - 1}.pt; metrics: {metrics_path}')
    tracker.close()


if __name__ == '__main__':
    engine.run_cli(main)
