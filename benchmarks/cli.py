"""The command line of the benchmarks: flags, the common set-up, the comparisons in order 1..9,
the table.  ``python bench.py ...`` and ``python -m benchmarks ...`` both end in :func:`run`."""
import argparse
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

import benchmarks
import models
from benchmarks import (s1_psgd_step, s2_pbfgs_step, s3_epoch, s4_basis, s5_eval, s6_distributed,
                        s7_imagefolder, s8_basis_storage, s9_compile)
from benchmarks.common import Report, build_model, device_description, load_images, write_trajectory
from distributed import pick_device, run_cli

SECTIONS = (s1_psgd_step, s2_pbfgs_step, s3_epoch, s4_basis, s5_eval, s6_distributed, s7_imagefolder,
            s8_basis_storage, s9_compile)
"""The comparisons; --only N runs SECTIONS[N - 1]."""

DEFAULT_SECTIONS = tuple(range(1, len(SECTIONS)))
"""The comparisons a run without --only makes: all but 9 (torch.compile), whose cold compiles
would more than double the default run; ``--only 9`` runs it."""

NEED_TRAJECTORY = frozenset({2, 4})
"""The comparisons that read the short real trajectory (P-BFGS's basis, the basis extraction)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='bench.py', description=benchmarks.__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    a('--arch', default='resnet20', choices=models.available_archs(), metavar='ARCH')
    a('--data', default='synthetic', choices=('synthetic', 'cifar10'),
      help='images: utils.make_synthetic (offline) or CIFAR-10 pickles under --data-dir')
    a('--data-dir', default='./data', help='parent of cifar-10-batches-py (with --data cifar10)')
    a('--batch-size', type=int, default=128, help='batch of the P-SGD/SGD steps and of the epoch')
    a('--pbfgs-batch-size', type=int, default=None,
      help='batch of the P-BFGS comparison (default 1024; 256 with --quick)')
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
    a('--quick', action='store_true', help='small smoke run (ratios too noisy to report)')
    a('--only', default=','.join(str(i) for i in DEFAULT_SECTIONS),
      help='comma list of the comparisons to run (9, torch.compile, only when named: its cold '
           'compiles take minutes)')
    a('--json', default=None, metavar='PATH', help='also write the results as JSON')
    a('--profile', default='', help='comma list of comparisons (1-3) to profile after timing them')
    a('--profile-rows', type=int, default=15, help='rows of each profile table')
    a('--seed', type=int, default=0)
    args = p.parse_args(argv)
    args.device = pick_device(args.device)
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
    if not args.only <= set(range(1, len(SECTIONS) + 1)):
        p.error(f'--only: comparisons are numbered 1..{len(SECTIONS)}')
    args.profile = {int(s) for s in args.profile.split(',') if s.strip()}
    args.workers = [int(s) for s in str(args.workers).split(',') if s.strip()]
    return args


def load_average():
    return os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print('command: python ' + shlex.join(sys.argv))
    print(f'device:  {device} = {device_description(device)}')
    print(f'torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}; '
          f'arch {args.arch}, data {args.data}, amp {args.amp}, channels_last {args.channels_last}'
          f'{", QUICK" if args.quick else ""}')
    load = load_average()
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
    shared = SimpleNamespace(data=load_images(args, need),
                             model0=build_model(args.arch, device, args.seed, args.channels_last))
    report = Report()
    with tempfile.TemporaryDirectory(prefix='dldr_bench_') as traj_dir:
        shared.traj_dir = traj_dir
        if args.only & NEED_TRAJECTORY:
            t0 = time.perf_counter()
            steps, losses = write_trajectory(shared.model0, shared.data, args, traj_dir)
            print(f'\ntrajectory: {args.snapshots} snapshots, {steps} SGD steps (batch {args.traj_batch_size}), '
                  f'train loss {losses[0]:.3f} -> {losses[-1]:.3f}, {time.perf_counter() - t0:.1f} s')
        for part, section in enumerate(SECTIONS, start=1):
            if part in args.only:
                gc.collect()  # the previous comparison's models and batches do not crowd this one
                t0 = time.perf_counter()
                section.run(args, shared, report)
                print(f'  ({time.perf_counter() - t0:.0f} s)', flush=True)
    print(f'\n{report.table()}')
    misses = report.misses()
    print(f'\n{"MISS: " + "; ".join(misses) if misses else "all targets met"}  '
          f'(total {time.perf_counter() - start:.0f} s; load average at end {load_average():.2f})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(command=sys.argv, device=device_description(device), rows=report.rows),
                      f, indent=1, default=str)


def run(argv=None):
    """The entry point: :func:`main` with the project's handling of bad input (one error line)."""
    run_cli(lambda: main(argv))
