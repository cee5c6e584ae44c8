"""Regular training that samples the DLDR trajectory.

Writes <save-dir>/0.pt (the initialisation) before the first step and <save-dir>/k.pt after
epoch k: the snapshots from which train_psgd.py / train_pbfgs.py extract the subspace.  With
--snapshot-every N also every N iterations, all numbered consecutively; the metrics JSON maps
each snapshot number to its epoch and iteration (``snapshots``).

    python -u train_sgd.py --datasets CIFAR10 --lr 0.1 --arch=resnet20 --epochs=150 \
        --save-dir=save_resnet20 |& tee -a log_resnet20
"""
import time

import distributed
import engine
import flags
from sgd_run import SGDRun


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
    return flags.freeze(p, flags.finish_sgd_args(p.parse_args(argv), default_lr=p.get_default('lr')))


def main(argv=None):
    config = parse_args(argv)
    run = SGDRun.start_run(config)
    if config.evaluate:
        return run.evaluate_only()
    net = run.begin()  # snapshot 0; DistributedDataParallel under torchrun
    steps = len(run.train_loader)
    for epoch in run.epochs(run.start_epoch):
        t0 = time.time()
        lr = run.optimizer.param_groups[0]['lr']
        train = engine.train_epoch(  # DDP all-reduces the gradients
            net, run.train_loader, run.optimizer, run.context, amp=config.amp, scaler=run.scaler,
            after_step=run.begin_epoch(epoch), log_step=run.tracker.step_hook(run.optimizer, epoch * steps),
            desc=f'epoch {epoch + 1}', print_freq=config.print_freq)
        run.scheduler.step()
        train_seconds = time.time() - t0
        run.end_epoch(epoch + 1, train, run.evaluate(), lr=lr, train_seconds=train_seconds)
    run.finish()


if __name__ == '__main__':
    distributed.run_cli(main)
