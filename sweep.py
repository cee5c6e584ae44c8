"""Dimension sweep: P-SGD in subspaces of several kinds, dimensions d and seeds, from one SGD
trajectory, summarised as final accuracy per (kind, d) and the threshold training dimension.

    python sweep.py --save-dir save_resnet20 --kinds dldr random fastfood --dims 5 10 20 40 \
        --seeds 1 2 3 -- --datasets CIFAR10 --arch resnet20 --params_start 0 --params_end 81 --epochs 10

Every flag after ``--`` (and every flag this script does not know) goes to train_psgd.py, which
runs once per (kind, d, seed) as a subprocess writing into --save-dir; a run whose metrics JSON
is already there is reused, so an interrupted sweep resumes.  The seed is --subspace-seed: it
changes the random and fastfood subspaces only, so dldr and twa (deterministic given the
trajectory) run once per d, with the first seed.  Dimensions a kind cannot have (dldr: d >= t,
twa: d > t, t = the number of snapshots) are skipped.

The threshold training dimension (Larsen et al., ICLR 2022) of a kind is the smallest swept d at
which at least a fraction --success of the seeds reach the target accuracy, --target times the
final test accuracy of the SGD run (metrics_sgd.json of the trajectory's folder).  The table is
printed as markdown and written to sweep.md and sweep.json in --save-dir.
"""
import argparse
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np

import distributed
import flags
import metrics
import subspace_run
import tracking
import train_psgd
import utils
from errors import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.9  # --target's default: the threshold d reaches 90 % of SGD's final accuracy


def parse_args(argv=None):
    p = flags.Parser(description=__doc__.split('\n\n')[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      epilog='Every other flag (e.g. after --) is passed on to train_psgd.py.')
    p.add_argument('--save-dir', '--save_dir', required=True, metavar='DIR',
                   help='folder of the SGD trajectory (unless --pretrain-dir is passed on) and of '
                        'the sweep\'s runs, sweep.md and sweep.json')
    p.add_argument('--kinds', nargs='+', default=['dldr', 'random'], choices=tuple(subspace_run.KINDS),
                   help='subspace kinds')
    p.add_argument('--dims', nargs='+', type=flags.positive_int, required=True, metavar='D',
                   help='subspace dimensions')
    p.add_argument('--seeds', nargs='+', type=flags.seed, default=[1, 2, 3], metavar='S',
                   help='--subspace-seed values (random, fastfood; dldr and twa use the first)')
    p.add_argument('--target', type=flags.positive_float, default=TARGET, metavar='F',
                   help='target accuracy as a fraction of the SGD run\'s final test accuracy')
    p.add_argument('--success', type=flags.fraction, default=1.0, metavar='P',
                   help='fraction of the seeds that must reach the target at the threshold d')
    tracking.add_tracking_args(p)  # passed on to every run (each its own TensorBoard / W&B run)
    args, passthrough = p.parse_known_args(argv)
    args.passthrough = [a for a in passthrough if a != '--']
    check_args(args)
    return args


def check_args(args):
    """Before any run starts: --save-dir (and the log folder) can be written, and the flags
    passed on parse for train_psgd.py (random d=1 fits any trajectory, so an error here is about
    them; in :func:`plan` a refused run means a d too large for its kind)."""
    problem = utils.unwritable_dir(args.save_dir)
    if problem:
        raise UserError(f'--save-dir {args.save_dir}: {problem}')
    tracking.check_log_dir(args)
    train_psgd.parse_args([*args.passthrough, *tracking.passed_on(args), '--save-dir', args.save_dir,
                           '--subspace', 'random', '--n_components', '1'])


def run_argv(args, kind, d, seed):
    """train_psgd.py's arguments for one run of the sweep."""
    return [*args.passthrough, *tracking.passed_on(args), '--save-dir', args.save_dir, '--subspace',
            kind, '--n_components', str(d), '--subspace-seed', str(seed)]


def plan(args):
    """[(kind, d, seed, argv, metrics path)] of every run of the sweep (invalid (kind, d) left
    out), in the order they run."""
    runs = []
    for kind in args.kinds:
        for d in args.dims:
            for seed in (args.seeds if subspace_run.KINDS[kind].seeded else args.seeds[:1]):
                argv = run_argv(args, kind, d, seed)
                try:
                    run_args = train_psgd.parse_args(argv)
                except UserError:  # d too large for this kind and snapshot range
                    continue
                tag = subspace_run.subspace_tag('psgd', run_args)
                runs.append((kind, d, seed, argv, os.path.join(args.save_dir, f'metrics_{tag}.json')))
    return runs


def finished(path):
    """The final test accuracy in a completed run's metrics JSON (None: absent or unfinished)."""
    if not os.path.isfile(path):
        return None
    run = metrics.load(path)
    return run.final_test_acc if run.finished else None


def summarise(results, target_acc, success=1.0):
    """The sweep's table from ``results`` = [(kind, d, seed, final test accuracy)].

    Returns {'target_acc', 'success', 'rows': [{kind, d, n_runs, failed, mean, std, min, max,
    reached}], 'thresholds': {kind: smallest d whose fraction of runs with accuracy >=
    target_acc is >= success, or None}}.  A failed run (accuracy NaN) counts in ``n_runs`` and
    ``failed`` and never reaches the target; the statistics are over the others (``std``: the
    sample standard deviation, 0 for one run; all None when every run failed).
    """
    by = defaultdict(list)
    for kind, d, _, acc in results:
        by[kind, d].append(acc)
    rows, thresholds = [], {}
    for (kind, d) in sorted(by, key=lambda key: (key[0], key[1])):
        runs = np.array(by[kind, d], dtype=float)
        acc = runs[np.isfinite(runs)]
        reached = int((acc >= target_acc).sum())
        stats = ({'mean': float(acc.mean()), 'std': float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                  'min': float(acc.min()), 'max': float(acc.max())} if len(acc) else
                 dict.fromkeys(('mean', 'std', 'min', 'max')))
        rows.append({'kind': kind, 'd': d, 'n_runs': len(runs), 'failed': len(runs) - len(acc),
                     **stats, 'reached': reached})
        thresholds.setdefault(kind, None)
        if thresholds[kind] is None and reached >= success * len(runs) - 1e-9:
            thresholds[kind] = d
    return {'target_acc': target_acc, 'success': success, 'rows': rows, 'thresholds': thresholds}


def markdown(summary, sgd_acc=None):
    """The summary as a markdown table and a line of thresholds."""
    lines = [f'target: {summary["target_acc"]:.2f}% test accuracy'
             + (f' ({summary["target_acc"] / sgd_acc:.0%} of SGD\'s {sgd_acc:.2f}%)' if sgd_acc else '')
             + f', reached in >= {summary["success"]:.0%} of the seeds', '',
             '| subspace | d | runs | final test acc (mean ± std) | min | max | reached target |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in summary['rows']:
        runs = f'{r["n_runs"]}' + (f' ({r["failed"]} failed)' if r['failed'] else '')
        stats = (f'{r["mean"]:.2f} ± {r["std"]:.2f} | {r["min"]:.2f} | {r["max"]:.2f}'
                 if r['mean'] is not None else '- | - | -')
        lines.append(f'| {r["kind"]} | {r["d"]} | {runs} | {stats} | {r["reached"]}/{r["n_runs"]} |')
    lines += ['', '| subspace | threshold training dimension |', '| --- | ---: |']
    for kind, d in summary['thresholds'].items():
        largest = max(r['d'] for r in summary['rows'] if r['kind'] == kind)
        lines.append(f'| {kind} | {d if d is not None else f"> {largest}"} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    runs = plan(args)
    if not runs:
        raise UserError('no valid (kind, d) in the sweep: dldr needs d < the number of snapshots, '
                        'twa d <= it')
    folder = train_psgd.parse_args(runs[0][3]).pretrain_dir or args.save_dir
    sgd_metrics = os.path.join(folder, 'metrics_sgd.json')
    if not os.path.isfile(sgd_metrics):
        raise UserError(f'missing {sgd_metrics}: the sweep\'s target is relative to the SGD run')
    sgd_acc = metrics.load(sgd_metrics).final_test_acc
    if sgd_acc is None:
        raise UserError(f'{sgd_metrics} has no final test accuracy (no finished epoch): the sweep\'s '
                        f'target is relative to it')
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    results = []
    for i, (kind, d, seed, argv, path) in enumerate(runs):
        final = finished(path)
        if final is None:
            argv += ['--overwrite'] if os.path.exists(path) else []  # an interrupted run
            print(f'[{i + 1}/{len(runs)}] train_psgd.py {" ".join(argv)}', flush=True)
            proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train_psgd.py'), *argv],
                                  env=env, cwd=ROOT, capture_output=True, text=True)
            final = finished(path)
            if proc.returncode != 0 or final is None:
                last = proc.stderr.strip().splitlines()[-1:] or ['']
                print(f'  failed (exit {proc.returncode}): {last[0]}; counted as not reaching '
                      f'the target', flush=True)
                final = float('nan')
        print(f'[{i + 1}/{len(runs)}] {kind} d={d} seed {seed}: final test acc {final:.2f}', flush=True)
        results.append((kind, d, seed, final))
    summary = summarise(results, args.target * sgd_acc, args.success)
    summary.update(sgd_final_test_acc=sgd_acc, target_fraction=args.target,
                   runs=[dict(zip(('kind', 'd', 'seed', 'final_test_acc'), r)) for r in results])
    table = markdown(summary, sgd_acc)
    print('\n' + table, end='')
    utils.atomic_write(os.path.join(args.save_dir, 'sweep.md'), lambda f: f.write(table.encode()))
    utils.save_json(summary, os.path.join(args.save_dir, 'sweep.json'))
    print(f'table: {os.path.join(args.save_dir, "sweep.md")}; {os.path.join(args.save_dir, "sweep.json")}')


if __name__ == '__main__':
    distributed.run_cli(main)
