"""1. P-SGD step vs SGD step at the same batch: the cost of projecting every gradient onto a
d-dimensional subspace (dldr.project_grads_, two GEMVs on flat vectors) next to a training step."""
import copy
import statistics

import torch

import dldr
from benchmarks.common import (device_batches, interleave, make_scaler, paired_ratio, profile_variants, secs,
                               sgd_run, spread, timed)


def run(args, shared, report):
    print(f'\n== 1. P-SGD step vs SGD step (batch {args.batch_size}, d = {args.n_components}) ==')
    device, k = args.device, args.steps
    batches = device_batches(shared.data, args, args.batch_size, k, args.seed + 2)
    sgd_model, psgd_model = copy.deepcopy(shared.model0), copy.deepcopy(shared.model0)
    sgd_opt = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    params = dldr.trainable_params(psgd_model)
    n = sum(p.numel() for p in params)
    # any orthonormal P costs the same per step: a seeded random one needs no trajectory
    P = dldr.random_basis(args.n_components, n, args.seed, device=device)
    psgd_opt = torch.optim.SGD(params, lr=1.0, momentum=0.9, weight_decay=0.0)
    variants = {
        'sgd': sgd_run(sgd_model, sgd_opt, batches, args, make_scaler(args)),
        'psgd': sgd_run(psgd_model, psgd_opt, batches, args, make_scaler(args),
                        before_step=lambda: dldr.project_grads_(params, P)),
    }
    interleave(variants, 2, device)  # warm-up: 2 x k steps each
    res = interleave(variants, args.repeats, device)
    profile_variants(variants, args, 1)
    sgd, psgd = [s / k for s in secs(res, 'sgd')], [s / k for s in secs(res, 'psgd')]
    ratio = paired_ratio(psgd, sgd)
    # the projection alone, for the record
    for p in params:
        p.grad = torch.randn_like(p)
    proj = [timed(lambda: dldr.project_grads_(params, P), device)[0] for _ in range(5 + 2 * k)][5:]
    loss = res['psgd'][-1][1][0], res['sgd'][-1][1][0]
    print(f'  n = {n} parameters; {args.repeats} rounds x {k} steps each')
    print(f'  SGD step   {spread(sgd)}')
    print(f'  P-SGD step {spread(psgd)}   (project_grads_ alone {spread(proj)})')
    print(f'  last train loss P-SGD {loss[0]:.3f}, SGD {loss[1]:.3f}')
    report.add(f'P-SGD step / SGD step (b{args.batch_size}, d={args.n_components})',
               statistics.median(psgd), statistics.median(sgd), ratio, '<=', 1.05,
               detail=dict(sgd_s=sgd, psgd_s=psgd, project_s=proj, n=n))
