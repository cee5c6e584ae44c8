"""The other subspace kinds (TWA, random, Fastfood) against independent numpy computations, P-SGD
staying in start + span for every kind, the CLI's --subspace runs, and the sweep's table."""
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dldr
import models
import sweep
import utils
from helpers import SMALL, flat_snapshot, run_in_process

F64 = torch.float64


def trajectory(t, n, seed=0, offset=3.0):
    """(t, n) float32 snapshots dominated by a common offset, as SGD snapshots are."""
    g = torch.Generator().manual_seed(seed)
    return (offset + torch.randn(n, generator=g) + 0.1 * torch.randn(t, n, generator=g)).float()


def orthonormality_error(P):
    P = P.double()
    return (P @ P.T - torch.eye(P.shape[0], dtype=F64)).abs().max().item()


def principal_cosines(A, B):
    """Cosines of the principal angles between the row spaces of A and B (numpy)."""
    qa = np.linalg.qr(np.asarray(A, dtype=float).T)[0]
    qb = np.linalg.qr(np.asarray(B, dtype=float).T)[0]
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


class ThreadComm(dldr.Comm):
    """Ranks as threads of one process: collectives through a shared list and a barrier."""

    def __init__(self, rank, world_size, slots, barrier):
        self.rank, self.world_size, self.slots, self.barrier = rank, world_size, slots, barrier

    def _exchange(self, tensor):
        self.slots[self.rank] = tensor.clone()
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def all_reduce_(self, tensor, op='mean'):
        total = sum(self._exchange(tensor))
        return tensor.copy_(total / self.world_size if op == 'mean' else total)

    def all_gather_(self, out, tensor):
        for o, value in zip(out, self._exchange(tensor)):
            o.copy_(value)


def on_ranks(world_size, fn):
    """[fn(comm) for each rank], the ranks running as threads."""
    slots, barrier = [None] * world_size, threading.Barrier(world_size)
    with ThreadPoolExecutor(world_size) as pool:
        futures = [pool.submit(fn, ThreadComm(r, world_size, slots, barrier)) for r in range(world_size)]
        return [f.result() for f in futures]


# --------------------------------------------------------------------------------------- TWA

def test_twa_basis_is_gram_schmidt_of_the_raw_snapshots_and_starts_at_their_mean():
    t, n = 6, 1001
    X = trajectory(t, n)
    P = dldr.twa_basis([row for row in X], max_bytes=8 * (3 * t + 1) * 97)  # 11 chunks
    assert P.shape == (t, n) and P.dtype == torch.float32
    assert orthonormality_error(P) < 1e-6
    Q, R = np.linalg.qr(X.double().numpy().T)  # Gram–Schmidt of w_1, w_2, ... in order
    np.testing.assert_allclose(principal_cosines(P, X.numpy()), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(P.double().numpy() * Q.T, axis=1)), 1.0, atol=1e-5)
    # the leading d rows: the span of the first d snapshots, the same rows up to rounding
    P3 = dldr.twa_basis(X, 3)
    np.testing.assert_allclose(principal_cosines(P3, X[:3].numpy()), 1.0, atol=1e-6)
    torch.testing.assert_close(P3, P[:3], atol=1e-5, rtol=0)
    mean = dldr.snapshot_mean([row for row in X], max_bytes=8 * (t + 1) * 100)
    np.testing.assert_allclose(mean.numpy(), X.double().numpy().mean(axis=0), atol=1e-6)


def test_twa_basis_errors():
    X = trajectory(4, 50)
    with pytest.raises(ValueError, match=r'n_components=5 must lie in 1..t=4'):
        dldr.twa_basis(X, 5)
    with pytest.raises(ValueError, match='snapshot 3 of the range lies .* span of the earlier'):
        dldr.twa_basis(torch.stack([X[0], X[1], 2 * X[0] - X[1], X[3]]))
    dldr.twa_basis(torch.stack([X[0], X[1], 2 * X[0] - X[1], X[3]]), 2)  # the first two are fine


# ------------------------------------------------------------------------------------ random

def test_random_basis_orthonormal_reproducible_and_independent_of_chunking():
    d, n = 7, 5000
    P = dldr.random_basis(d, n, seed=3)
    assert P.shape == (d, n) and orthonormality_error(P) < 1e-5
    for max_bytes in (12 * d * 333, 12 * d * 1500):  # chunks across and within generation blocks
        torch.testing.assert_close(dldr.random_basis(d, n, seed=3, max_bytes=max_bytes), P,
                                   atol=1e-6, rtol=0)
    other = dldr.random_basis(d, n, seed=4)
    assert principal_cosines(P, other).max() < 0.2  # two random 7-D subspaces of R^5000
    # it is Gaussian rows orthonormalised: the same span as the generator's matrix
    columns = dldr._GaussianColumns(d, 3, torch.device('cpu'))
    G = torch.cat([columns(a, min(a + 999, n)) for a in range(0, n, 999)], dim=1)
    torch.testing.assert_close(dldr._GaussianColumns(d, 3, torch.device('cpu'))(2000, 2500),
                               G[:, 2000:2500], atol=0, rtol=0)  # skipping ahead: the same columns
    np.testing.assert_allclose(principal_cosines(P, G), 1.0, atol=1e-6)


def test_sharded_bases_equal_the_single_process_ones():
    X = trajectory(5, 3001, seed=1)
    for world in (2, 3):
        twa = on_ranks(world, lambda comm: dldr.twa_basis(X, max_bytes=2000, comm=comm))
        rnd = on_ranks(world, lambda comm: dldr.random_basis(4, 3001, 9, max_bytes=2000, comm=comm))
        for P in twa:
            torch.testing.assert_close(P, dldr.twa_basis(X), atol=1e-5, rtol=0)
        for P in rnd:
            torch.testing.assert_close(P, dldr.random_basis(4, 3001, 9), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- Fastfood

def sylvester_hadamard(n):
    """The n x n Hadamard matrix of Sylvester's construction, as Kronecker powers of [[1, 1],
    [1, -1]] (the definition, independent of the butterfly in dldr.fwht)."""
    H = np.ones((1, 1))
    while H.shape[0] < n:
        H = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), H)
    return H


def test_fwht_is_the_sylvester_hadamard_matrix():
    x = torch.randn(3, 32, dtype=F64)
    np.testing.assert_allclose(dldr.fwht(x).numpy(), x.numpy() @ sylvester_hadamard(32).T, atol=1e-12)
    with pytest.raises(ValueError, match='power-of-two'):
        dldr.fwht(torch.ones(12))


@pytest.mark.parametrize('d, n', [(5, 13), (16, 64), (1, 1)])
def test_fastfood_equals_the_explicit_matrix_and_coords_is_its_adjoint(d, n):
    ff = dldr.FastfoodSubspace(d, n, seed=7)
    M = torch.stack([ff.lift(e) for e in torch.eye(d)], dim=1).double().numpy()  # n x d
    # independent construction: scale * S_n H G Π H B E_d from the drawn B, Π, G
    L = ff.length
    assert L >= n and L & (L - 1) == 0 and L < 2 * max(n, 1)
    H = sylvester_hadamard(L)
    B, G, Pi = ff.B.double().numpy(), ff.G.double().numpy(), ff.Pi.numpy()
    assert set(np.abs(B)) == {1.0} and sorted(Pi) == list(range(L))
    scale = 1 / np.sqrt(n * np.sum(G ** 2))
    explicit = scale * (H @ np.diag(G) @ np.eye(L)[Pi] @ H @ np.diag(B) @ np.eye(L)[:, :d])[:n]
    np.testing.assert_allclose(M, explicit, rtol=0, atol=1e-6)
    # the adjoint: coords(g) = M^T g, so <coords(g), c> = <g, lift(c)>
    g, c = torch.randn(n, dtype=F64), torch.randn(d, dtype=F64)
    np.testing.assert_allclose(ff.coords(g.float()).double().numpy(), M.T @ g.numpy(), atol=1e-5)
    np.testing.assert_allclose(float(ff.coords(g.float()).double() @ c),
                               float(g @ ff.lift(c.float()).double()), rtol=1e-5, atol=1e-6)
    if n == L:  # n a power of two: unit columns exactly
        np.testing.assert_allclose(np.linalg.norm(M, axis=0), 1.0, atol=1e-5)


def test_fastfood_is_about_an_isometry_and_seeded():
    ff = dldr.FastfoodSubspace(200, 3000, seed=1)
    c = torch.randn(200, dtype=F64)
    assert abs(ff.lift(c.float()).norm() / c.norm() - 1) < 0.15
    torch.testing.assert_close(dldr.FastfoodSubspace(200, 3000, seed=1).lift(c.float()), ff.lift(c.float()))
    assert not torch.allclose(dldr.FastfoodSubspace(200, 3000, seed=2).lift(c.float()), ff.lift(c.float()))
    with pytest.raises(ValueError, match='1 <= d <= n'):
        dldr.FastfoodSubspace(10, 5, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_kinds():
    ff_cpu, ff_gpu = dldr.FastfoodSubspace(20, 3000, 1), dldr.FastfoodSubspace(20, 3000, 1, 'cuda')
    c, g = torch.randn(20), torch.randn(3000)
    torch.testing.assert_close(ff_gpu.lift(c.cuda()).cpu(), ff_cpu.lift(c), atol=1e-5, rtol=0)
    torch.testing.assert_close(ff_gpu.coords(g.cuda()).cpu(), ff_cpu.coords(g), atol=1e-4, rtol=0)
    P = dldr.random_basis(8, 5000, 2, device='cuda', max_bytes=12 * 8 * 700)
    assert P.is_cuda and orthonormality_error(P.cpu()) < 1e-5
    torch.testing.assert_close(P, dldr.random_basis(8, 5000, 2, device='cuda'), atol=1e-6, rtol=0)
    X = trajectory(5, 3000)
    torch.testing.assert_close(dldr.twa_basis(X.cuda()).cpu(), dldr.twa_basis(X), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- P-SGD in every kind

def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize('kind', ['dldr', 'twa', 'random', 'fastfood'])
def test_psgd_iterates_stay_in_start_plus_span(kind):
    model = small_model()
    params = dldr.trainable_params(model)
    n = sum(p.numel() for p in params)
    X = trajectory(6, n, seed=5, offset=0.0)
    if kind == 'dldr':
        subspace, start = dldr.DenseSubspace(dldr.dldr_basis(X, 4).P), X[0]
    elif kind == 'twa':
        subspace, start = dldr.DenseSubspace(dldr.twa_basis(X)), dldr.snapshot_mean(X)
    elif kind == 'random':
        subspace, start = dldr.DenseSubspace(dldr.random_basis(4, n, seed=1)), X[0]
    else:
        subspace, start = dldr.FastfoodSubspace(4, n, seed=1), X[0]
    dldr.set_flat_params_(params, start)
    M = torch.stack([subspace.lift(e) for e in torch.eye(subspace.dim)], dim=1).double()  # n x d
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        dldr.project_grads_(params, subspace)
        optimizer.step()
    delta = dldr.flat_params(params).double() - start.double()
    coeffs = torch.linalg.lstsq(M, delta[:, None]).solution
    assert delta.norm() > 1e-3  # it moved
    assert (delta - (M @ coeffs)[:, 0]).abs().max() < 1e-5


def test_redrawn_psgd_steps_in_a_new_fastfood_basis_each_time():
    """Step k of P-SGD (plain SGD, lr 0.1) in a redrawn subspace is w -= 0.1 M_k M_k^T g with M_k
    the Fastfood matrix of seed draw_seed(seed, k), built here column by column."""
    model = small_model()
    params = dldr.trainable_params(model)
    n, d = sum(p.numel() for p in params), 5
    redrawn = dldr.RedrawnSubspace(lambda s: dldr.FastfoodSubspace(d, n, s), d, n, seed=3)
    with pytest.raises(RuntimeError, match='before the first coords'):
        redrawn.lift(torch.zeros(d))
    optimizer = torch.optim.SGD(params, lr=0.1)
    g = torch.Generator().manual_seed(0)
    w0 = dldr.flat_params(params).double()
    moves = []
    for k in range(3):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grad, before = dldr.flat_grad(params).double(), dldr.flat_params(params).double()
        dldr.project_grads_(params, redrawn)
        optimizer.step()
        ff = dldr.FastfoodSubspace(d, n, dldr.draw_seed(3, k))
        M = torch.stack([ff.lift(e) for e in torch.eye(d)], dim=1).double()
        expected = before - 0.1 * M @ (M.T @ grad)
        torch.testing.assert_close(dldr.flat_params(params).double(), expected, atol=1e-6, rtol=0)
        moves.append(M)
    assert redrawn.draws == 3
    # the three bases differ, and together the steps leave the span of the first one
    delta = dldr.flat_params(params).double() - w0
    coeffs = torch.linalg.lstsq(moves[0], delta[:, None]).solution
    assert (delta - (moves[0] @ coeffs)[:, 0]).norm() > 0.1 * delta.norm()
    assert len({dldr.draw_seed(3, k) for k in range(100)} | {dldr.draw_seed(4, k) for k in range(100)}) == 200


# ----------------------------------------------------------------------------------- the CLI

PSGD = ['--epochs', '1', '--datasets', 'synthetic', '--lr', '1', '--corrupt', '0.2',
        '--params_start', '0', '--params_end', '3', '--arch=resnet8', *SMALL]


@pytest.fixture(scope='module')
def kind_runs(sgd_run, tmp_path_factory, small_synthetic):
    """P-SGD with --subspace random (d 2, seed 5) and twa (default d = 3, from the mean) on the
    shared SGD trajectory; main(argv) in-process (as the script's __main__) on the synthetic data
    generated once."""
    source, _ = sgd_run
    folder = tmp_path_factory.mktemp('kinds')
    for k in range(3):
        shutil.copy(source / f'{k}.pt', folder / f'{k}.pt')
    procs = {kind: run_in_process(small_synthetic, 'train_psgd', *PSGD, *extra, f'--save-dir={folder}')
             for kind, extra in [('random', ['--subspace', 'random', '--subspace-seed', '5',
                                             '--n_components', '2']),
                                 ('twa', ['--subspace', 'twa'])]}
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr
    return folder, procs


@pytest.mark.parametrize('kind, tag, d, seed, start', [
    ('random', 'psgd_random_s5_d2_0-3', 2, 5, 0), ('twa', 'psgd_twa_d3_0-3', 3, None, 'mean')])
def test_cli_subspace_kinds_write_their_basis_entry_and_stay_in_the_subspace(kind_runs, kind, tag, d,
                                                                             seed, start):
    folder, procs = kind_runs
    metrics = json.loads((folder / f'metrics_{tag}.json').read_text())
    basis = metrics['basis']
    assert (basis['kind'], basis['seed'], basis['start'], basis['n_components']) == (kind, seed, start, d)
    assert basis['snapshots'] == [0, 3] and 'explained_variance_ratio' not in basis
    assert metrics['args']['subspace'] == kind and len(metrics['epochs']) == 1
    assert f'basis: {kind}' in procs[kind].stdout
    model = models.get_model('resnet8')
    X = np.stack([flat_snapshot(folder / f'{k}.pt', model) for k in range(3)])
    w = flat_snapshot(folder / f'{tag}.pt', model)
    if kind == 'twa':  # from the mean, in the span of the raw snapshots
        Q = np.linalg.qr(X.T)[0]
        assert np.linalg.norm(w - Q @ (Q.T @ w)) <= 1e-5 * np.linalg.norm(w)
        assert 'training starts at the mean' in procs[kind].stdout
    else:  # from snapshot 0, along the seeded random basis
        P = dldr.random_basis(2, X.shape[1], 5).double().numpy()
        delta = w - X[0]
        assert np.linalg.norm(delta) > 0
        # (float32 weights: rounding of w itself, ~1e-7 |w|, bounds what can be checked)
        assert np.linalg.norm(delta - P.T @ (P @ delta)) <= 1e-6 * np.linalg.norm(w) + 1e-4 * np.linalg.norm(delta)


# --------------------------------------------------------------------------------- the sweep

def test_sweep_summary_and_threshold_by_hand():
    results = [('random', 2, 1, 50.0), ('random', 2, 2, 70.0),
               ('random', 4, 1, 81.0), ('random', 4, 2, float('nan')),  # a failed run
               ('random', 8, 1, 85.0), ('random', 8, 2, 80.0),
               ('dldr', 2, 1, 79.0), ('dldr', 4, 1, 90.0)]
    summary = sweep.summarise(results, target_acc=80.0)
    rows = {(r['kind'], r['d']): r for r in summary['rows']}
    assert rows['random', 2]['mean'] == 60.0 and rows['random', 2]['std'] == pytest.approx(np.std([50, 70], ddof=1))
    assert (rows['random', 4]['n_runs'], rows['random', 4]['failed'], rows['random', 4]['reached']) == (2, 1, 1)
    assert rows['random', 4]['mean'] == 81.0 and rows['random', 4]['std'] == 0.0
    assert summary['thresholds'] == {'dldr': 4, 'random': 8}
    assert sweep.summarise(results, 80.0, success=0.5)['thresholds'] == {'dldr': 4, 'random': 4}
    assert sweep.summarise(results, 86.0)['thresholds'] == {'dldr': 4, 'random': None}
    table = sweep.markdown(sweep.summarise(results, 86.0), sgd_acc=95.0)
    assert '| random | 4 | 2 (1 failed) | 81.00 ± 0.00 | 81.00 | 81.00 | 0/2 |' in table
    assert '| random | > 8 |' in table and '| dldr | 4 |' in table


def fake_metrics(path, final, finished=True):
    data = {'args': {}, 'method': 'psgd', 'epochs': [{'test_acc': final}], 'final_test_acc': final}
    if finished:
        data['seconds'] = 1.0
    utils.save_json(data, str(path))


def test_sweep_reuses_finished_runs_and_writes_its_table(tmp_path, capsys):
    fake_metrics(tmp_path / 'metrics_sgd.json', 80.0)
    accs = {('dldr', 2, 1): 75.0, ('dldr', 4, 1): 78.0,
            ('fastfood', 2, 1): 40.0, ('fastfood', 2, 2): 73.0,
            ('fastfood', 4, 1): 72.5, ('fastfood', 4, 2): 74.0,
            ('fastfood', 5, 1): 79.0, ('fastfood', 5, 2): 79.5}
    names = {('dldr', 2, 1): 'psgd_d2_0-5', ('dldr', 4, 1): 'psgd_d4_0-5'}
    for (kind, d, seed), acc in accs.items():
        name = names.get((kind, d, seed), f'psgd_{kind}_s{seed}_d{d}_0-5')
        fake_metrics(tmp_path / f'metrics_{name}.json', acc)
    # dldr d 5 (= t) is left out: a centred trajectory of 5 snapshots has rank 4
    sweep.main(['--save-dir', str(tmp_path), '--kinds', 'dldr', 'fastfood', '--dims', '2', '4', '5',
                '--seeds', '1', '2', '--target', '0.9', '--', '--params_start', '0',
                '--params_end', '5', '--datasets', 'synthetic'])
    out = capsys.readouterr().out
    assert 'train_psgd.py' not in out  # every run was reused
    summary = json.loads((tmp_path / 'sweep.json').read_text())
    assert summary['target_acc'] == pytest.approx(72.0) and summary['sgd_final_test_acc'] == 80.0
    assert summary['thresholds'] == {'dldr': 2, 'fastfood': 4}
    assert len(summary['runs']) == 8
    table = (tmp_path / 'sweep.md').read_text()
    assert table in out and '| fastfood | 2 | 2 | 56.50 ± 23.33 | 40.00 | 73.00 | 1/2 |' in table


# ------------------------------------------- a compactly stored basis (--basis-dtype, --basis-device)

def rounded_basis(P, dtype):
    """P as ``dtype`` stores it, in float64, computed here independently: bf16 rounds each entry;
    fp16 and int8 round P / s with s = (largest |entry| of the row) / (1 resp. 127)."""
    P = P.double()
    if dtype == 'bf16':
        return P.bfloat16().double()
    top = {'fp16': 1.0, 'int8': 127.0}[dtype]
    s = P.abs().amax(dim=1, keepdim=True) / top
    q = (P / s).half().double() if dtype == 'fp16' else (P / s).round().clamp(-127, 127)
    return q * s


@pytest.mark.parametrize('dtype, bytes_per_entry, max_rounding', [
    ('bf16', 2, 2**-8), ('fp16', 2, 2**-10), ('int8', 1, 0.02)])
def test_low_precision_basis_products_accumulate_in_float32(dtype, bytes_per_entry, max_rounding):
    d, n = 6, 5000
    P = dldr.random_basis(d, n, seed=3)
    # chunks of 700 columns: several chunks, the last one short
    compact = dldr.CompactSubspace(P, n, dtype=dtype, chunk_bytes=4 * d * 700)
    assert compact.basis_bytes == d * n * bytes_per_entry + (0 if dtype == 'bf16' else 4 * d)
    assert compact.basis_bytes <= dldr.DenseSubspace(P).basis_bytes // (4 // bytes_per_entry) + 4 * d
    exact = rounded_basis(P, dtype)
    assert (exact - P.double()).abs().max() <= max_rounding * P.abs().max()  # what P lost
    g = torch.Generator().manual_seed(4)
    grad, c = torch.randn(n, generator=g), torch.randn(d, generator=g)
    # products of the stored P, accumulated in float32 (a bf16 accumulation would be ~1e-3 off)
    torch.testing.assert_close(compact.coords(grad).double(), exact @ grad.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.lift(c).double(), exact.T @ c.double(), rtol=1e-5, atol=1e-7)
    assert compact.coords(grad).dtype == compact.lift(c).dtype == torch.float32


def test_float32_compact_basis_equals_the_dense_one_and_refuses_a_wrong_block():
    d, n = 4, 301
    P = dldr.random_basis(d, n, seed=1)
    g, c = torch.randn(n), torch.randn(d)
    compact = dldr.CompactSubspace(P.clone(), n)
    assert torch.equal(compact.coords(g), dldr.DenseSubspace(P).coords(g))
    assert torch.equal(compact.lift(c), dldr.DenseSubspace(P).lift(c))
    with pytest.raises(ValueError, match='expected 301 columns'):
        dldr.CompactSubspace(P[:, :300], n)
    # the default storage is the plain DenseSubspace (the unchanged default run)
    assert type(dldr.store_basis(P, n)) is dldr.DenseSubspace
    assert type(dldr.store_basis(P, n, dtype='bf16')) is dldr.CompactSubspace


def test_storage_flags_build_the_stored_basis_and_refuse_kinds_without_p(capsys):
    import subspace_run
    from helpers import assert_one_line_error, in_process
    X = trajectory(6, 2000, seed=2, offset=0.0)
    build = subspace_run.KINDS['dldr'].build
    cpu = torch.device('cpu')
    whole, _ = build(X, 3, 2000, 0, cpu, 2**20, dldr.LOCAL, subspace_run.Storage())
    half, info = build(X, 3, 2000, 0, cpu, 2**20, dldr.LOCAL, subspace_run.Storage(dtype='bf16'))
    assert type(whole) is dldr.DenseSubspace and half.basis_bytes * 2 == whole.basis_bytes
    assert half.data.dtype == torch.bfloat16 and 'explained_variance_ratio' in info
    torch.testing.assert_close(half.data.float(), whole.P.bfloat16().float(), rtol=0, atol=0)
    base = ['--datasets', 'synthetic', '--params_start', '0', '--params_end', '3', '--n_components', '2']
    for extra, fragment in ((['--subspace', 'fastfood', '--shard-basis'], '--shard-basis'),
                            (['--subspace', 'redrawn', '--basis-dtype', 'bf16'], '--basis-dtype bf16'),
                            (['--basis-device', 'nowhere'], "bad --basis-device 'nowhere'")):
        assert_one_line_error(in_process(capsys, 'train_psgd', *base, *extra), fragment)
    import train_psgd
    args = train_psgd.parse_args([*base, '--shard-basis', '--basis-dtype', 'int8', '--basis-device', 'cpu'])
    assert (args.shard_basis, args.basis_dtype, args.basis_device) == (True, 'int8', 'cpu')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_basis_on_the_cpu_next_to_cuda_parameters():
    """--basis-device cpu: P stays on the CPU, the vectors on the GPU; the products are P's."""
    d, n = 5, 4000
    P = dldr.random_basis(d, n, seed=2)
    subspace = dldr.store_basis(P, n, device='cuda')
    assert type(subspace) is dldr.CompactSubspace and subspace.data.device.type == 'cpu'
    g, c = torch.randn(n, device='cuda'), torch.randn(d, device='cuda')
    coords, lifted = subspace.coords(g), subspace.lift(c)
    assert coords.is_cuda and lifted.is_cuda
    torch.testing.assert_close(coords.cpu(), P @ g.cpu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lifted.cpu(), P.T @ c.cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_low_precision_basis_never_held_in_float32_on_the_gpu():
    """--basis-dtype bf16 on CUDA: the extraction keeps the float32 P in host memory
    (store_device) and the GPU receives only the bf16 copy."""
    X = trajectory(6, 3000, seed=4, offset=0.0)
    on_gpu = dldr.dldr_basis(X.cuda(), 3).P
    staged = dldr.dldr_basis(X.cuda(), 3, store_device='cpu').P
    assert staged.device.type == 'cpu'
    torch.testing.assert_close(staged, on_gpu.cpu(), rtol=0, atol=0)
    subspace = dldr.store_basis(staged, 3000, dtype='bf16', device='cuda', basis_device='cuda')
    assert subspace.data.is_cuda and subspace.data.dtype == torch.bfloat16
    torch.testing.assert_close(subspace.data.cpu(), staged.bfloat16(), rtol=0, atol=0)
