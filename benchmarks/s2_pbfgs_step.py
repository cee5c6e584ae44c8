"""2. P-BFGS step vs its floor at the same batch.  The floor is what any implementation of
Algorithm 2 must pay: one SGD step (forward + backward) plus, per line-search trial, one
train-mode forward without grad.  P comes from a short real SGD trajectory (a random P has a tiny
projected gradient, so every first trial is accepted and the comparison says nothing)."""
import copy
import statistics

import torch
import torch.nn.functional as F

import dldr
import utils
from benchmarks.common import (device_batches, interleave, local_context, ms, paired_ratio,
                               profile_variants, secs, spread, timed, train_steps)
from engine import EpochMeter, autocast, batch_closure


def pbfgs_bookkeeping(model0, P, device, steps=50):
    """Seconds per PBFGS.step spent by the optimizer itself: gradients are left in place and the
    closure returns a fixed loss (a lower one for the trial, so the first trial is accepted), so
    what is timed is the flat copies, projections, buffer saves/restores, BFGS update and syncs."""
    model = copy.deepcopy(model0)
    params = dldr.trainable_params(model)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = dldr.PBFGS(params, P, buffers=list(model.buffers()))
    loss = torch.tensor(1.0, device=device)
    lower = torch.tensor(0.0, device=device)

    def closure():
        return loss if torch.is_grad_enabled() else lower

    for _ in range(5):
        optimizer.step(closure)
    seconds, _ = timed(lambda: [optimizer.step(closure) for _ in range(steps)], device)
    return seconds / steps


def run(args, shared, report):
    b = args.pbfgs_batch_size
    amp = 'off' if args.amp == 'fp16' else args.amp  # P-BFGS refuses fp16 (train_pbfgs.py)
    print(f'\n== 2. P-BFGS step vs floor (batch {b}, d = {args.n_components}, '
          f'P from {args.pbfgs_basis}{", amp off: P-BFGS refuses fp16" if amp != args.amp else ""}) ==')
    device, k, model0 = args.device, args.pbfgs_steps, shared.model0
    pool = device_batches(shared.data, args, b, 4, args.seed + 3)
    model = copy.deepcopy(model0)  # = snapshot 0 (params_start): P-BFGS starts there
    params = dldr.trainable_params(model)
    if args.pbfgs_basis == 'trajectory':
        trajectory = utils.open_trajectory(shared.traj_dir, 0, args.snapshots, model)
        basis = dldr.dldr_basis(trajectory, args.n_components, device=device)
        P = basis.P
        ev = basis.explained_variance_ratio
        print(f'  basis of snapshots 0..{args.snapshots - 1}: explained variance top-1 {ev[0]:.3f}, '
              f'top-{args.n_components} {ev.sum():.3f}')
    else:
        P = dldr.random_basis(args.n_components, sum(p.numel() for p in params), args.seed,
                              device=device)
    optimizer = dldr.PBFGS(params, P, buffers=list(model.buffers()))
    sgd_model, fwd_model = copy.deepcopy(model0), copy.deepcopy(model0)
    sgd_opt = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    context = local_context(device)
    meter = EpochMeter(device)
    counter = {'i': 0}

    def next_batch():
        counter['i'] += 1
        return pool[counter['i'] % len(pool)]

    def pbfgs_steps():
        """k steps exactly as train_pbfgs.py (accumulate 1); returns the trials they made."""
        before = optimizer.stats['trials']
        for _ in range(k):
            closure = batch_closure(model, [next_batch()], optimizer, amp, meter)

            optimizer.step(closure)
        return optimizer.stats['trials'] - before

    def sgd_steps():
        return train_steps(sgd_model, [next_batch() for _ in range(k)], sgd_opt, context, amp=amp)

    def forwards():
        fwd_model.train()
        with torch.no_grad():
            for _ in range(k):
                x, y = next_batch()
                with autocast(device, amp):
                    loss = F.cross_entropy(fwd_model(x).float(), y)
        return loss

    # warm-up: the first P-BFGS steps from snapshot 0 (B = I) take many trials; skip 3 of them
    for _ in range(3):
        pbfgs_steps()
    timed(sgd_steps, device)
    timed(forwards, device)
    warm_trials = optimizer.reset_stats()
    variants = {'pbfgs': pbfgs_steps, 'sgd': sgd_steps, 'fwd': forwards}
    res = interleave(variants, args.pbfgs_repeats, device)
    stats = optimizer.reset_stats()
    profile_variants(variants, args, 2)
    pb, sg, fw = ([s / k for s in secs(res, name)] for name in ('pbfgs', 'sgd', 'fwd'))
    trials = [t / k for _, t in res['pbfgs']]
    floor = [s + t * f for s, t, f in zip(sg, trials, fw)]
    mean_trials = stats['trials'] / max(stats['steps'], 1)
    loss = meter.result().loss
    print(f'  {args.pbfgs_repeats} rounds x {k} steps; warm-up {warm_trials["steps"]} steps with '
          f'{warm_trials["trials"]} trials; timed: {stats["steps"]} steps, mean trials '
          f'{mean_trials:.2f} (per round {", ".join(f"{t:.1f}" for t in trials)}), '
          f'failed searches {stats["failed_searches"]}; mean train loss {loss:.3f}')
    print(f'  SGD step {spread(sg)}; train-mode no-grad forward {spread(fw)}')
    print(f'  P-BFGS step {spread(pb)}; floor {spread(floor)}')
    own = pbfgs_bookkeeping(model0, P, device)
    print(f'  P-BFGS bookkeeping alone (a closure that costs nothing, 1 trial): {ms(own)} per step '
          f'= {own / statistics.median(pb):.1%} of a step')
    report.add(f'P-BFGS step / floor (b{b}, {mean_trials:.2f} trials/step)',
               statistics.median(pb), statistics.median(floor), paired_ratio(pb, floor), '<=', 1.10,
               detail=dict(pbfgs_s=pb, sgd_s=sg, fwd_s=fw, trials=trials, stats=stats,
                           basis=args.pbfgs_basis))
