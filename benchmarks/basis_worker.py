"""One basis-extraction method in a fresh process, for comparison 4 (``s4_basis``): a fresh
process is the only way to see a method's own peak memory (nothing cached by an earlier method,
no allocator pools of the parent).  Prints one JSON line.

    python -m benchmarks.basis_worker METHOD TRAJ_DIR --mode memory|time [--runs R]
        [--max-bytes B] --device DEV --arch ARCH --snapshots T --n-components D --seed S [--threads N]

METHOD: ours (utils.open_trajectory + dldr.dldr_basis), svd (load every snapshot whole + numpy
SVD of the centred t x n array, the reference's way), pca (the same load + sklearn PCA).
--mode memory: one run under the peak sampler (and CUDA peak stats); --mode time: one warm-up
run, then --runs timed runs.
"""
import argparse
import gc
import importlib.util
import json
import os
import sys
import threading
import time

import numpy as np
import torch

import dldr
import utils
from benchmarks.common import build_model, sync, timed

METHODS = ('ours', 'svd', 'pca')


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


def sklearn_available():
    """sklearn is optional (not in requirements.txt): the PCA baseline runs only where it is."""
    return importlib.util.find_spec('sklearn') is not None


def basis_method(method, folder, t, d, model, device, max_bytes=None):
    """A callable computing the d x n basis of snapshots 0..t-1 in ``folder`` by ``method``."""
    if method == 'ours':
        def run():
            trajectory = utils.open_trajectory(folder, 0, t, model)
            return dldr.dldr_basis(trajectory, d, device=device, max_bytes=max_bytes).P
    elif method == 'svd':
        names = param_names(model)

        def run():
            w = load_trajectory_array(folder, t, names)
            w -= w.mean(axis=0, keepdims=True)
            return np.linalg.svd(w, full_matrices=False)[2][:d]
    elif method == 'pca' and sklearn_available():
        try:  # optional (not in requirements.txt), probed by find_spec above
            from sklearn.decomposition import PCA
        except ImportError:
            raise SystemExit('the PCA baseline needs scikit-learn') from None
        names = param_names(model)

        def run():
            return PCA(n_components=d).fit(load_trajectory_array(folder, t, names)).components_
    else:
        raise ValueError(f'basis method {method!r} is unknown or not importable here')
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    a = p.add_argument
    a('method', choices=METHODS)
    a('traj_dir', help='folder of the snapshots 0.pt .. (t-1).pt')
    a('--mode', choices=('memory', 'time'), default='memory')
    a('--runs', type=int, default=2, help='timed runs after the warm-up (--mode time)')
    a('--max-bytes', type=int, default=None, help='max_bytes of dldr.dldr_basis (ours)')
    a('--device', required=True, help='torch device, as the parent resolved it')
    a('--arch', required=True, help='the architecture the trajectory was written from')
    a('--snapshots', type=int, required=True, help='t')
    a('--n-components', type=int, required=True, help='d')
    a('--seed', type=int, required=True, help='the parent\'s --seed (the model\'s initialisation)')
    a('--threads', type=int, default=None, help='torch.set_num_threads')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.arch, device, args.seed)
    run = basis_method(args.method, args.traj_dir, args.snapshots, args.n_components, model,
                       device, args.max_bytes)
    cuda = device.type == 'cuda'
    out = dict(method=args.method, max_bytes=args.max_bytes)
    if args.mode == 'time':
        timed(run, device)
        out['seconds'] = [timed(run, device)[0] for _ in range(args.runs)]
        print(json.dumps(out))
        return
    if cuda:  # cuBLAS/cuSOLVER workspaces (32 MiB+ on Hopper) are per-process, not the method's
        a = torch.randn(64, 64, dtype=torch.float64, device=device)
        spd = a @ a.T + 64 * torch.eye(64, dtype=torch.float64, device=device)
        torch.linalg.solve_triangular(torch.linalg.cholesky(spd), a, upper=False)
        torch.mv(a.float(), a[0].float()), a.float() @ a.float()
        del a, spd
    gc.collect()
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    with PeakSampler() as sampler:
        seconds, result = timed(run, device)
    out.update(host_peak=sampler.growth, seconds=seconds, shape=list(result.shape))
    if cuda:
        out['device_peak'] = torch.cuda.max_memory_allocated(device) - cuda_base
    print(json.dumps(out))


if __name__ == '__main__':
    sys.exit(main())
