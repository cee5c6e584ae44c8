"""P-SGD: SGD with momentum in the DLDR subspace of a sampled trajectory.

Extracts the top-d principal directions P of snapshots params_start..params_end-1 (written by
train_sgd.py), starts from snapshot params_start and replaces every gradient g by its projection
PᵀP g, so every iterate stays in w_start + span(Pᵀ).  Under torchrun each rank projects its own
gradient and the ranks average the d coordinates: d numbers per step, not n.

    python -u train_psgd.py --epochs 40 --datasets CIFAR10 --lr 1 --params_start 0 --params_end 81 \
        --batch-size 128 --n_components 40 --arch=resnet20 --save-dir=save_resnet20 |& tee -a log
"""
import math
import time

import torch

import dldr
import distributed
import engine
import flags
import subspace_run
import tracking
import utils


def parse_args(argv=None):
    p = flags.common_parser(
        'P-SGD: train in the d-dimensional DLDR subspace of a sampled trajectory. Gradients are '
        'projected onto the subspace and SGD with momentum steps on them. No weight decay: its '
        'gradient (wd * w) points out of the subspace, and the reference uses none in this phase.',
        epochs=40)
    flags.add_lr(p, 1.0, 'learning rate of the subspace SGD')
    flags.add_momentum(p)
    flags.add_lr_milestones(p, [30, 50], '30 50, the reference\'s fixed schedule')
    flags.add_subspace_args(p)
    return flags.finish_subspace_args(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    if args.evaluate:
        return subspace_run.evaluate_saved(args, 'psgd')
    run = subspace_run.prepare(args, 'psgd')
    model, context = run.model, run.context
    params = dldr.trainable_params(model)
    # SGD with momentum on P^T P g (no weight decay); every rank projects its own gradient and
    # the ranks average the d coordinates
    optimizer = dldr.optim.PSGD(params, run.subspace, lr=args.lr, momentum=args.momentum,
                                comm=context.comm)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_milestones, gamma=0.1)
    scaler = engine.grad_scaler(args, context.device)
    tracker = tracking.make_tracker(args, context, subspace_run.subspace_tag('psgd', args))
    tracker.log_basis(run.record.data['basis'])

    start = time.time()
    if args.epochs == 0:  # only the starting point (e.g. --train-start mean: SWA)
        test, test_bn, eval_seconds = run.evaluate(0)
        context.print(f'epoch 0 (the start, not trained): test loss {test[0]:.4f} acc {test[1]:.2f}%')
        run.record.add_epoch({'epoch': 0, 'test_loss': test[0], 'test_acc': test[1],
                              **({'test_loss_bn': test_bn[0], 'test_acc_bn': test_bn[1]} if test_bn else {}),
                              'seconds': eval_seconds, 'eval_seconds': eval_seconds})
    for epoch in range(args.epochs):
        t0 = time.time()
        lr = optimizer.param_groups[0]['lr']
        train = engine.train_epoch(  # all-reduces the d coordinates of every step's gradient
            model, run.train_loader, optimizer, context, amp=args.amp, scaler=scaler,
            before_step=optimizer.project_,  # before a GradScaler's inf check: the same on every rank
            log_step=tracker.step_hook(optimizer, epoch * len(run.train_loader)),
            desc=f'epoch {epoch + 1}', print_freq=args.print_freq)
        if not math.isfinite(train[0]):
            raise SystemExit(f'error: non-finite training loss in epoch {epoch + 1}; stopped '
                             f'(try a lower --lr)' if context.is_main else 1)
        scheduler.step()
        t1 = time.time()
        test, test_bn, eval_seconds = run.evaluate(epoch)  # all-reduces BN statistics and scores
        context.print(engine.epoch_line(epoch + 1, args.epochs, lr, train, test, t1 - t0, eval_seconds,
                                        test_bn=test_bn))
        skipped = utils.count_skipped(run.loaders, context.comm)  # an all-reduce (ImageFolder)
        run.record.add_epoch({'epoch': epoch + 1, 'lr': lr, **engine.score_row(train, test, test_bn),
                              'seconds': t1 - t0 + eval_seconds, 'train_seconds': t1 - t0,
                              'eval_seconds': eval_seconds}, skipped)
        tracker.log_epoch(run.record.data['epochs'][-1])
    run.finish(start)
    tracker.close()


if __name__ == '__main__':
    distributed.run_cli(main)
