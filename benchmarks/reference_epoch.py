"""An epoch of train_sgd.py as a user meets it: ours (eager, --compile, --compile
--channels-last, and in bf16 autocast: another precision) against the reference's train_sgd.py
(nblt/DLDR), on the same CIFAR-10 files, the same machine, one process at a time, rounds
interleaved; with each epoch's test accuracy.

The reference is run from a checkout the user supplies (never vendored), in a scratch folder
outside this repository; on a machine without CUDA its ``.cuda()`` calls are made no-ops and
torchvision's MD5 check of the CIFAR-10 files is skipped (the files written by a converter are
byte-different but hold the same images). Its "Total time for epoch" line is the training time
of the epoch (loader included); ours is the ``train ...s`` of the epoch line. Evaluation is
reported apart.

    python -m benchmarks.reference_epoch --reference /path/to/DLDR --data /path/with/cifar-10-batches-py

prints one row per variant and epoch, then the ratios ours/reference for the last epoch (the
first carries compilation). Nothing here is timed inside the test suite.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHIM = r'''
import runpy, sys, types
import torch, torchvision
if not torch.cuda.is_available():   # the reference calls .cuda() everywhere
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
import torchvision.datasets.cifar
torchvision.datasets.cifar.check_integrity = lambda *a, **k: True   # converted files: other MD5s
for name in ('sklearn', 'sklearn.decomposition'):   # imported by its utils.py, unused by train_sgd
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules['sklearn.decomposition'].PCA = None
sys.argv = ['train_sgd.py'] + sys.argv[1:]
runpy.run_path('train_sgd.py', run_name='__main__')
'''

REF_EPOCH = re.compile(r'Total time for epoch \[(\d+)\] : ([0-9.]+)')
OUR_EPOCH = re.compile(r'epoch\s+(\d+)/\d+ .*test loss [0-9.]+ acc\s+([0-9.]+)%.* train ([0-9.]+)s eval ([0-9.]+)s')
REF_ACC = re.compile(r' \* Prec@1 ([0-9.]+)')


def run(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if out.returncode:
        sys.exit(f'error: {" ".join(cmd)} failed (exit {out.returncode}):\n{out.stdout[-3000:]}')
    return out.stdout


def reference(args, scratch, env):
    work = os.path.join(scratch, 'ref', 'run')   # the reference reads ../data
    if not os.path.isdir(work):
        os.makedirs(work)
        for name in ('train_sgd.py', 'utils.py', 'resnet.py'):
            shutil.copy(os.path.join(args.reference, name), work)
        shutil.copytree(os.path.join(args.reference, 'models'), os.path.join(work, 'models'))
        os.symlink(os.path.abspath(args.data), os.path.join(scratch, 'ref', 'data'))
        with open(os.path.join(work, 'shim.py'), 'w') as f:
            f.write(SHIM)
    out = run([sys.executable, 'shim.py', '-a', args.arch, '--epochs', str(args.epochs),
               '--save-dir', 'save', '--randomseed', '1'], work, env)
    return [float(t) for _, t in REF_EPOCH.findall(out)], None, [float(a) for a in REF_ACC.findall(out)]


def ours(args, scratch, env, extra):
    save = tempfile.mkdtemp(dir=scratch)
    out = run([sys.executable, os.path.join(ROOT, 'train_sgd.py'), '-a', args.arch, '--epochs',
               str(args.epochs), '--data-dir', args.data, '--save-dir', save, '--randomseed', '1',
               '--print-freq', '0', *extra], ROOT, env)
    shutil.rmtree(save)
    rows = OUR_EPOCH.findall(out)
    return ([float(t) for _, _, t, _ in rows], [float(e) for *_, e in rows],
            [float(a) for _, a, _, _ in rows])


VARIANTS = {
    'reference': None,
    'ours': [],
    'ours --compile': ['--compile'],
    'ours --compile --channels-last': ['--compile', '--channels-last'],
    # bf16 autocast: another precision (a fast path on CPUs with AMX / AVX512-BF16), not the
    # reference's float32 protocol; reported apart
    'ours --amp bf16 --channels-last': ['--amp', 'bf16', '--channels-last'],
    'ours --compile --amp bf16 --channels-last': ['--compile', '--amp', 'bf16', '--channels-last'],
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--reference', required=True, help='a checkout of nblt/DLDR')
    p.add_argument('--data', required=True, help='folder holding cifar-10-batches-py')
    p.add_argument('--arch', default='resnet20')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS (default: unset)')
    p.add_argument('--only', nargs='*', default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.reference, 'train_sgd.py')):
        sys.exit(f'error: --reference {args.reference}: no train_sgd.py there')
    if not os.path.isdir(os.path.join(args.data, 'cifar-10-batches-py')):
        sys.exit(f'error: --data {args.data}: no cifar-10-batches-py folder there')
    env = dict(os.environ)
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    scratch = tempfile.mkdtemp(prefix='reference_epoch_')
    times = {name: [] for name in args.only}
    try:
        for r in range(args.rounds):
            for name in args.only:
                train, evals, accs = (reference(args, scratch, env) if VARIANTS[name] is None
                                      else ours(args, scratch, env, VARIANTS[name]))
                times[name].append(train)
                ev = '' if evals is None else '  eval ' + ' '.join(f'{e:.1f}' for e in evals)
                print(f'round {r + 1} {name:42s} train s/epoch ' + ' '.join(f'{t:.1f}' for t in train)
                      + ev + '  test acc ' + ' '.join(f'{a:.2f}' for a in accs), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    last = {name: statistics.median(t[-1] for t in ts) for name, ts in times.items()}
    print(f'\nlast epoch ({args.arch}, median of {args.rounds} round(s)):')
    for name, t in last.items():
        rel = f'  {t / last["reference"]:.3f} of the reference' if 'reference' in last else ''
        print(f'  {name:42s} {t:7.1f} s{rel}')


if __name__ == '__main__':
    main()
