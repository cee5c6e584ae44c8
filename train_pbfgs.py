"""P-BFGS: quasi-Newton training in the DLDR subspace of a sampled trajectory (paper Algorithm 2).

Extracts the top-d principal directions P of snapshots params_start..params_end-1 (written by
train_sgd.py), starts from snapshot params_start, and on each mini-batch updates a d x d
inverse-Hessian estimate by BFGS and steps along -B g~ with a backtracking Armijo line search
evaluated on the same mini-batch (in memory: weights and BN statistics are restored exactly).
Under torchrun each rank evaluates its share of every mini-batch; the ranks average the loss and
the d gradient coordinates (one all-reduce of d + 1 numbers per step) and every trial's loss (one
number), so all ranks take the same steps.

    python -u train_pbfgs.py --epochs 20 --datasets CIFAR10 --params_start 0 --params_end 81 \
        --batch-size 1024 --n_components 40 --arch=resnet20 --save-dir=save_resnet20 |& tee -a log
"""
import time

import dldr
import distributed
import engine
import flags
import subspace_run
from subspace_run import SubspaceRun
from errors import UserError


def parse_args(argv=None):
    p = flags.common_parser(
        'P-BFGS: quasi-Newton training in the d-dimensional DLDR subspace of a sampled trajectory '
        '(Armijo sigma 0.4, backtracking rho 0.4, at most --max-trials trials per step; when all '
        'trials fail no step is taken). No weight decay.', epochs=100)
    flags.add_subspace_args(p)
    g = p.add_argument_group('P-BFGS')
    g.add_argument('--accumulate', default=1, type=flags.positive_int, metavar='K',
                   help='average the gradients of K mini-batches per step (the line search uses '
                        'the last one)')
    g.add_argument('--max-trials', '--max_trials', default=20, type=flags.positive_int, metavar='N',
                   help='line-search trials per step (the reference: 20 on CIFAR, 30 on ImageNet)')
    g.add_argument('--curvature-pairs', '--curvature_pairs', default='consecutive',
                   choices=dldr.CURVATURE_PAIRS,
                   help='consecutive: y = difference of the gradients of two consecutive mini-batches '
                        '(the paper); same-batch: y from a second gradient on the same mini-batch '
                        'after the step (one more forward and backward pass per step; '
                        'docs/RESULTS.md compares them)')
    flags.add_ignored_lr(p)
    return flags.freeze(p, flags.finish_subspace_args(p.parse_args(argv)))


def main(argv=None):
    config = parse_args(argv)
    if config.amp == 'fp16':
        raise UserError('P-BFGS needs unscaled gradients and exact loss comparisons: use '
                        '--amp bf16 or off (not fp16 / --half)')
    refusal = subspace_run.KINDS[config.subspace].pbfgs_refusal
    if refusal:
        raise UserError(refusal)
    if config.evaluate:
        return SubspaceRun.evaluate_saved(config, 'pbfgs')
    run = SubspaceRun.start_run(config, 'pbfgs')
    optimizer = dldr.PBFGS(dldr.trainable_params(run.model), run.subspace,
                           buffers=list(run.model.buffers()), max_trials=config.max_trials,
                           alpha=config.alpha, gamma=config.gamma,
                           curvature_pairs=config.curvature_pairs, comm=run.context.comm)
    steps = -(-len(run.train_loader) // config.accumulate)
    for epoch in run.epochs():
        t0 = time.time()
        train = engine.train_epoch(  # all-reduces the loss, d coordinates and every trial's loss
            run.model, run.train_loader, optimizer, run.context, amp=config.amp,
            accumulate=config.accumulate, log_step=run.tracker.step_hook(first_step=epoch * steps),
            desc=f'epoch {epoch + 1}', print_freq=config.print_freq)
        train_seconds = time.time() - t0
        stats = optimizer.reset_stats()
        summary = dldr.PBFGS.summarise(stats)
        run.end_epoch(epoch + 1, train, run.evaluate(epoch), train_seconds=train_seconds,
                      note=f'  step {summary["mean_step_size"]:.3g}  trials/step '
                           f'{summary["mean_trials"]:.2f}  failed {stats["failed_searches"]}  skipped '
                           f'{stats["nonfinite_skips"]}  curvature skips {stats["curvature_skips"]}  '
                           f'loss after step {summary["own_batch_loss_after_step"]:.3f} (own batch) vs '
                           f'{summary["loss_before_step"]:.3f} (next)  gradient in subspace '
                           f'{summary["gradient_captured"]:.2g}  signal {stats["gradient_signal"]:.2g}',
                      **summary, **stats)
    run.finish()


if __name__ == '__main__':
    distributed.run_cli(main)
