"""P-BFGS: quasi-Newton training in the DLDR subspace of a sampled trajectory (paper Algorithm 2).

Extracts the top-d principal directions P of snapshots params_start..params_end-1 (written by
train_sgd.py), starts from snapshot params_start, and on each mini-batch updates a d x d
inverse-Hessian estimate by BFGS and steps along -B g~ with a backtracking Armijo line search
evaluated on the same mini-batch (in memory: weights and BN statistics are restored exactly).  Under torchrun each rank evaluates
its share of every mini-batch; the ranks average the loss and the d gradient coordinates (one
all-reduce of d + 1 numbers per step) and every trial's loss (one number), so all ranks take the
same steps.

    python -u train_pbfgs.py --epochs 20 --datasets CIFAR10 --params_start 0 --params_end 81 \
        --batch-size 1024 --n_components 40 --arch=resnet20 --save-dir=save_resnet20 |& tee -a log
"""
import time

import torch
import torch.nn.functional as F

import dldr
import distributed
import engine
import flags
import subspace_run
import tracking
import utils
from utils import UserError


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
    return flags.finish_subspace_args(p.parse_args(argv))


def groups_of(loader, k):
    """Consecutive lists of k batches (the last list may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def main(argv=None):
    args = parse_args(argv)
    if args.amp == 'fp16':
        raise UserError('P-BFGS needs unscaled gradients and exact loss comparisons: use '
                               '--amp bf16 or off (not fp16 / --half)')
    refusal = subspace_run.KINDS[args.subspace].pbfgs_refusal
    if refusal:
        raise UserError(refusal)
    if args.evaluate:
        return subspace_run.evaluate_saved(args, 'pbfgs')
    run = subspace_run.prepare(args, 'pbfgs')
    model, context, device = run.model, run.context, run.context.device
    optimizer = dldr.PBFGS(dldr.trainable_params(model), run.subspace, buffers=list(model.buffers()),
                           max_trials=args.max_trials, alpha=args.alpha, gamma=args.gamma,
                           curvature_pairs=args.curvature_pairs, comm=context.comm)
    tracker = tracking.make_tracker(args, context, subspace_run.subspace_tag('pbfgs', args))
    tracker.log_basis(run.record.data['basis'])

    start = time.time()
    steps_per_epoch = -(-len(run.train_loader) // args.accumulate)
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        meter = engine.EpochMeter(device)
        log_step = tracker.step_hook(first_step=epoch * steps_per_epoch)
        groups = groups_of(run.train_loader, args.accumulate)
        for i, group in enumerate(engine.progress(groups, steps_per_epoch, f'epoch {epoch + 1}',
                                                  args.print_freq, context.is_main)):
            *earlier, (x, y) = group
            gradients = 0  # the first gradient evaluation of a step is the one the meter counts

            def closure():
                nonlocal gradients
                if not torch.is_grad_enabled():  # a line-search trial: loss on the last batch
                    with engine.autocast(device, args.amp):
                        return F.cross_entropy(model(x).float(), y)
                gradients += 1
                count = gradients == 1  # not the same-batch curvature pair's second gradient
                optimizer.zero_grad(set_to_none=True)
                for xb, yb in earlier:
                    with engine.autocast(device, args.amp):
                        out = model(xb)
                        loss = F.cross_entropy(out.float(), yb)
                    (loss / len(group)).backward()
                    if count:
                        meter.update(loss, out, yb)
                with engine.autocast(device, args.amp):
                    out = model(x)
                    loss = F.cross_entropy(out.float(), y)
                (loss / len(group)).backward()
                if count:
                    meter.update(loss, out, y)
                return loss

            # all-reduces the loss, d coordinates and every trial's loss
            loss = optimizer.step(closure)  # (the mean over the ranks)
            if log_step is not None:
                log_step(i, loss)
        stats = optimizer.reset_stats()
        train = meter.result(context.comm)  # an all-reduce of the epoch's counts
        t1 = time.time()
        test, test_bn, eval_seconds = run.evaluate(epoch)  # all-reduces BN statistics and scores
        mean_trials = stats['trials'] / max(stats['steps'], 1)
        accepted = stats['steps'] - stats['failed_searches'] - stats['nonfinite_skips']
        mean_step = stats.pop('step_size_sum') / max(accepted, 1)
        # a step's gain on its own mini-batch, against what the next mini-batch finds
        own_batch_loss = stats.pop('accepted_loss_sum') / max(accepted, 1)
        evaluated = max(stats['steps'] - stats['nonfinite_skips'], 1)
        next_batch_loss = stats.pop('loss_sum') / evaluated
        captured = stats.pop('captured_sum') / evaluated
        context.print(engine.epoch_line(
            epoch + 1, args.epochs, None, train, test, t1 - t0,
            eval_seconds, f'  step {mean_step:.3g}  trials/step {mean_trials:.2f}  failed '
                          f'{stats["failed_searches"]}  skipped {stats["nonfinite_skips"]}  '
                          f'curvature skips {stats["curvature_skips"]}  loss after step '
                          f'{own_batch_loss:.3f} (own batch) vs {next_batch_loss:.3f} (next)  '
                          f'gradient in subspace {captured:.2g}  signal {stats["gradient_signal"]:.2g}',
            test_bn=test_bn))
        skipped = utils.count_skipped(run.loaders, context.comm)  # an all-reduce (ImageFolder)
        run.record.add_epoch({'epoch': epoch + 1, **engine.score_row(train, test, test_bn),
                              'seconds': t1 - t0 + eval_seconds, 'train_seconds': t1 - t0,
                              'eval_seconds': eval_seconds, 'mean_step_size': mean_step,
                              'mean_trials': mean_trials, 'own_batch_loss_after_step': own_batch_loss,
                              'loss_before_step': next_batch_loss, 'gradient_captured': captured,
                              **stats}, skipped)
        tracker.log_epoch(run.record.data['epochs'][-1])
    run.finish(start)
    tracker.close()


if __name__ == '__main__':
    distributed.run_cli(main)
