"""Data-parallel runs on the CPU with gloo: 2 ranks against 1 process.

The method-level checks share one spawn of 2 processes (scaffold.spawn_local, file:// rendezvous;
the ``gloo_ranks`` fixture of conftest.py, which test_package.py's DDP check shares too):
P-SGD and P-BFGS on a BatchNorm-free model, 2 ranks x b/2 against 1 process x b on the same
global batches (utils.DeviceLoader cuts them); the bytes every step all-reduces, counted by
wrapping the one communicator; the sharded basis against the 1-process basis; P-SGD and P-BFGS with
the basis sharded over the 2 ranks (--shard-basis) against the whole float32 P in 1 process.  The script-level
checks run torchrun --standalone: the trajectory is written once by rank 0, a bad flag and a
killed rank end the job.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distributed
import dldr
import engine
import utils
from helpers import ROOT, RUNNER
from scaffold import CountingComm
from test_package import ddp_run

D, BATCH, STEPS = 5, 16, 6


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4))


def loader(context):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (72, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (72,), generator=g)
    # 72 images, batch 16: 4 full batches and one of 8 per epoch
    return utils.DeviceLoader(x, y, BATCH, (0.5,) * 3, (0.25,) * 3, context.device, train=True,
                              generator=torch.Generator().manual_seed(6), rank=context.rank,
                              world_size=context.world_size)


def batches(context):
    data = loader(context)
    out = []
    while len(out) < STEPS:
        out.extend(data)
    return out[:STEPS]


def orthonormal_rows(d, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64)).Q.T.float().contiguous()


def make_subspace(P, comm, shard):
    """The whole P, or (``shard``) this rank's block of its columns as --shard-basis holds it."""
    if not shard:
        return dldr.DenseSubspace(P)
    lo, hi = dldr.shard_range(P.shape[1], comm.rank, comm.world_size)
    return dldr.CompactSubspace(P[:, lo:hi].clone(), P.shape[1], comm=comm)


def psgd_run(context, shard=False):
    model = small_net()
    params = dldr.trainable_params(model)
    comm = CountingComm(context.comm)
    subspace = make_subspace(orthonormal_rows(D, dldr.flat_params(params).numel(), 1), comm, shard)
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    for x, y in batches(context):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        dldr.project_grads_(params, subspace, comm)
        optimizer.step()
    return dldr.flat_params(params), comm.sent, comm.log, subspace.basis_bytes


def pbfgs_run(context, shard=False, **options):
    model = small_net()
    params = dldr.trainable_params(model)
    comm = CountingComm(context.comm)
    subspace = make_subspace(orthonormal_rows(D, dldr.flat_params(params).numel(), 2), comm, shard)
    optimizer = dldr.PBFGS(params, subspace, comm=comm, **options)
    decisions = []  # per step: (trials so far, sum of accepted step sizes so far)
    for x, y in batches(context):
        optimizer.step(engine.batch_closure(model, [(x, y)], optimizer))
        decisions.append((optimizer.stats['trials'], optimizer.stats['step_size_sum']))
    return dldr.flat_params(params), comm.sent, optimizer.stats, comm.log, decisions


def trajectory():
    g = torch.Generator().manual_seed(9)
    steps = torch.randn(7, 1001, generator=g, dtype=torch.float64).cumsum(0)
    return (steps * torch.linspace(0.1, 3, 1001, dtype=torch.float64)).float()


def basis_run(context):
    return dldr.dldr_basis(trajectory(), 4, max_bytes=8 * 12 * 100, comm=context.comm).P


def basis_block_run(context):
    """This rank's columns as the sharded extraction leaves them (gather=False)."""
    return dldr.dldr_basis(trajectory(), 4, max_bytes=8 * 12 * 100, comm=context.comm,
                           gather=False).P


def storage_run(context):
    """subspace_run's dldr kind with --shard-basis --basis-dtype bf16 (the whole P in 1 process):
    the type built, P's bytes here, and the projection of a fixed vector (a collective when
    sharded: the same on every rank)."""
    import subspace_run
    storage = subspace_run.Storage(shard=context.world_size > 1, dtype='bf16')
    X = trajectory()
    subspace, _ = subspace_run.KINDS['dldr'].build(X, 4, X.shape[1], 0, context.device, 8 * 12 * 100,
                                                   context.comm, storage)
    g = torch.randn(X.shape[1], generator=torch.Generator().manual_seed(3))
    return type(subspace).__name__, subspace.basis_bytes, subspace.project(g)


def all_runs(context):
    return {'psgd': psgd_run(context), 'pbfgs': pbfgs_run(context), 'basis': basis_run(context),
            'psgd_sharded': psgd_run(context, shard=True),
            'pbfgs_sharded': pbfgs_run(context, shard=True), 'basis_block': basis_block_run(context),
            'storage': storage_run(context),
            # the other lifts and coords of a step: residual momentum, same-batch curvature pairs
            'pbfgs_options': pbfgs_run(context, **PBFGS_OPTIONS),
            'pbfgs_options_sharded': pbfgs_run(context, shard=True, **PBFGS_OPTIONS),
            'ddp': ddp_run(context)}  # test_package.py's DDP check (one spawn for both files)


PBFGS_OPTIONS = dict(alpha=0.05, curvature_pairs='same-batch')


@pytest.fixture(scope='module')
def runs(gloo_ranks):
    single = all_runs(distributed.Context(torch.device('cpu')))
    return single, gloo_ranks  # gloo_ranks (conftest.py): scaffold.spawn_local(all_runs, 2)


def test_psgd_two_ranks_equal_one_process(runs):
    single, (rank0, rank1) = runs
    assert torch.equal(rank0['psgd'][0], rank1['psgd'][0])  # bit-identical ranks
    torch.testing.assert_close(rank0['psgd'][0], single['psgd'][0], rtol=0, atol=1e-5)
    assert not torch.equal(single['psgd'][0], dldr.flat_params(dldr.trainable_params(small_net())))


def test_pbfgs_two_ranks_equal_one_process(runs):
    single, (rank0, rank1) = runs
    assert torch.equal(rank0['pbfgs'][0], rank1['pbfgs'][0])
    # same trials, searches, step sizes, losses (captured_sum is each rank's own gradient's)
    shared = [{k: v for k, v in r['pbfgs'][2].items() if k != 'captured_sum'} for r in (rank0, rank1)]
    assert shared[0] == shared[1]
    assert rank0['pbfgs'][2]['trials'] == single['pbfgs'][2]['trials']
    torch.testing.assert_close(rank0['pbfgs'][0], single['pbfgs'][0], rtol=0, atol=1e-5)


def test_bytes_per_step_are_the_coordinates_and_losses(runs):
    _, (rank0, _) = runs
    n = dldr.flat_params(dldr.trainable_params(small_net())).numel()
    assert rank0['psgd'][1] == [D * 4] * STEPS  # P-SGD: the d float32 coordinates, nothing else
    sent, stats = rank0['pbfgs'][1], rank0['pbfgs'][2]
    # P-BFGS: per step one message of d coordinates + the loss, per trial one loss
    assert sent.count((D + 1) * 4) == STEPS and sent.count(4) == stats['trials']
    assert len(sent) == STEPS + stats['trials'] and max(sent) < n * 4 / 100


def test_sharded_basis_equals_one_process_basis(runs):
    single, (rank0, rank1) = runs
    assert torch.equal(rank0['basis'], rank1['basis'])
    cosines = torch.linalg.svdvals(rank0['basis'].double() @ single['basis'].double().T)
    assert (cosines - 1).abs().max() < 1e-6  # principal angles ~0
    # and the subspace is the top-4 principal one (numpy SVD of the centred trajectory)
    w = trajectory().double().numpy()
    vt = np.linalg.svd(w - w.mean(0), full_matrices=False)[2][:4]
    assert np.abs(np.linalg.svd(rank0['basis'].double().numpy() @ vt.T)[1] - 1).max() < 1e-5


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_sharded_basis_psgd_iterates_bytes_and_memory(runs):
    """--shard-basis, 2 gloo ranks: the P-SGD iterates of the whole float32 P in 1 process; per
    step a reduce-scatter and an all-gather of W ceil(n/W) floats and the all-reduce of d; each
    rank holds d ceil(n/W) floats of P."""
    single, (rank0, rank1) = runs
    n, W = dldr.flat_params(dldr.trainable_params(small_net())).numel(), 2
    size = -(-n // W)
    w0 = dldr.flat_params(dldr.trainable_params(small_net()))
    assert torch.equal(rank0['psgd_sharded'][0], rank1['psgd_sharded'][0])
    assert relative_error(rank0['psgd_sharded'][0], single['psgd'][0]) < 1e-5
    assert relative_error(single['psgd'][0], w0) > 1e-3  # the steps moved the weights
    # the displacement itself agrees too (not only the large w)
    assert relative_error(rank0['psgd_sharded'][0] - w0, single['psgd'][0] - w0) < 1e-4
    for rank in (rank0, rank1):
        log = rank['psgd_sharded'][2]
        step = [('reduce_scatter', W * size * 4), ('all_reduce', D * 4), ('all_gather', W * size * 4)]
        assert log == step * STEPS
        assert sum(b for _, b in log) / STEPS == 8 * W * size + 4 * D
    assert n % W == 0 and rank0['psgd_sharded'][3] == rank1['psgd_sharded'][3] == D * n * 4 // W
    assert single['psgd'][3] == D * n * 4  # the whole P, for comparison


def test_sharded_basis_pbfgs_same_iterates_and_line_search_decisions(runs):
    single, (rank0, rank1) = runs
    n, W = dldr.flat_params(dldr.trainable_params(small_net())).numel(), 2
    size = -(-n // W)
    sharded, whole = rank0['pbfgs_sharded'], single['pbfgs']
    assert torch.equal(sharded[0], rank1['pbfgs_sharded'][0])
    assert relative_error(sharded[0], whole[0]) < 1e-5
    assert sharded[4] == whole[4]  # the same trials and accepted step sizes, step by step
    assert whole[4][-1][0] > STEPS  # some steps backtracked: the decisions are not all trivial
    keys = ('trials', 'failed_searches', 'nonfinite_skips', 'curvature_skips', 'step_size_sum')
    assert {k: sharded[2][k] for k in keys} == {k: whole[2][k] for k in keys}
    # per step: reduce-scatter of the gradient, all-reduce of d coordinates + loss, all-gather of
    # the direction; per trial one loss
    log, trials = sharded[3], sharded[2]['trials']
    assert log.count(('reduce_scatter', W * size * 4)) == STEPS
    assert log.count(('all_gather', W * size * 4)) == STEPS
    assert log.count(('all_reduce', (D + 1) * 4)) == STEPS and log.count(('all_reduce', 4)) == trials
    assert len(log) == 3 * STEPS + trials
    assert sum(b for _, b in log) == STEPS * (8 * W * size + 4 * (D + 1)) + 4 * trials


def test_sharded_basis_pbfgs_with_residual_momentum_and_same_batch_pairs(runs):
    single, (rank0, rank1) = runs
    w0 = dldr.flat_params(dldr.trainable_params(small_net()))
    sharded, whole = rank0['pbfgs_options_sharded'], single['pbfgs_options']
    assert torch.equal(sharded[0], rank1['pbfgs_options_sharded'][0])
    assert relative_error(sharded[0], whole[0]) < 1e-5
    assert relative_error(sharded[0] - w0, whole[0] - w0) < 1e-4
    assert sharded[4] == whole[4]
    assert relative_error(whole[0], single['pbfgs'][0]) > 1e-4  # the options changed the steps


def test_unsharded_extraction_block_is_the_gathered_columns(runs):
    single, (rank0, rank1) = runs
    n = trajectory().shape[1]
    for rank, result in enumerate((rank0, rank1)):
        lo, hi = dldr.shard_range(n, rank, 2)
        assert torch.equal(result['basis_block'], result['basis'][:, lo:hi])
    assert torch.equal(single['basis_block'], single['basis'])


def test_run_setup_builds_a_sharded_bf16_basis_projecting_as_the_whole_one(runs):
    single, (rank0, rank1) = runs
    n = trajectory().shape[1]  # 1001: the ranks hold 501 and 500 columns
    assert rank0['storage'][:2] == ('CompactSubspace', 4 * 501 * 2)
    assert rank1['storage'][:2] == ('CompactSubspace', 4 * 500 * 2)
    assert single['storage'][:2] == ('CompactSubspace', 4 * n * 2)
    assert torch.equal(rank0['storage'][2], rank1['storage'][2])
    g = torch.randn(n, generator=torch.Generator().manual_seed(3)).double()
    for result in (rank0, single):  # P^T P g of the gathered float32 P of the same ranks, rounded
        P = result['basis'].bfloat16().double()
        torch.testing.assert_close(result['storage'][2].double(), P.T @ (P @ g), rtol=1e-5, atol=1e-6)


def test_every_image_counted_once_in_sharded_evaluation(runs):
    # (runs fixture: reuse its warm processes is not possible; this one is in-process and cheap)
    x = torch.zeros(11, 3, 4, 4, dtype=torch.uint8)
    y = torch.arange(11)
    seen = []
    for rank in range(3):
        shard = utils.DeviceLoader(x, y, 2, (0,) * 3, (1,) * 3, torch.device('cpu'), train=False,
                                   rank=rank, world_size=3)
        seen += [int(v) for _, yb in shard for v in yb]
    assert sorted(seen) == list(range(11))


def test_training_shards_make_the_global_batches():
    data = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)

    def epoch(rank, world, batch):
        return [yb.tolist() for _, yb in utils.DeviceLoader(
            data, y, batch, (0,), (1,), torch.device('cpu'), train=True,
            generator=torch.Generator().manual_seed(3), rank=rank, world_size=world)]

    whole = epoch(0, 1, 4)
    halves = list(zip(epoch(0, 2, 4), epoch(1, 2, 4)))
    # 10 images, batch 4: [4, 4, 2]; 3 ranks would cut the last batch of 2 to 0 images
    assert [a + b for a, b in halves] == whole
    assert len(epoch(0, 3, 3)) == 3 and sum(len(b) for b in epoch(0, 3, 3)) == 3


# ------------------------------------------------------------------------------- torchrun

SMALL_SGD = ['--datasets', 'synthetic', '--smalldatasets', '0.05', '--arch', 'resnet8', '-p', '0',
             '--device', 'cpu']


def torchrun(*args, nproc=2, **kwargs):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
           str(nproc), *map(str, args)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def test_torchrun_sgd_writes_the_trajectory_once_without_module_prefix(tmp_path):
    proc = torchrun('train_sgd.py', *SMALL_SGD, '--epochs', '2', '--save-dir', tmp_path)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert sorted(os.listdir(tmp_path)) == ['0.pt', '1.pt', '2.pt', 'checkpoint.pt',
                                            'checkpoint_2.pt', 'metrics_sgd.json']
    assert out.count('epoch    2/2') == 1  # rank 0 alone prints
    model_keys = None
    for i in range(3):
        state = torch.load(tmp_path / f'{i}.pt', weights_only=True)
        assert not any(k.startswith('module.') for k in state)
        model_keys = model_keys or list(state)
        assert list(state) == model_keys
    metrics = json.loads((tmp_path / 'metrics_sgd.json').read_text())
    assert metrics['world_size'] == 2 and metrics['batch_per_rank'] == 64
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=True)['world_size'] == 2


def test_torchrun_bad_flag_one_error_line_nonzero_exit(tmp_path):
    start = time.monotonic()
    proc = torchrun('train_sgd.py', *SMALL_SGD, '--batch-size', '3', '--save-dir', tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    ours = [line for line in err.splitlines() if line.startswith('error:')]
    assert ours == ['error: --batch-size 3 (the global batch) must divide evenly over the 2 ranks']
    assert os.listdir(tmp_path) == []


def test_torchrun_killed_rank_ends_the_job_without_truncated_files(tmp_path, small_synthetic_file):
    # train_sgd.py's __main__ through run_script.py: the ranks read the synthetic data generated once
    proc = torchrun(RUNNER, 'package', '--synthetic', small_synthetic_file, 'train_sgd', *SMALL_SGD,
                    '--epochs', '50', '--save-dir', tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / '1.pt').exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        victims = [pid for pid in _children(proc.pid) if _environ(pid).get('RANK') == '1']
        assert victims
        os.kill(victims[0], signal.SIGKILL)
        proc.communicate(timeout=90)  # bounded: torchrun ends the other rank
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    for name in os.listdir(tmp_path):
        if name.endswith('.pt'):
            torch.load(tmp_path / name, weights_only=True)  # complete, loadable
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


def _children(pid):
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                found += [int(entry)] + _children(int(entry))
    return found


def _environ(pid):
    try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            pairs = f.read().split(b'\0')
    except OSError:
        return {}
    return dict(p.decode(errors='replace').split('=', 1) for p in pairs if b'=' in p)
