"""6. Data parallel on the CPU (gloo): the bytes a P-SGD step all-reduces (the d coordinates) vs
a DDP SGD step (the n-dimensional gradient), and the P-SGD step of 2 ranks vs 1 process at the
same global batch."""
import copy
import os
import time

import torch

import dldr
import models
import utils
from benchmarks.common import ms, train_steps
from tests.scaffold import CountingComm, spawn_local


def dist_steps(context, opts):
    """In each rank (spawned: module-level, importable): k P-SGD steps (d-vector all-reduce) and k
    DDP SGD steps on this rank's share of the same global batches; returns seconds per step and
    bytes all-reduced per step."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(opts['threads'])
    torch.manual_seed(0)
    model = models.get_model(opts['arch'], num_classes=10)
    data = utils.make_synthetic(n_train=opts['batch'] * 4, n_test=16)
    loader = utils.DeviceLoader(data.train_x, data.train_y, opts['batch'], data.mean, data.std,
                                context.device, train=True, generator=torch.Generator().manual_seed(1),
                                rank=context.rank, world_size=context.world_size)
    batches = list(loader)
    k = opts['steps']
    out = {}
    # P-SGD: no DDP wrapper, the d coordinates are all-reduced
    psgd_model = copy.deepcopy(model)
    params = dldr.trainable_params(psgd_model)
    # every rank draws the same P from the seed (as train_psgd.py's ranks share one basis)
    P = dldr.random_basis(opts['d'], sum(p.numel() for p in params), 0, device=context.device)
    comm = CountingComm(context.comm)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    step = lambda: dldr.project_grads_(params, P, comm)  # noqa: E731
    train_steps(psgd_model, batches[:1], opt, context, before_step=step)  # warm-up
    comm.sent.clear()
    t0 = time.perf_counter()
    for i in range(k):
        train_steps(psgd_model, [batches[i % len(batches)]], opt, context, before_step=step)
    out['psgd_s'] = (time.perf_counter() - t0) / k
    out['psgd_bytes'] = sum(comm.sent) / k
    # DDP SGD: DDP all-reduces the n-dimensional gradient (bytes counted by a comm hook)
    sent = []

    def counting_hook(state, bucket):
        sent.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(None, bucket)

    ddp = DistributedDataParallel(copy.deepcopy(model))
    ddp.register_comm_hook(None, counting_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    train_steps(ddp, batches[:1], opt, context)
    sent.clear()
    t0 = time.perf_counter()
    for i in range(k):
        train_steps(ddp, [batches[i % len(batches)]], opt, context)
    out['ddp_s'] = (time.perf_counter() - t0) / k
    out['ddp_bytes'] = sum(sent) / k
    out['n'] = sum(p.numel() for p in params)
    return out


def run(args, shared, report):
    if args.device.type != 'cpu':
        report.skip('data parallel (gloo, CPU)', 'run with --device cpu')
        return
    cpus = os.cpu_count() or 1
    opts = dict(arch=args.arch, batch=args.batch_size, d=args.n_components, steps=args.steps * 2)
    print(f'\n== 6. data parallel on the CPU (gloo): global batch {args.batch_size}, d = {args.n_components}; '
          f'1 process x {cpus} threads vs 2 processes x {max(1, cpus // 2)} thread(s) ==')
    one = spawn_local(dist_steps, 1, dict(opts, threads=cpus), timeout=600)[0]
    two = spawn_local(dist_steps, 2, dict(opts, threads=max(1, cpus // 2)), timeout=600)[0]
    n, d = two['n'], args.n_components
    print(f'  bytes all-reduced per step: P-SGD {two["psgd_bytes"]:.0f} (d * 4 = {d * 4}), DDP SGD '
          f'{two["ddp_bytes"]:.0f} (n * 4 = {n * 4})')
    print(f'  step time, 1 process: P-SGD {ms(one["psgd_s"])}, DDP SGD {ms(one["ddp_s"])}; '
          f'2 ranks: P-SGD {ms(two["psgd_s"])}, DDP SGD {ms(two["ddp_s"])}')
    report.add('bytes per step: P-SGD (d-vector) / DDP (n-vector)', two['psgd_bytes'], two['ddp_bytes'],
               two['psgd_bytes'] / two['ddp_bytes'], '<=', float(f'{d / n * 1.1:.3g}'), unit='B',
               detail=dict(one=one, two=two))
    report.add(f'P-SGD step: 2 gloo ranks / 1 process (global batch {args.batch_size})', two['psgd_s'],
               one['psgd_s'], two['psgd_s'] / one['psgd_s'], '<=', 1.0)
