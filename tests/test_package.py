"""The package ``dldr`` as a library: the scripts bit-identical to the pre-package dldr.py, the
subspace contract (coords = P g, lift = P^T c, communication inside), the optimizers PSGD and
PBFGS (param groups, gradient accumulation, state_dict under weights_only, LBFGS-style closures),
the placement object of the basis builders and the TrajectoryRecorder."""
import io
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dldr
from helpers import CHILD_ENV, PBFGS_ARGS, PSGD_ARGS, ROOT

RUNNER = os.path.join(ROOT, 'tests', 'fixtures', 'run_script.py')


# ------------------------------------------------------------------- scripts: bit-identical

def test_psgd_then_pbfgs_scripts_bit_identical_to_the_pre_package_dldr(sgd_run, tmp_path, small_synthetic_file):
    """The seeded SGD -> P-SGD -> P-BFGS sequence: the same trajectory, then train_psgd.py and
    train_pbfgs.py once with the package and once with the frozen dldr.py of before the split (and
    train_psgd.py's former SGD + project_grads_ hook): the final models are torch.equal.  (Both
    on the synthetic data generated once, 200 test images: the models do not depend on the test
    set.)"""
    folder, _ = sgd_run
    procs, tiny = {}, ['--smalldatasets', '0.02']  # (the last --smalldatasets wins)
    for mode in ('reference', 'package'):  # side by side: one thread each
        save = tmp_path / mode
        shutil.copytree(folder, save)
        procs[mode] = save, subprocess.Popen(
            [sys.executable, RUNNER, mode, '--synthetic', str(small_synthetic_file),
             'train_psgd', *PSGD_ARGS, *tiny, f'--save-dir={save}',
             '--', 'train_pbfgs', *PBFGS_ARGS, *tiny, f'--save-dir={save}', '--max-trials', '5',
             '--curvature-pairs', 'same-batch', '--alpha', '0.01'],
            cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    models = {}
    for mode, (save, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        models[mode] = {tag: torch.load(save / f'{tag}_d2_0-3.pt', weights_only=True)
                        for tag in ('psgd', 'pbfgs')}
    for tag in ('psgd', 'pbfgs'):
        ref, new = models['reference'][tag], models['package'][tag]
        assert ref.keys() == new.keys()
        for key in ref:
            assert torch.equal(ref[key], new[key]), (tag, key)
    start = torch.load(folder / '0.pt', weights_only=True)
    assert not all(torch.equal(start[k], models['package']['pbfgs'][k]) for k in start)


# --------------------------------------------------------------------- the subspace contract

class ThreadComm(dldr.Comm):
    """Ranks as threads of one process (all_reduce_, all_gather_, reduce_scatter_)."""

    def __init__(self, rank, world_size, slots, barrier):
        self.rank, self.world_size, self.slots, self.barrier = rank, world_size, slots, barrier

    def _exchange(self, value):
        self.slots[self.rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def all_reduce_(self, tensor, op='mean'):
        total = sum(v.clone() for v in self._exchange(tensor.clone()))
        return tensor.copy_(total / self.world_size if op == 'mean' else total)

    def all_gather_(self, out, tensor):
        for o, value in zip(out, self._exchange(tensor.clone())):
            o.copy_(value)

    def reduce_scatter_(self, out, inputs, op='sum'):
        total = sum(v[self.rank] for v in self._exchange([x.clone() for x in inputs]))
        return out.copy_(total / self.world_size if op == 'mean' else total)


def on_ranks(world_size, fn):
    import threading
    from concurrent.futures import ThreadPoolExecutor
    slots, barrier = [None] * world_size, threading.Barrier(world_size)
    with ThreadPoolExecutor(world_size) as pool:
        futures = [pool.submit(fn, ThreadComm(r, world_size, slots, barrier)) for r in range(world_size)]
        return [f.result() for f in futures]


def orthonormal_rows(d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64)).Q.T.float().contiguous()


@pytest.mark.parametrize('world', [2, 3])
def test_every_kind_coords_is_P_of_the_mean_gradient_with_the_reduction_inside(world):
    """coords(g_r) = P mean_r g_r on every rank, for the sharded and the whole P, without any
    all-reduce by the caller; lift(c) = P^T c."""
    d, n = 3, 1001
    P = orthonormal_rows(d, n)
    grads = [torch.randn(n, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    mean = torch.stack(grads).double().mean(0)
    c = torch.randn(d)

    def rank_fn(comm):
        lo, hi = dldr.shard_range(n, comm.rank, comm.world_size)
        kinds = {'sharded': dldr.CompactSubspace(P[:, lo:hi].clone(), n, comm=comm),
                 'sharded_bf16': dldr.CompactSubspace(P[:, lo:hi].clone(), n, comm=comm, dtype='bf16'),
                 'dense': dldr.DenseSubspace(P, comm),
                 'whole_compact': dldr.CompactSubspace(P, n, comm=comm, shard=False, dtype='fp16')}
        return {k: (s.coords(grads[comm.rank]), s.lift(c)) for k, s in kinds.items()}

    for result in on_ranks(world, rank_fn):
        for kind, (coords, lifted) in result.items():
            tol = 1e-2 if kind in ('sharded_bf16', 'whole_compact') else 1e-5
            torch.testing.assert_close(coords.double(), P.double() @ mean, atol=tol, rtol=0)
            torch.testing.assert_close(lifted.double(), P.double().T @ c.double(), atol=tol, rtol=0)
    # one process: coords is P g exactly as torch.mv
    g = grads[0]
    assert torch.equal(dldr.DenseSubspace(P).coords(g), torch.mv(P, g))
    assert torch.equal(dldr.CompactSubspace(P, n).coords(g), torch.mv(P, g))


def test_a_second_comm_beside_the_subspaces_own_is_refused():
    def rank_fn(comm):
        lo, hi = dldr.shard_range(40, comm.rank, 2)
        sub = dldr.CompactSubspace(orthonormal_rows(2, 40)[:, lo:hi].clone(), 40, comm=comm)
        other = ThreadComm(comm.rank, 2, [None, None], comm.barrier)
        with pytest.raises(ValueError, match='same Comm'):
            dldr.PSGD([torch.zeros(40, requires_grad=True)], sub, lr=0.1, comm=other)
        return True
    assert on_ranks(2, rank_fn) == [True, True]


# --------------------------------------------------------------------------------- optimizers

def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def data(steps, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(steps)]


class CountingSubspace(dldr.DenseSubspace):
    calls = 0

    def partial_coords(self, g):
        CountingSubspace.calls += 1
        return super().partial_coords(g)


def test_psgd_is_sgd_on_projected_gradients_bit_for_bit():
    net_a, net_b = tiny_net(), tiny_net()
    pa, pb = dldr.trainable_params(net_a), dldr.trainable_params(net_b)
    P = orthonormal_rows(4, dldr.flat_params(pa).numel())
    psgd = dldr.PSGD(pa, P, lr=0.5, momentum=0.9)
    sgd = torch.optim.SGD(pb, lr=0.5, momentum=0.9, weight_decay=0.0)
    for x, y in data(5):
        for net, opt in ((net_a, psgd), (net_b, sgd)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            if opt is sgd:
                dldr.project_grads_(pb, P)
            opt.step()
    assert torch.equal(dldr.flat_params(pa), dldr.flat_params(pb))


def test_psgd_projects_the_accumulated_gradient_once_per_step():
    """4 micro-batches per step: one projection per step, of the summed gradient (= SGD on
    P^T P sum_k g_k); the update lies in span(P)."""
    net, ref = tiny_net(), tiny_net()
    params, ref_params = dldr.trainable_params(net), dldr.trainable_params(ref)
    w0 = dldr.flat_params(params)
    P = orthonormal_rows(3, w0.numel())
    sub = CountingSubspace(P)
    CountingSubspace.calls = 0
    opt = dldr.PSGD(params, sub, lr=0.3, momentum=0.9)
    ref_opt = torch.optim.SGD(ref_params, lr=0.3, momentum=0.9)
    batches = data(12)
    for step in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        for x, y in batches[4 * step:4 * step + 4]:
            (F.cross_entropy(net(x), y) / 4).backward()
            (F.cross_entropy(ref(x), y) / 4).backward()
        opt.step()
        g = dldr.flat_grad(ref_params)
        dldr.set_flat_grad_(ref_params, P.T @ (P @ g))
        ref_opt.step()
    assert CountingSubspace.calls == 3
    assert torch.equal(dldr.flat_params(params), dldr.flat_params(ref_params))
    delta = (dldr.flat_params(params) - w0).double()
    assert (delta - P.double().T @ (P.double() @ delta)).abs().max() < 1e-6 < delta.abs().max()


def test_psgd_param_groups_unprojected_group_and_weight_decay():
    net = tiny_net()
    body, head = list(net[0].parameters()), list(net[2].parameters())
    n = sum(p.numel() for p in body)
    P = orthonormal_rows(2, n)
    opt = dldr.PSGD([{'params': body}, {'params': head, 'projected': False, 'lr': 0.01}], P, lr=0.1)
    assert [g['projected'] for g in opt.param_groups] == [True, False]
    w_body = dldr.flat_params(body)
    x, y = data(1)[0]
    F.cross_entropy(net(x), y).backward()
    head_grad = [p.grad.clone() for p in head]
    head_before = [p.detach().clone() for p in head]
    opt.step()
    delta = (dldr.flat_params(body) - w_body).double()
    assert (delta - P.double().T @ (P.double() @ delta)).abs().max() < 1e-7
    for p, p0, g in zip(head, head_before, head_grad):  # plain SGD, its own lr
        assert torch.equal(p.detach(), p0 - 0.01 * g)
    with pytest.raises(ValueError, match='no weight decay'):
        dldr.PSGD([{'params': body, 'weight_decay': 1e-4}], P, lr=0.1)
    with pytest.raises(ValueError, match='lives in R'):
        dldr.PSGD(body + head, dldr.DenseSubspace(P), lr=0.1)


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def closure_for(net, opt, x, y, lbfgs_style=False):
    def closure():
        loss = F.cross_entropy(net(x), y)
        if lbfgs_style or torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss
    return closure


@pytest.mark.parametrize('kind', ['psgd', 'pbfgs'])
def test_state_dict_reloads_under_weights_only_and_resumes_bit_identically(kind):
    def make(net):
        params = dldr.trainable_params(net)
        P = orthonormal_rows(3, dldr.flat_params(params).numel())
        if kind == 'psgd':
            return dldr.PSGD(params, P, lr=0.2, momentum=0.9)
        return dldr.PBFGS(params, P, alpha=0.01, max_trials=4)

    def train(net, opt, batches):
        for x, y in batches:
            if kind == 'psgd':
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
            else:
                opt.step(closure_for(net, opt, x, y))

    batches = data(6)
    net_a = tiny_net()
    opt_a = make(net_a)
    train(net_a, opt_a, batches)
    net_b = tiny_net()
    opt_b = make(net_b)
    train(net_b, opt_b, batches[:3])
    saved_model, saved_opt = roundtrip(net_b.state_dict()), roundtrip(opt_b.state_dict())
    net_c = tiny_net(seed=5)
    net_c.load_state_dict(saved_model)
    opt_c = make(net_c)
    opt_c.load_state_dict(saved_opt)
    train(net_c, opt_c, batches[3:])
    assert torch.equal(dldr.flat_params(net_a.parameters()), dldr.flat_params(net_c.parameters()))
    assert saved_opt['param_groups'][0]['subspace_dim'] == 3
    other = dldr.PSGD(dldr.trainable_params(tiny_net()), orthonormal_rows(2, 83), lr=0.1)
    with pytest.raises(ValueError, match='3-dimensional subspace'):
        other.load_state_dict(saved_opt)


def test_pbfgs_takes_an_lbfgs_style_closure_and_keeps_cheap_trials_for_the_other():
    """A closure that always backpropagates (torch.optim.LBFGS's convention) gives the same
    iterates as one that backpropagates only with grad enabled; the latter's trials stay forward
    passes (no backward)."""
    results, backwards = {}, {}
    for style in (False, True):
        net = tiny_net()
        params = dldr.trainable_params(net)
        opt = dldr.PBFGS(params, orthonormal_rows(4, dldr.flat_params(params).numel()), max_trials=6)
        count = [0]
        for p in params:
            p.register_hook(lambda g, count=count: count.__setitem__(0, count[0] + 1) or g)
        for x, y in data(5):
            opt.step(closure_for(net, opt, x, y, lbfgs_style=style))
        results[style], backwards[style] = dldr.flat_params(params), count[0] / len(params)
        assert opt.param_groups[0]['trial_grad'] is (True if style else None)
        trials = opt.stats['trials']
    assert torch.equal(results[False], results[True])
    assert backwards[False] == 5  # one backward per step
    assert backwards[True] == 5 + trials  # and one per trial (the failed no_grad try ran none)
    net = tiny_net()
    opt = dldr.PBFGS(dldr.trainable_params(net), orthonormal_rows(4, 83), trial_grad=False)
    with pytest.raises(RuntimeError):
        opt.step(closure_for(net, opt, *data(1)[0], lbfgs_style=True))


# ----------------------------------------------------------------- placement and the recorder

def test_builders_take_one_placement_object_and_the_former_keywords():
    X = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)).cumsum(0)
    place = dldr.Placement(max_bytes=8 * 12 * 50)
    assert torch.equal(dldr.dldr_basis(X, 3, place).P, dldr.dldr_basis(X, 3, max_bytes=8 * 12 * 50).P)
    assert torch.equal(dldr.twa_basis(X, 3, place), dldr.twa_basis(X, 3, max_bytes=8 * 12 * 50))
    assert torch.equal(dldr.random_basis(3, 500, 7, place), dldr.random_basis(3, 500, 7, max_bytes=8 * 12 * 50))
    assert dldr.Placement.of(place, gather=False).shard and dldr.Placement.of(comm=dldr.LOCAL).gather
    assert type(dldr.Placement(dtype='bf16').subspace(dldr.twa_basis(X, 3), 500)) is dldr.CompactSubspace
    with pytest.raises(TypeError):
        dldr.dldr_basis(X, 3, devise='cpu')


def test_trajectory_recorder_memory_and_the_train_sgd_folder_layout(tmp_path):
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    memory = dldr.TrajectoryRecorder(net, every=2)
    folder = dldr.TrajectoryRecorder(net, every=2, folder=tmp_path / 'traj')
    for r in (memory, folder):
        r.snapshot()
    for x, y in data(8):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        assert memory.step() == folder.step()
    assert len(memory) == len(folder) == 5
    assert sorted(os.listdir(tmp_path / 'traj')) == [f'{k}.pt' for k in range(5)]
    state = torch.load(tmp_path / 'traj' / '4.pt', weights_only=True)  # a state_dict, as train_sgd.py
    assert state.keys() == net.state_dict().keys()
    for a, b in zip(memory.snapshots, dldr.load_trajectory(tmp_path / 'traj', net)):
        assert torch.equal(a, b[0:len(b)])
    assert torch.equal(dldr.dldr_basis(memory.snapshots, 3).P,
                       dldr.dldr_basis(folder.snapshots, 3, max_bytes=8 * 12 * 10).P) or \
        torch.allclose(dldr.dldr_basis(memory.snapshots, 3).P.abs(),
                       dldr.dldr_basis(folder.snapshots, 3, max_bytes=8 * 12 * 10).P.abs(), atol=1e-5)
    # numbering continues a folder's trajectory; every N epochs
    more = dldr.TrajectoryRecorder(net, every=3, unit='epoch', folder=tmp_path / 'traj')
    assert [more.epoch_end() for _ in range(6)] == [False, False, True] * 2
    assert sorted(os.listdir(tmp_path / 'traj'))[-2:] == ['5.pt', '6.pt']
    assert not more.step()


# ------------------------------------------------------------------------------- DDP, 2 ranks

def ddp_run(context):
    """PSGD and PBFGS on a DDP-wrapped model (2 gloo ranks, half the global batch each) or the
    plain model (1 process, the whole batch): the optimizers see DDP's averaged gradient."""
    import distributed
    results = {}
    for kind in ('psgd', 'pbfgs'):
        net = tiny_net()
        params = dldr.trainable_params(net)
        P = orthonormal_rows(4, dldr.flat_params(params).numel(), seed=3)
        model = net
        if context.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(net)
        if kind == 'psgd':
            opt = dldr.PSGD(params, P, lr=0.5, momentum=0.9)  # unchanged under DDP: no comm
        else:  # the line search compares losses: their rank-mean needs the comm
            comm = distributed.DistComm() if context.world_size > 1 else dldr.LOCAL
            opt = dldr.PBFGS(params, P, max_trials=5, comm=comm)
        for x, y in data(4, batch=16, seed=7):
            x, y = x[context.rank::context.world_size], y[context.rank::context.world_size]
            if kind == 'psgd':
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            else:
                opt.step(closure_for(model, opt, x, y, lbfgs_style=True))
        results[kind] = dldr.flat_params(params)
    return results


def test_ddp_two_gloo_ranks_equal_one_process(gloo_ranks):
    import distributed
    single = ddp_run(distributed.Context(torch.device('cpu')))
    # ddp_run on 2 spawned gloo ranks: part of test_distributed.all_runs (one spawn, conftest.py)
    rank0, rank1 = (ranks['ddp'] for ranks in gloo_ranks)
    w0 = dldr.flat_params(dldr.trainable_params(tiny_net()))
    for kind in ('psgd', 'pbfgs'):
        assert torch.equal(rank0[kind], rank1[kind])
        torch.testing.assert_close(rank0[kind], single[kind], rtol=0, atol=1e-5)
        assert (single[kind] - w0).abs().max() > 1e-3
