"""Compare two output folders of tests/bitcheck/pipeline.sh: every .pt (torch.equal, recursively)
and every metrics JSON's rows, snapshot map and basis (all but timings, settings and paths);
keys present in one file only are listed, not failed."""
import glob, json, os, sys
import torch
a, b = sys.argv[1:3]
TIMING = {'elapsed', 'process_seconds', 'seconds', 'train_seconds', 'eval_seconds'}
def same(x, y, where):
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, dict):
        if set(x) != set(y):
            EXTRA.add((where.split('[')[0], tuple(sorted(set(x) ^ set(y)))))
        for k in set(x) & set(y):
            if k not in TIMING and k not in ('args', 'folder'):
                same(x[k], y[k], f'{where}.{k}')
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            same(u, v, f'{where}[{i}]')
    else:
        assert x == y or (x != x and y != y), (where, x, y)
n = 0
EXTRA = set()
for pa in sorted(glob.glob(os.path.join(a, '**', '*.pt'), recursive=True)):
    pb = os.path.join(b, os.path.relpath(pa, a))
    same(torch.load(pa, weights_only=True), torch.load(pb, weights_only=True), pa); n += 1
for pa in sorted(glob.glob(os.path.join(a, '**', 'metrics_*.json'), recursive=True)):
    pb = os.path.join(b, os.path.relpath(pa, a))
    ja, jb = json.load(open(pa)), json.load(open(pb))
    same(ja['epochs'], jb['epochs'], pa); n += 1
    for k in ('final_test_acc', 'best_test_acc', 'snapshots', 'basis'):
        if k in ja: same(ja[k], jb.get(k), f'{pa}:{k}')
print(f'identical: {n} files'); print('keys in one only:', sorted(EXTRA))
