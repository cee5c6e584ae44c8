#!/usr/bin/env python3
"""Side-by-side performance ratios of this DLDR implementation on the current device.

A report, not a test: it always exits 0 and prints MISS next to a ratio that misses its target.
Absolute times are noise on shared machines; the ratios are what we report (docs/BENCHMARKS.md).

1. P-SGD step / SGD step at batch 128 (d = 40, random orthonormal P).          target <= 1.05
2. P-BFGS step / floor at batch 1024; floor = SGD step + (mean trials) x forward
   (train-mode forward, no grad), P from a short real SGD trajectory.           target <= 1.10
3. One SGD epoch through utils.DeviceLoader + engine.train_epoch
   (a) / the same epoch on pre-made batches already on the device              target <= 1.05
   (b) torchvision DataLoader (PIL + RandomCrop/Flip/ToTensor/Normalize) / ours target >= 1.25 CPU
                                                                                     (>= 1.5 CUDA)
4. Basis extraction dldr.dldr_basis from memory-mapped snapshot files (utils.open_trajectory)
   vs load + full numpy SVD of the centred t x n trajectory (and sklearn PCA if importable):
   time, and peak memory measured in a fresh subprocess per method.
5. Evaluation per image (engine.evaluate at the default evaluation batch) / training per image
   (engine.train_epoch at --batch-size), the two halves of a logged epoch.     target <= 0.45
6. Data parallel on the CPU (gloo, engine.spawn_local): bytes all-reduced per P-SGD step (the d
   coordinates) / per DDP SGD step (the n-dim gradient, counted by a comm hook)  target <= 1.1 d/n
   and the P-SGD step of 2 ranks / 1 process at the same global batch          target <= 1.0
7. ImageFolder loading (decode + augment of JPEG files, no model): utils.FolderLoader
   (ImageNet path) vs the reference's torchvision ImageFolder + RandomResizedCrop/Flip/ToTensor/
   Normalize DataLoader, same worker count: images per second; and the decode alone, PIL vs
   torchvision.io.decode_jpeg.                                                     target >= 1.0

Timing: warm-up first; torch.cuda.synchronize() around timed regions on CUDA only; the compared
variants are interleaved A B | B A | A B ... so drift and other tenants hit all of them; a ratio
is the median over rounds of the per-round ratio.

    python bench.py                       # default run (~4 min on a quiet 2-core CPU)
    python bench.py --quick               # smoke run (< 1 min on CPU; ratios too noisy to report)
    python bench.py --device cuda --amp bf16 --channels-last
"""
import argparse
import copy
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

import dldr
import engine
import models
import utils

MiB = 2**20


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    a('--arch', default='resnet20', choices=models.available_archs(), metavar='ARCH')
    a('--data', default='synthetic', choices=('synthetic', 'cifar10'),
      help='images: utils.make_synthetic (offline) or CIFAR-10 pickles under --data-dir')
    a('--data-dir', default='./data', help='parent of cifar-10-batches-py (with --data cifar10)')
    a('--batch-size', type=int, default=128, help='batch of the P-SGD/SGD steps and of the epoch')
    a('--pbfgs-batch-size', type=int, default=None, help='batch of the P-BFGS comparison (default 1024; 256 with --quick)')
    a('--steps', type=int, default=None, help='timed steps per variant per round (ratios 1 and 2)')
    a('--repeats', type=int, default=None, help='interleaved rounds of the P-SGD comparison (median taken)')
    a('--pbfgs-repeats', type=int, default=None, help='interleaved rounds of the P-BFGS comparison')
    a('--pbfgs-steps', type=int, default=None,
      help='timed steps per variant per round in the P-BFGS comparison (default 1 on CPU, --steps on CUDA)')
    a('--epoch-repeats', type=int, default=None, help='interleaved rounds of the epoch comparison')
    a('--n-components', type=int, default=40, help='d, subspace dimension')
    a('--snapshots', type=int, default=41, help='t, snapshots of the trajectory (> d)')
    a('--traj-steps', type=int, default=None,
      help='SGD steps between two snapshots of the trajectory (lr 0.1, batch --traj-batch-size)')
    a('--traj-batch-size', type=int, default=None,
      help='batch of the trajectory\'s SGD steps (default --batch-size; 32 with --quick)')
    a('--pbfgs-basis', default='trajectory', choices=('trajectory', 'random'),
      help='P of the P-BFGS comparison: from the short real SGD trajectory or random orthonormal')
    a('--epoch-images', type=int, default=None,
      help='images in the epoch comparison (default 5120 on CPU, 20480 on CUDA)')
    a('--workers', default=None,
      help='comma list of num_workers of the torchvision DataLoader baseline, one variant each '
           '(default on CUDA: the reference\'s 4, capped at the CPU count; on CPU: 0, the '
           'baseline\'s best when the model already uses every core, and min(4, CPUs))')
    a('--basis-budget', type=int, default=16,
      help='MiB: the small max_bytes of the streamed basis in the memory comparison '
           '(the default 256 MiB of the training scripts is measured too)')
    a('--threads', type=int, default=None,
      help='torch.set_num_threads (and BLAS threads of the basis subprocesses); default: torch\'s')
    a('--basis-repeats', type=int, default=None, help='rounds of basis-timing subprocesses')
    a('--amp', default='off', choices=('off', 'bf16', 'fp16'), help='autocast for ratios 1-3')
    a('--channels-last', action='store_true', help='channels_last model and batches')
    a('--quick', action='store_true', help='small smoke run (< 2 min on CPU)')
    a('--only', default='1,2,3,4,5,6,7', help='comma list of the comparisons to run')
    a('--json', default=None, metavar='PATH', help='also write the results as JSON')
    a('--profile', default='', help='comma list of comparisons (1-3) to profile after timing them')
    a('--profile-rows', type=int, default=15, help='rows of each profile table')
    a('--seed', type=int, default=0)
    a('--_basis-worker', dest='basis_worker', default=None, help=argparse.SUPPRESS)
    a('--_traj-dir', dest='traj_dir', default=None, help=argparse.SUPPRESS)
    a('--_max-bytes', dest='max_bytes', type=int, default=None, help=argparse.SUPPRESS)
    a('--_mode', dest='worker_mode', default='memory', help=argparse.SUPPRESS)
    a('--_runs', dest='worker_runs', type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = engine.pick_device(args.device)
    cuda = args.device.type == 'cuda'
    quick = args.quick
    defaults = dict(pbfgs_batch_size=256 if quick else 1024,
                    steps=2 if quick else (10 if cuda else 3),
                    repeats=3 if quick else 15,
                    pbfgs_repeats=3 if quick else (9 if cuda else 7),
                    traj_steps=1 if quick else 2,
                    traj_batch_size=32 if quick else args.batch_size,
                    epoch_images=1024 if quick else (20480 if cuda else 5120),
                    epoch_repeats=1 if quick else (5 if cuda else 3),
                    basis_repeats=1 if quick else 3,
                    workers=(str(min(4, os.cpu_count() or 1)) if cuda else
                             ','.join(sorted({'0', str(min(4, os.cpu_count() or 1))}))))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.pbfgs_steps is None:
        args.pbfgs_steps = args.steps if cuda else 1
    if args.n_components >= args.snapshots:
        p.error(f'--n-components ({args.n_components}) must be < --snapshots ({args.snapshots})')
    args.only = {int(s) for s in args.only.split(',') if s.strip()}
    args.profile = {int(s) for s in args.profile.split(',') if s.strip()}
    args.workers = [int(s) for s in str(args.workers).split(',') if s.strip()]
    return args


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------

def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, fn's result) of ``fn()``, synchronised on CUDA before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def interleave(variants, rounds, device):
    """Run every variant once per round, in the order A B | B A | A B ...; returns name -> list of
    (seconds, result) per round."""
    names = list(variants)
    results = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            results[name].append(timed(variants[name], device))
    return results


def secs(results, name):
    return [s for s, _ in results[name]]


def paired_ratio(num, den):
    """Median over rounds of num[r] / den[r]."""
    return statistics.median(a / b for a, b in zip(num, den))


def ms(x):
    return f'{1e3 * x:.1f} ms' if x < 10 else f'{x:.2f} s'


def spread(values):
    """'median (min..max)' of a list of seconds."""
    return f'{ms(statistics.median(values))} ({ms(min(values))}..{ms(max(values))})'


def profile_variants(variants, args, part):
    """With --profile PART: torch.profiler (and cProfile) over one call of each variant, printing
    where the time goes (device kernels on CUDA, operators on CPU, Python functions)."""
    if part not in args.profile:
        return
    import cProfile
    import io
    import pstats
    from torch.profiler import ProfilerActivity, profile
    cuda = args.device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name, fn in variants.items():
        with profile(activities=activities) as prof:
            wall, _ = timed(fn, args.device)
        events = prof.key_averages()
        line = f'  --- torch.profiler, one call of {name}: wall {ms(wall)}'
        if cuda:
            busy = sum(getattr(e, 'self_device_time_total', 0) for e in events) / 1e6
            line += f', GPU kernels busy {ms(busy)} ({busy / wall:.0%} of wall)'
        print(line)
        key = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
        print(events.table(sort_by=key, row_limit=args.profile_rows))
        profiler = cProfile.Profile()
        profiler.enable()
        timed(fn, args.device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(args.profile_rows)
        body = text.getvalue()
        print(f'  --- cProfile, one call of {name} (by own time):')
        print(body[body.find('   ncalls'):].rstrip())


# ---------------------------------------------------------------------------------------------
# Setup: device description, data, model
# ---------------------------------------------------------------------------------------------

def device_description(device):
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (f'{torch.cuda.get_device_name(index)} ({props.total_memory / 2**30:.0f} GiB, '
                f'{props.multi_processor_count} SMs), CUDA {torch.version.cuda}, '
                f'cuDNN {torch.backends.cudnn.version()}; host {cpu_model()}, {os.cpu_count()} CPUs')
    return f'{cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads'


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_images(args, n_train):
    """uint8 NCHW train images, labels, mean, std: CIFAR-10 or synthetic with >= n_train images."""
    if args.data == 'cifar10':
        data = utils.read_cifar(args.data_dir, 'CIFAR10')
        if len(data.train_y) < n_train:
            print(f'note: only {len(data.train_y)} CIFAR-10 training images (< {n_train} asked)')
    else:
        data = utils.make_synthetic(seed=args.seed, n_train=n_train, n_test=16)
    return data


def build_model(args):
    torch.manual_seed(args.seed)
    model = models.get_model(args.arch, num_classes=10, in_channels=3).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def device_batches(data, args, batch_size, count, seed):
    """``count`` augmented, normalised batches of ``batch_size`` made by utils.DeviceLoader (cycling
    over epochs if needed), resident on the device."""
    loader = utils.DeviceLoader(data.train_x, data.train_y, batch_size, data.mean, data.std,
                                args.device, train=True, generator=torch.Generator().manual_seed(seed),
                                channels_last=args.channels_last)
    batches = []
    while len(batches) < count:
        for x, y in loader:
            if len(y) == batch_size:
                batches.append((x, y))
            if len(batches) == count:
                break
    return batches


def make_scaler(args):
    if args.amp == 'fp16' and args.device.type == 'cuda':
        return torch.amp.GradScaler('cuda')
    return None


def sgd_run(model, optimizer, batches, args, scaler=None, before_step=None):
    """The training loop of train_sgd.py / train_psgd.py (engine.train_epoch) over ``batches``."""
    return lambda: engine.train_epoch(model, batches, optimizer, engine.Context(args.device), amp=args.amp,
                                     scaler=scaler, before_step=before_step)


# ---------------------------------------------------------------------------------------------
# A short real trajectory on disk (ratio 2's basis, ratio 4's input)
# ---------------------------------------------------------------------------------------------

def write_trajectory(model0, data, args, folder):
    """Snapshot 0 = model0, then ``--traj-steps`` SGD steps (lr 0.1, momentum 0.9, wd 1e-4) between
    snapshots, saved as state_dicts 0.pt .. (t-1).pt as train_sgd.py writes them."""
    model = copy.deepcopy(model0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = (args.snapshots - 1) * args.traj_steps
    batches = device_batches(data, args, args.traj_batch_size, steps, args.seed + 1)
    torch.save(model.state_dict(), utils.snapshot_path(folder, 0))
    losses = []
    for i in range(1, args.snapshots):
        chunk = batches[(i - 1) * args.traj_steps:i * args.traj_steps]
        losses.append(engine.train_epoch(model, chunk, optimizer, engine.Context(args.device), amp=args.amp)[0])
        torch.save(model.state_dict(), utils.snapshot_path(folder, i))
    return steps, losses


# ---------------------------------------------------------------------------------------------
# 1. P-SGD step vs SGD step
# ---------------------------------------------------------------------------------------------

def random_orthonormal_rows(d, n, device, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64)).Q
    return q.T.contiguous().float().to(device)


def bench_psgd(model0, data, args, report):
    print(f'\n== 1. P-SGD step vs SGD step (batch {args.batch_size}, d = {args.n_components}) ==')
    device, k = args.device, args.steps
    batches = device_batches(data, args, args.batch_size, k, args.seed + 2)
    sgd_model, psgd_model = copy.deepcopy(model0), copy.deepcopy(model0)
    sgd_opt = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    params = dldr.trainable_params(psgd_model)
    n = sum(p.numel() for p in params)
    P = random_orthonormal_rows(args.n_components, n, device, args.seed)
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


# ---------------------------------------------------------------------------------------------
# 2. P-BFGS step vs its floor
# ---------------------------------------------------------------------------------------------

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


def bench_pbfgs(model0, data, args, traj_dir, report):
    b = args.pbfgs_batch_size
    amp = 'off' if args.amp == 'fp16' else args.amp  # P-BFGS refuses fp16 (train_pbfgs.py)
    print(f'\n== 2. P-BFGS step vs floor (batch {b}, d = {args.n_components}, '
          f'P from {args.pbfgs_basis}{", amp off: P-BFGS refuses fp16" if amp != args.amp else ""}) ==')
    device, k = args.device, args.pbfgs_steps
    pool = device_batches(data, args, b, 4, args.seed + 3)
    model = copy.deepcopy(model0)  # = snapshot 0 (params_start): P-BFGS starts there
    params = dldr.trainable_params(model)
    if args.pbfgs_basis == 'trajectory':
        trajectory = utils.open_trajectory(traj_dir, 0, args.snapshots, model)
        basis = dldr.dldr_basis(trajectory, args.n_components, device=device)
        P = basis.P
        ev = basis.explained_variance_ratio
        print(f'  basis of snapshots 0..{args.snapshots - 1}: explained variance top-1 {ev[0]:.3f}, '
              f'top-{args.n_components} {ev.sum():.3f}')
    else:
        P = random_orthonormal_rows(args.n_components, sum(p.numel() for p in params), device, args.seed)
    optimizer = dldr.PBFGS(params, P, buffers=list(model.buffers()))
    sgd_model, fwd_model = copy.deepcopy(model0), copy.deepcopy(model0)
    sgd_opt = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    meter = engine.EpochMeter(device)
    counter = {'i': 0}

    def next_batch():
        counter['i'] += 1
        return pool[counter['i'] % len(pool)]

    def pbfgs_steps():
        """k steps exactly as train_pbfgs.py (accumulate 1); returns the trials they made."""
        before = optimizer.stats['trials']
        for _ in range(k):
            x, y = next_batch()

            def closure():
                if not torch.is_grad_enabled():
                    with engine.autocast(device, amp):
                        return F.cross_entropy(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                with engine.autocast(device, amp):
                    out = model(x)
                    loss = F.cross_entropy(out.float(), y)
                loss.backward()
                meter.update(loss, out, y)
                return loss

            optimizer.step(closure)
        return optimizer.stats['trials'] - before

    def sgd_steps():
        return engine.train_epoch(sgd_model, [next_batch() for _ in range(k)], sgd_opt, engine.Context(device), amp=amp)

    def forwards():
        fwd_model.train()
        with torch.no_grad():
            for _ in range(k):
                x, y = next_batch()
                with engine.autocast(device, amp):
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
    loss, _ = meter.result()
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


# ---------------------------------------------------------------------------------------------
# 3. One epoch: DeviceLoader vs torchvision DataLoader vs pre-made batches
# ---------------------------------------------------------------------------------------------

class PILDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's access pattern: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, x_nchw, y, transform):
        self.data = x_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


class ToDevice:
    """A DataLoader whose batches are moved to the device as the reference's loop does."""

    def __init__(self, loader, device, channels_last):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   y.to(self.device, non_blocking=True))


def bench_epoch(model0, data, args, report):
    import torchvision.transforms as T
    n, bs, device = min(args.epoch_images, len(data.train_y)), args.batch_size, args.device
    cuda = device.type == 'cuda'
    print(f'\n== 3. one SGD epoch of {n} images, batch {bs}: DeviceLoader vs torchvision DataLoader '
          f'(num_workers {", ".join(map(str, args.workers))}; pin_memory={cuda}) vs pre-made batches ==')
    x, y = data.train_x[:n], data.train_y[:n]
    ours_loader = utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                     generator=torch.Generator().manual_seed(args.seed),
                                     channels_last=args.channels_last)
    premade = list(utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed + 1),
                                      channels_last=args.channels_last))
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    dataset = PILDataset(x, y, transform)
    loaders = {'ours': ours_loader}
    for w in args.workers:
        loaders[f'dataloader_w{w}'] = ToDevice(torch.utils.data.DataLoader(
            dataset, batch_size=bs, shuffle=True, num_workers=w, pin_memory=cuda), device,
            args.channels_last)
    loaders['premade'] = premade

    def drain(loader):  # the data alone: iterate an epoch without the model
        def run():
            last = None
            for last in loader:
                pass
            return last
        return run

    data_only = interleave({k: drain(v) for k, v in loaders.items() if k != 'premade'}, 3, device)
    print('  data only, no model, per epoch: '
          + '; '.join(f'{k} {spread(secs(data_only, k))}' for k in data_only))
    runs = {}
    for name, loader in loaders.items():
        m = copy.deepcopy(model0)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = make_scaler(args)
        timed(sgd_run(m, opt, premade[:3], args, scaler), device)  # warm-up of this copy
        runs[name] = sgd_run(m, opt, loader, args, scaler)
    rounds = args.epoch_repeats
    if cuda and not args.quick:
        interleave(runs, 1, device)  # a whole warm-up epoch each (cheap on a GPU)
    res = interleave(runs, rounds, device)
    profile_variants(runs, args, 3)
    print(f'  {rounds} rounds; {len(premade)} steps per epoch')
    for name in runs:
        values = secs(res, name)
        print(f'  {name:16s} {spread(values)}  = {n / statistics.median(values):.0f} img/s')
    ours, pre = secs(res, 'ours'), secs(res, 'premade')
    report.add(f'epoch ({n} img): ours / pre-made batches', statistics.median(ours),
               statistics.median(pre), paired_ratio(ours, pre), '<=', 1.05,
               detail=dict(ours_s=ours, premade_s=pre))
    for w in args.workers:
        tv = secs(res, f'dataloader_w{w}')
        report.add(f'epoch ({n} img) speed-up: DataLoader(w={w}) / ours', statistics.median(ours),
                   statistics.median(tv), paired_ratio(tv, ours), '>=', 1.5 if cuda else 1.25,
                   detail=dict(dataloader_s=tv, ours_s=ours, workers=w))


# ---------------------------------------------------------------------------------------------
# 7. ImageFolder loading
# ---------------------------------------------------------------------------------------------

def write_jpeg_folder(root, n, classes=4, seed=0):
    """``n`` JPEG files of about ImageNet's mean size (~400x350, quality 90; smooth random content)
    in ``root/train/<class>/``."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        h, w = 300 + int(torch.randint(100, (1,), generator=g)), 350 + int(torch.randint(100, (1,), generator=g))
        low = torch.rand(1, 3, h // 16, w // 16, generator=g)
        img = F.interpolate(low, size=(h, w), mode='bilinear', align_corners=False)[0]
        img = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        folder = os.path.join(root, 'train', f'c{i % classes}')
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(
            os.path.join(folder, f'{i}.jpg'), quality=90)


def bench_image_folder(args, report, size=224, batch=64):
    """Images per second through our ImageFolder loader vs the reference's DataLoader."""
    import torchvision
    import torchvision.transforms as T
    n, device = (64 if args.quick else 512), args.device
    print(f'\n== 7. ImageFolder loading: {n} JPEGs (~400x350) -> {size}px crops, batch {batch}, '
          f'to {device}, no model: utils.FolderLoader vs torchvision ImageFolder DataLoader ==')
    with tempfile.TemporaryDirectory(prefix='dldr_bench_jpeg_') as root:
        write_jpeg_folder(root, n)
        _, paths, labels = utils.scan_image_folder(os.path.join(root, 'train'))
        train_t, _ = utils.folder_transforms(size)
        ref_t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(utils.IMAGENET_MEAN, utils.IMAGENET_STD)])
        reference = torchvision.datasets.ImageFolder(os.path.join(root, 'train'), ref_t)

        def decode_pil():
            from PIL import Image
            for p in paths:
                with Image.open(p) as im:
                    im.convert('RGB').load()

        def decode_tv():
            for p in paths:
                torchvision.io.decode_jpeg(torchvision.io.read_file(p))

        dec = interleave({'pil': decode_pil, 'decode_jpeg': decode_tv}, 3, torch.device('cpu'))
        pil, tv = secs(dec, 'pil'), secs(dec, 'decode_jpeg')
        print(f'  decode only, per image: PIL {ms(statistics.median(pil) / n)}, '
              f'torchvision.io.decode_jpeg {ms(statistics.median(tv) / n)}')
        report.add('JPEG decode speed-up: PIL / decode_jpeg (info)', statistics.median(tv),
                   statistics.median(pil), paired_ratio(pil, tv), '>=', 0.0)
        for w in args.workers:
            ours = utils.FolderLoader(utils.ImageFiles(paths, labels, train_t), batch,
                                      utils.IMAGENET_MEAN, utils.IMAGENET_STD, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed), workers=w)
            ref = ToDevice(torch.utils.data.DataLoader(reference, batch_size=batch, shuffle=True,
                                                       num_workers=w, pin_memory=device.type == 'cuda'),
                           device, False)

            def drain(loader):
                def run():
                    for x, _ in loader:
                        pass
                    sync(device)
                return run

            variants = {'ours': drain(ours), 'reference': drain(ref)}
            interleave(variants, 1, device)  # warm-up: worker start, file cache
            res = interleave(variants, args.epoch_repeats + 2, device)
            o, r = secs(res, 'ours'), secs(res, 'reference')
            print(f'  workers {w}: ours {spread(o)} = {n / statistics.median(o):.0f} img/s; reference '
                  f'{spread(r)} = {n / statistics.median(r):.0f} img/s')
            report.add(f'ImageFolder img/s (w={w}): ours / reference', statistics.median(o),
                       statistics.median(r), paired_ratio(r, o), '>=', 1.0,
                       detail=dict(ours_s=o, reference_s=r, images=n, workers=w))


# ---------------------------------------------------------------------------------------------
# 4. Basis extraction
# ---------------------------------------------------------------------------------------------

def param_names(model):
    return [name for name, p in model.named_parameters() if p.requires_grad]


def load_trajectory_array(folder, t, names):
    """The reference's path: load every snapshot file whole into one t x n float32 array."""
    rows = None
    for i in range(t):
        state = utils.strip_module_prefix(
            torch.load(utils.snapshot_path(folder, i), map_location='cpu', weights_only=True))
        row = torch.cat([state[name].reshape(-1).float() for name in names]).numpy()
        if rows is None:
            rows = np.empty((t, row.size), dtype=np.float32)
        rows[i] = row
    return rows


def basis_method(method, folder, args, model, max_bytes=None):
    """A callable computing the d x n basis by ``method`` from the snapshot files."""
    t, d = args.snapshots, args.n_components
    if method == 'ours':
        def run():
            trajectory = utils.open_trajectory(folder, 0, t, model)
            return dldr.dldr_basis(trajectory, d, device=args.device, max_bytes=max_bytes).P
    elif method == 'svd':
        names = param_names(model)

        def run():
            w = load_trajectory_array(folder, t, names)
            w -= w.mean(axis=0, keepdims=True)
            return np.linalg.svd(w, full_matrices=False)[2][:d]
    elif method == 'pca':
        from sklearn.decomposition import PCA
        names = param_names(model)

        def run():
            return PCA(n_components=d).fit(load_trajectory_array(folder, t, names)).components_
    else:
        raise ValueError(method)
    return run


def _anon_rss():
    """Resident anonymous memory of this process in bytes (statm: resident - file-backed), so the
    memory-mapped snapshot pages, which the kernel can drop at will, are not counted."""
    with open('/proc/self/statm') as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf('SC_PAGE_SIZE')


class PeakSampler:
    """Samples _anon_rss() every 0.5 ms in a thread (torch and LAPACK release the GIL)."""

    def __enter__(self):
        self.base = self.peak = _anon_rss()
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self):
        while not self.stop:
            self.peak = max(self.peak, _anon_rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, _anon_rss())

    @property
    def growth(self):
        return self.peak - self.base


def basis_worker(args):
    """Subprocess entry: one method in a fresh process.  --_mode memory: one run under the peak
    sampler (and CUDA peak stats); --_mode time: one warm-up run, then --_runs timed runs.
    Prints one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    run = basis_method(args.basis_worker, args.traj_dir, args, model, args.max_bytes)
    cuda = args.device.type == 'cuda'
    out = dict(method=args.basis_worker, max_bytes=args.max_bytes)
    if args.worker_mode == 'time':
        timed(run, args.device)
        out['seconds'] = [timed(run, args.device)[0] for _ in range(args.worker_runs)]
        print(json.dumps(out))
        return
    if cuda:  # cuBLAS/cuSOLVER workspaces (32 MiB+ on Hopper) are per-process, not the method's
        a = torch.randn(64, 64, dtype=torch.float64, device=args.device)
        spd = a @ a.T + 64 * torch.eye(64, dtype=torch.float64, device=args.device)
        torch.linalg.solve_triangular(torch.linalg.cholesky(spd), a, upper=False)
        torch.mv(a.float(), a[0].float()), a.float() @ a.float()
        del a, spd
    gc.collect()
    if cuda:
        sync(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        cuda_base = torch.cuda.memory_allocated(args.device)
    with PeakSampler() as sampler:
        seconds, result = timed(run, args.device)
    out.update(host_peak=sampler.growth, seconds=seconds, shape=list(result.shape))
    if cuda:
        out['device_peak'] = torch.cuda.max_memory_allocated(args.device) - cuda_base
    print(json.dumps(out))


def run_worker(method, folder, args, mode, max_bytes=None, runs=1):
    """Run basis_worker in a fresh subprocess; returns its JSON result (None on failure).

    Memory workers run with glibc's mmap threshold fixed at its default 128 KiB
    (MALLOC_MMAP_THRESHOLD_), so blocks freed by the method go back to the OS and the resident
    size follows live memory instead of what the allocator keeps cached."""
    cmd = [sys.executable, os.path.abspath(__file__), '--_basis-worker', method, '--_traj-dir', folder,
           '--_mode', mode, '--_runs', str(runs), '--device', str(args.device), '--arch', args.arch,
           '--snapshots', str(args.snapshots), '--n-components', str(args.n_components),
           '--seed', str(args.seed)]
    if max_bytes is not None:
        cmd += ['--_max-bytes', str(max_bytes)]
    env = dict(os.environ)
    if args.threads:
        cmd += ['--threads', str(args.threads)]
        for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
            env[var] = str(args.threads)
    if mode == 'memory':
        env['MALLOC_MMAP_THRESHOLD_'] = str(128 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    if proc.returncode != 0:
        print(f'  {mode} worker {method} failed:\n{proc.stderr[-2000:]}')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_basis(model0, args, traj_dir, report):
    t, d = args.snapshots, args.n_components
    model = copy.deepcopy(model0)
    n = sum(p.numel() for p in dldr.trainable_params(model))
    traj_bytes = t * n * 4
    print(f'\n== 4. basis of t = {t} snapshots x n = {n} parameters -> d = {d} '
          f'(t*n*4 = {traj_bytes / MiB:.1f} MiB), from snapshot files; each method in fresh '
          f'subprocesses ==')
    methods = ['ours', 'svd']
    if importlib.util.find_spec('sklearn') is not None:
        methods.append('pca')
    else:
        print('  sklearn not importable: PCA baseline skipped')

    # Time: rounds of one subprocess per method (A B | B A ...), each 1 warm-up + 2 timed runs.
    rounds = args.basis_repeats
    times = {m: [] for m in methods}
    for r in range(rounds):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            res = run_worker(m, traj_dir, args, 'time', runs=2)
            times[m].append(min(res['seconds']) if res else float('nan'))
    # Agreement of the subspaces (in this process, untimed).
    P = basis_method('ours', traj_dir, args, model)().double().cpu()
    Vt = torch.from_numpy(np.ascontiguousarray(basis_method('svd', traj_dir, args, model)())).double()
    overlap = float((P @ Vt.T).square().sum() / d)
    print(f'  {rounds} rounds; per subprocess the best of 2 timed runs after 1 warm-up')
    print(f'  ours (utils.open_trajectory + dldr.dldr_basis, 256 MiB budget, on {args.device}) '
          f'{spread(times["ours"])}')
    print(f'  load whole trajectory + numpy SVD {spread(times["svd"])}')
    if 'pca' in methods:
        print(f'  load whole trajectory + sklearn PCA {spread(times["pca"])}')
    print(f'  subspace agreement ||P_ours V_svd^T||_F^2 / d = {overlap:.6f} (1 = same subspace)')
    report.add(f'basis time (t={t}): ours / numpy SVD', statistics.median(times['ours']),
               statistics.median(times['svd']), paired_ratio(times['ours'], times['svd']), '<=', 1.0,
               detail=dict(ours_s=times['ours'], svd_s=times['svd'], overlap=overlap))
    if 'pca' in methods:
        report.add(f'basis time (t={t}): ours / sklearn PCA', statistics.median(times['ours']),
                   statistics.median(times['pca']), paired_ratio(times['ours'], times['pca']), '<=',
                   1.0, detail=dict(pca_s=times['pca']))
    else:
        report.skip(f'basis time (t={t}): ours / sklearn PCA', 'sklearn not importable')

    # Peak memory, each method in a fresh subprocess.
    budget = args.basis_budget * MiB
    mem = {'ours@256MiB': run_worker('ours', traj_dir, args, 'memory'),
           f'ours@{args.basis_budget}MiB': run_worker('ours', traj_dir, args, 'memory', budget)}
    for m in methods[1:]:
        mem[m] = run_worker(m, traj_dir, args, 'memory')
    cuda = args.device.type == 'cuda'
    print(f'  peak memory growth (P itself is d*n*4 = {d * n * 4 / MiB:.1f} MiB):')
    for name, m in mem.items():
        if m is None:
            continue
        line = f'  {name:12s} host anon RSS +{m["host_peak"] / MiB:7.1f} MiB'
        if 'device_peak' in m and name.startswith('ours'):
            line += f', {args.device} allocated +{m["device_peak"] / MiB:7.1f} MiB'
        print(line)

    def peak(m):  # ours on CUDA: device memory; everything else: host memory
        return m['device_peak'] if cuda and m['method'] == 'ours' else m['host_peak']

    where = 'device' if cuda else 'host'
    ours256, small = mem['ours@256MiB'], mem[f'ours@{args.basis_budget}MiB']
    if ours256 and mem['svd']:
        report.add(f'basis peak MiB ({where}): ours(256 MiB budget) / numpy SVD (host)',
                   peak(ours256) / MiB, peak(mem['svd']) / MiB, peak(ours256) / peak(mem['svd']),
                   '<=', 1.0, unit='MiB', detail=dict(mem=mem))
    if ours256:
        report.add(f'basis peak MiB ({where}): ours(256 MiB budget) / t*n*4', peak(ours256) / MiB,
                   traj_bytes / MiB, peak(ours256) / traj_bytes, '<=',
                   round((d * n * 4 + 256 * MiB) / traj_bytes, 2), unit='MiB')
    if small:
        bound = (d * n * 4 + budget) / traj_bytes  # P itself + the documented working budget
        report.add(f'basis peak MiB ({where}): ours({args.basis_budget} MiB budget) / t*n*4',
                   peak(small) / MiB, traj_bytes / MiB, peak(small) / traj_bytes, '<=',
                   round(bound, 2), unit='MiB')


# ---------------------------------------------------------------------------------------------
# 5. Evaluation vs training, per image
# ---------------------------------------------------------------------------------------------

def bench_eval(model0, data, args, report):
    device, bs = args.device, args.batch_size
    n = min(args.epoch_images, len(data.train_y))
    eval_bs = utils.eval_batch_size(argparse.Namespace(eval_batch_size=None), device)
    print(f'\n== 5. evaluation vs training per image ({n} images; training batch {bs}, evaluation '
          f'batch {eval_bs} = the default here, and 1024 = the previous default) ==')
    x, y = data.train_x[:n], data.train_y[:n]
    context = engine.Context(device)
    model = copy.deepcopy(model0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_loader = utils.DeviceLoader(x, y, bs, data.mean, data.std, device, train=True,
                                      generator=torch.Generator().manual_seed(args.seed),
                                      channels_last=args.channels_last)
    evals = {b: utils.DeviceLoader(x, y, b, data.mean, data.std, device, train=False,
                                   channels_last=args.channels_last) for b in sorted({eval_bs, 1024})}
    variants = {'train': lambda: engine.train_epoch(model, train_loader, opt, context, amp=args.amp)}
    for b, loader in evals.items():
        variants[f'eval_b{b}'] = lambda loader=loader: engine.evaluate(model, loader, context, args.amp)
    interleave(variants, 1, device)  # warm-up
    res = interleave(variants, args.epoch_repeats, device)
    per_image = {k: [s / n for s in secs(res, k)] for k in variants}
    for k, v in per_image.items():
        print(f'  {k:10s} {1e3 * statistics.median(v):.3f} ms per image')
    report.add(f'eval / train per image (eval batch {eval_bs})', statistics.median(per_image[f'eval_b{eval_bs}']),
               statistics.median(per_image['train']),
               paired_ratio(per_image[f'eval_b{eval_bs}'], per_image['train']), '<=', 0.45,
               detail=per_image)
    if eval_bs != 1024:
        print(f'  (the previous default, batch 1024: {paired_ratio(per_image["eval_b1024"], per_image["train"]):.3f} '
              f'of a training image)')


# ---------------------------------------------------------------------------------------------
# 6. Data parallel: bytes per step, 2 gloo ranks vs 1 process
# ---------------------------------------------------------------------------------------------

class _CountingComm(dldr.Comm):
    """Forwards to ``inner``, logging the bytes of every all-reduce."""

    def __init__(self, inner):
        self.inner, self.rank, self.world_size, self.sent = inner, inner.rank, inner.world_size, []

    def all_reduce_(self, tensor, op='mean'):
        self.sent.append(tensor.numel() * tensor.element_size())
        return self.inner.all_reduce_(tensor, op)


def _dist_steps(context, opts):
    """In each rank: k P-SGD steps (d-vector all-reduce) and k DDP SGD steps on this rank's share
    of the same global batches; returns seconds per step and bytes all-reduced per step."""
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
    subspace = dldr.DenseSubspace(random_orthonormal_rows(opts['d'], sum(p.numel() for p in params),
                                                          context.device, 0))
    comm = _CountingComm(context.comm)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    step = lambda: dldr.project_grads_(params, subspace, comm)  # noqa: E731
    engine.train_epoch(psgd_model, batches[:1], opt, context, before_step=step)  # warm-up
    comm.sent.clear()
    t0 = time.perf_counter()
    for i in range(k):
        engine.train_epoch(psgd_model, [batches[i % len(batches)]], opt, context, before_step=step)
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
    engine.train_epoch(ddp, batches[:1], opt, context)
    sent.clear()
    t0 = time.perf_counter()
    for i in range(k):
        engine.train_epoch(ddp, [batches[i % len(batches)]], opt, context)
    out['ddp_s'] = (time.perf_counter() - t0) / k
    out['ddp_bytes'] = sum(sent) / k
    out['n'] = sum(p.numel() for p in params)
    return out


def bench_distributed(args, report):
    if args.device.type != 'cpu':
        report.skip('data parallel (gloo, CPU)', 'run with --device cpu')
        return
    cpus = os.cpu_count() or 1
    opts = dict(arch=args.arch, batch=args.batch_size, d=args.n_components, steps=args.steps * 2)
    print(f'\n== 6. data parallel on the CPU (gloo): global batch {args.batch_size}, d = {args.n_components}; '
          f'1 process x {cpus} threads vs 2 processes x {max(1, cpus // 2)} thread(s) ==')
    one = engine.spawn_local(_dist_steps, 1, dict(opts, threads=cpus), timeout=600)[0]
    two = engine.spawn_local(_dist_steps, 2, dict(opts, threads=max(1, cpus // 2)), timeout=600)[0]
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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.rows = []

    def add(self, metric, ours, baseline, ratio, op, target, unit='s', detail=None):
        ok = ratio <= target if op == '<=' else ratio >= target
        self.rows.append(dict(metric=metric, ours=ours, baseline=baseline, ratio=ratio,
                              target=f'{op} {target}', ok='ok' if ok else 'MISS', unit=unit,
                              detail=detail or {}))

    def skip(self, metric, why):
        self.rows.append(dict(metric=metric, ours=None, baseline=None, ratio=None, target='-',
                              ok=f'SKIP ({why})', unit='', detail={}))

    @staticmethod
    def _fmt(value, unit):
        if value is None:
            return '-'
        if unit == 'B':
            return f'{value:.0f} B'
        return f'{value:.1f}' if unit == 'MiB' else ms(value)

    def table(self):
        head = ['metric', 'ours', 'baseline', 'ratio', 'target', 'ok?']
        body = [[r['metric'], self._fmt(r['ours'], r['unit']), self._fmt(r['baseline'], r['unit']),
                 '-' if r['ratio'] is None else f'{r["ratio"]:.3g}' if r['ratio'] < 0.01 else f'{r["ratio"]:.3f}', r['target'], r['ok']]
                for r in self.rows]
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * len(head)) + '|']
        lines += ['| ' + ' | '.join(row) + ' |' for row in body]
        return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.basis_worker:
        basis_worker(args)
        return
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print('command: python ' + shlex.join(sys.argv))
    print(f'device:  {device} = {device_description(device)}')
    print(f'torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}; '
          f'arch {args.arch}, data {args.data}, amp {args.amp}, channels_last {args.channels_last}'
          f'{", QUICK" if args.quick else ""}')
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'load average at start: {load:.2f} on {os.cpu_count()} CPUs'
          + ('  (busy machine: CPU timings will be noisy; on CPU try --threads 1)'
             if device.type == 'cpu' and load > 0.5 * (os.cpu_count() or 1) else ''))
    print(f'sizes: batch {args.batch_size} ({args.repeats} rounds x {args.steps} steps), P-BFGS batch '
          f'{args.pbfgs_batch_size} ({args.pbfgs_repeats} rounds x {args.pbfgs_steps} steps), d '
          f'{args.n_components}, t {args.snapshots} ({args.traj_steps} steps of batch '
          f'{args.traj_batch_size} apart), epoch {args.epoch_images} images ({args.epoch_repeats} '
          f'rounds), DataLoader workers {args.workers}, basis timing rounds {args.basis_repeats}')
    start = time.perf_counter()
    need = max(args.epoch_images, 4 * args.pbfgs_batch_size, args.batch_size * 4)
    data = load_images(args, need)
    model0 = build_model(args)
    report = Report()
    with tempfile.TemporaryDirectory(prefix='dldr_bench_') as traj_dir:
        if args.only & {2, 4}:
            t0 = time.perf_counter()
            steps, losses = write_trajectory(model0, data, args, traj_dir)
            print(f'\ntrajectory: {args.snapshots} snapshots, {steps} SGD steps (batch {args.traj_batch_size}), '
                  f'train loss {losses[0]:.3f} -> {losses[-1]:.3f}, {time.perf_counter() - t0:.1f} s')
        for part, fn in ((1, lambda: bench_psgd(model0, data, args, report)),
                         (2, lambda: bench_pbfgs(model0, data, args, traj_dir, report)),
                         (3, lambda: bench_epoch(model0, data, args, report)),
                         (4, lambda: bench_basis(model0, args, traj_dir, report)),
                         (5, lambda: bench_eval(model0, data, args, report)),
                         (6, lambda: bench_distributed(args, report)),
                         (7, lambda: bench_image_folder(args, report))):
            if part in args.only:
                gc.collect()
                t0 = time.perf_counter()
                fn()
                print(f'  ({time.perf_counter() - t0:.0f} s)', flush=True)
    print(f'\n{report.table()}')
    misses = [r['metric'] for r in report.rows if r['ok'] == 'MISS']
    print(f'\n{"MISS: " + "; ".join(misses) if misses else "all targets met"}  '
          f'(total {time.perf_counter() - start:.0f} s; load average at end '
          f'{os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"):.2f})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(command=sys.argv, device=device_description(device), rows=report.rows),
                      f, indent=1, default=str)


if __name__ == '__main__':
    engine.run_cli(main)
