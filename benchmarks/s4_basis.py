"""4. Basis extraction: dldr.dldr_basis streamed from memory-mapped snapshot files vs loading the
whole t x n trajectory and a numpy SVD (and sklearn PCA where it is installed).  Time and peak
memory are measured in fresh processes (``benchmarks.basis_worker``), one per method and run."""
import copy
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import torch

import dldr
from benchmarks.basis_worker import basis_method, sklearn_available
from benchmarks.common import MiB, paired_ratio, spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository: the workers run ``python -m benchmarks.basis_worker`` from there."""


def run_worker(method, traj_dir, args, mode, max_bytes=None, runs=1):
    """Run benchmarks.basis_worker in a fresh process; returns its JSON result (None on failure).

    Memory workers run with glibc's mmap threshold fixed at its default 128 KiB
    (MALLOC_MMAP_THRESHOLD_), so blocks freed by the method go back to the OS and the resident
    size follows live memory instead of what the allocator keeps cached."""
    cmd = [sys.executable, '-m', 'benchmarks.basis_worker', method, traj_dir, '--mode', mode,
           '--runs', str(runs), '--device', str(args.device), '--arch', args.arch,
           '--snapshots', str(args.snapshots), '--n-components', str(args.n_components),
           '--seed', str(args.seed)]
    if max_bytes is not None:
        cmd += ['--max-bytes', str(max_bytes)]
    env = dict(os.environ)
    if args.threads:
        cmd += ['--threads', str(args.threads)]
        for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
            env[var] = str(args.threads)
    if mode == 'memory':
        env['MALLOC_MMAP_THRESHOLD_'] = str(128 * 1024)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        print(f'  {mode} worker {method} failed:\n{proc.stderr[-2000:]}')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args, shared, report):
    t, d = args.snapshots, args.n_components
    model = copy.deepcopy(shared.model0)
    n = sum(p.numel() for p in dldr.trainable_params(model))
    traj_bytes = t * n * 4
    print(f'\n== 4. basis of t = {t} snapshots x n = {n} parameters -> d = {d} '
          f'(t*n*4 = {traj_bytes / MiB:.1f} MiB), from snapshot files; each method in fresh '
          f'subprocesses ==')
    methods = ['ours', 'svd']
    if sklearn_available():
        methods.append('pca')
    else:
        print('  sklearn not importable: PCA baseline skipped')
    folder = shared.traj_dir

    # Time: rounds of one subprocess per method (A B | B A ...), each 1 warm-up + 2 timed runs.
    rounds = args.basis_repeats
    times = {m: [] for m in methods}
    for r in range(rounds):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            res = run_worker(m, folder, args, 'time', runs=2)
            times[m].append(min(res['seconds']) if res else float('nan'))
    # Agreement of the subspaces (in this process, untimed).
    P = basis_method('ours', folder, t, d, model, args.device)().double().cpu()
    Vt = torch.from_numpy(np.ascontiguousarray(
        basis_method('svd', folder, t, d, model, args.device)())).double()
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
    mem = {'ours@256MiB': run_worker('ours', folder, args, 'memory'),
           f'ours@{args.basis_budget}MiB': run_worker('ours', folder, args, 'memory', budget)}
    for m in methods[1:]:
        mem[m] = run_worker(m, folder, args, 'memory')
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
