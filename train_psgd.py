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
from subspace_run import SubspaceRun


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
    return flags.freeze(p, flags.finish_subspace_args(p.parse_args(argv)))


def main(argv=None):
    config = parse_args(argv)
    if config.evaluate:
        return SubspaceRun.evaluate_saved(config, 'psgd')
    run = SubspaceRun.start_run(config, 'psgd')
    # SGD with momentum on P^T P g (no weight decay); every rank projects its own gradient and
    # the ranks average the d coordinates
    optimizer = dldr.PSGD(dldr.trainable_params(run.model), run.subspace, lr=config.lr,
                          momentum=config.momentum, comm=run.context.comm)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config.lr_milestones, gamma=0.1)
    scaler = engine.grad_scaler(config, run.context.device)
    if config.epochs == 0:  # only the starting point (e.g. --train-start mean: SWA)
        run.record_start()
    for epoch in run.epochs():
        t0 = time.time()
        lr = optimizer.param_groups[0]['lr']
        train = engine.train_epoch(  # all-reduces the d coordinates of every step's gradient
            run.model, run.train_loader, optimizer, run.context, amp=config.amp, scaler=scaler,
            before_step=optimizer.project_,  # before a GradScaler's inf check: the same on every rank
            log_step=run.tracker.step_hook(optimizer, epoch * len(run.train_loader)),
            desc=f'epoch {epoch + 1}', print_freq=config.print_freq)
        if not math.isfinite(train.loss):
            raise SystemExit(f'error: non-finite training loss in epoch {epoch + 1}; stopped '
                             f'(try a lower --lr)' if run.context.is_main else 1)
        scheduler.step()
        train_seconds = time.time() - t0
        run.end_epoch(epoch + 1, train, run.evaluate(epoch), lr=lr, train_seconds=train_seconds)
    run.finish()


if __name__ == '__main__':
    distributed.run_cli(main)
