"""Tests of dldr.py against independent computations (numpy SVD, hand-written BFGS formulas,
closed-form minimisers)."""
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dldr

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def structured_trajectory(t, n, scales, seed=0, offset=0.0, spread=1.0):
    """(t, n) float32 snapshots: offset + spread * (random point + Σ_k a_ik scale_k q_k), q_k orthonormal."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(n, len(scales), generator=g, dtype=F64))[0].T
    coeffs = torch.randn(t, len(scales), generator=g, dtype=F64) * torch.tensor(scales, dtype=F64)
    base = torch.randn(n, generator=g, dtype=F64)
    return (offset + spread * (base + coeffs @ directions)).float()


def numpy_pca(X):
    """Principal directions (rows) and all squared singular values of the centred trajectory."""
    W = X.double().numpy()
    W = W - W.mean(axis=0)
    _, S, Vt = np.linalg.svd(W, full_matrices=False)
    return Vt, S ** 2


def random_orthonormal_rows(d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))[0].T.contiguous().float()


def orthonormality_error(P):
    P = P.double()
    return (P @ P.T - torch.eye(P.shape[0], dtype=F64)).abs().max().item()


class RecordingSnapshot:
    """A lazily sliced snapshot that logs every slice it serves."""

    def __init__(self, data, log):
        self.data, self.log = data, log

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.log.append((index.start, index.stop))
        return self.data[index]


def logistic_problem(seed=0, batchnorm=False, x_scale=1.0):
    """A small convex classification problem: (model, inputs, labels)."""
    g = torch.Generator().manual_seed(seed)
    x = x_scale * torch.randn(64, 10, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    layers = [nn.BatchNorm1d(10, affine=False)] if batchnorm else []
    model = nn.Sequential(*layers, nn.Linear(10, 3))
    return model, x, y


def make_closure(model, x, y):
    """The closure convention of PBFGS.step for cross-entropy on one batch."""
    def closure():
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            model.zero_grad()
            loss.backward()
        return loss
    return closure


def loss_and_grad(model, x, y, w):
    """Loss and flat gradient of a copy of ``model`` at flat weights ``w`` (independent of the optimizer)."""
    model = copy.deepcopy(model)
    params = dldr.trainable_params(model)
    dldr.set_flat_params_(params, w)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([gr.reshape(-1) for gr in grads])


def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


# ---------------------------------------------------------------------------------------------
# flat vectors
# ---------------------------------------------------------------------------------------------

def test_flat_vectors_follow_named_parameters_and_skip_buffers_and_frozen():
    model = bn_model()
    model[3].bias.requires_grad_(False)
    params = dldr.trainable_params(model)
    expected = [p for name, p in model.named_parameters() if name != '3.bias']
    assert len(params) == len(expected) and all(a is b for a, b in zip(params, expected))
    flat = dldr.flat_params(params)
    assert flat.dtype == torch.float32
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in expected]))
    assert flat.numel() == 6 * 8 + 8 + 8 + 8 + 8 * 3  # BN running stats are not included

    new = torch.arange(flat.numel(), dtype=torch.float32)
    dldr.set_flat_params_(params, new)
    assert torch.equal(dldr.flat_params(params), new)
    assert torch.equal(model[0].weight[1], new[6:12])  # row-major layout
    assert flat.sum() != new.sum()  # flat_params returned a copy

    model(torch.randn(5, 6)).sum().backward()
    model[1].weight.grad = None
    grad = dldr.flat_grad(params)
    assert torch.equal(grad[56:64], torch.zeros(8))  # BN weight: grad None -> zeros
    assert torch.equal(grad[:48], model[0].weight.grad.reshape(-1))
    dldr.set_flat_grad_(params, -new)
    assert torch.equal(model[1].weight.grad, -new[56:64])
    assert torch.equal(dldr.flat_grad(params), -new)
    with pytest.raises(ValueError, match='flat vector of 96'):
        dldr.set_flat_params_(params, new[:-1])


def test_subspace_coords_lift_project_match_numpy():
    P = random_orthonormal_rows(3, 50, seed=1)
    g = torch.randn(50)
    sub = dldr.DenseSubspace(P)
    Pn, gn = P.double().numpy(), g.double().numpy()
    np.testing.assert_allclose(sub.coords(g).numpy(), Pn @ gn, atol=1e-5)
    np.testing.assert_allclose(sub.lift(g[:3]).numpy(), Pn.T @ gn[:3], atol=1e-5)
    np.testing.assert_allclose(sub.project(g).numpy(), Pn.T @ (Pn @ gn), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Algorithm 1: basis
# ---------------------------------------------------------------------------------------------

SCALES = [10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


def test_basis_matches_numpy_svd():
    t, n, d = 12, 2000, 5
    X = structured_trajectory(t, n, SCALES)
    basis = dldr.dldr_basis(X, d)
    Vt, sq = numpy_pca(X)

    assert basis.P.shape == (d, n) and basis.P.dtype == torch.float32
    assert basis.n_components == d and basis.n_snapshots == t
    cosines = np.linalg.svd(basis.P.double().numpy() @ Vt[:d].T, compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)  # principal angles ~ 0
    # distinct eigenvalues: each row equals the numpy direction up to sign
    np.testing.assert_allclose(np.abs(np.sum(basis.P.double().numpy() * Vt[:d], axis=1)), 1.0, atol=1e-5)
    assert orthonormality_error(basis.P) < 1e-5

    assert basis.eigenvalues.dtype == F64 and basis.eigenvalues.shape == (t,)
    np.testing.assert_allclose(basis.eigenvalues.numpy(), sq, rtol=1e-8, atol=1e-9 * sq[0])
    np.testing.assert_allclose(basis.explained_variance_ratio.numpy(), (sq / sq.sum())[:d], atol=1e-5)
    np.testing.assert_allclose(basis.singular_values.numpy(), np.sqrt(sq[:d]), rtol=1e-6)


def test_streaming_chunks_give_the_same_basis_and_touch_one_chunk_at_a_time():
    t, n, d = 12, 2000, 5
    X = structured_trajectory(t, n, SCALES, seed=3)
    whole = dldr.dldr_basis(X, d, max_bytes=1 << 30)

    log = []
    snapshots = [RecordingSnapshot(row.clone(), log) for row in X]
    max_bytes = 8 * (t + 2 * d + 1) * 37  # 37 coordinates per chunk: 2000 = 54 * 37 + 2
    streamed = dldr.dldr_basis(snapshots, d, max_bytes=max_bytes)

    ranges = sorted(set(log))
    assert len(ranges) == 55 and ranges[0][0] == 0 and ranges[-1] == (1998, 2000)
    assert all(a_stop == b_start for (_, a_stop), (b_start, _) in zip(ranges, ranges[1:]))
    assert max(stop - start for start, stop in ranges) * t * 8 <= max_bytes
    assert len(log) == 2 * t * len(ranges)  # two passes, every snapshot sliced per chunk

    signs = torch.sign((streamed.P * whole.P).sum(dim=1, keepdim=True))
    torch.testing.assert_close(streamed.P * signs, whole.P, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.eigenvalues, whole.eigenvalues, rtol=1e-10, atol=1e-12)


def test_snapshots_of_other_dtypes_and_numpy_arrays():
    t, n, d = 8, 300, 3
    X = structured_trajectory(t, n, SCALES[:7], seed=4)
    reference = dldr.dldr_basis(X, d)
    from_numpy = dldr.dldr_basis([row.numpy() for row in X], d, max_bytes=5000)
    from_double = dldr.dldr_basis([row.double() for row in X], d, device='cpu')
    for basis in (from_numpy, from_double):
        assert basis.P.dtype == torch.float32
        torch.testing.assert_close(basis.P.abs(), reference.P.abs(), atol=1e-5, rtol=0)


def test_large_common_offset_keeps_ratios_accurate():
    t, n, d = 10, 2000, 3
    X = structured_trajectory(t, n, [3.0, 2.0, 1.0, 0.5], seed=5, offset=1e3, spread=1e-3)
    basis = dldr.dldr_basis(X, d, max_bytes=8 * (t + 2 * d + 1) * 333)
    Vt, sq = numpy_pca(X)  # float64 SVD of the same float32 data
    np.testing.assert_allclose(basis.explained_variance_ratio.numpy(), (sq / sq.sum())[:d], atol=1e-5)
    cosines = np.linalg.svd(basis.P.double().numpy() @ Vt[:d].T, compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)
    assert orthonormality_error(basis.P) < 1e-5


def test_small_last_component_rows_stay_orthonormal():
    # λ_d / λ_1 ~ 3e-10: without the final re-orthonormalisation P P^T - I would be ~5e-6 here
    t, n, d = 12, 20000, 5
    X = structured_trajectory(t, n, [1.0, 1.0, 1.0, 1.0, 1.5e-5], seed=1)
    basis = dldr.dldr_basis(X, d)
    assert dldr.RANK_RTOL < basis.eigenvalues[d - 1] / basis.eigenvalues[0] < 1e-9
    assert orthonormality_error(basis.P) < 1e-7
    Vt, _ = numpy_pca(X)
    cosines = np.linalg.svd(basis.P.double().numpy() @ Vt[:d].T, compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)


def test_basis_errors():
    X = structured_trajectory(6, 100, SCALES[:6])
    with pytest.raises(ValueError, match=r'n_components=6 must be < t=6.*rank <= t-1'):
        dldr.dldr_basis(X, 6)
    with pytest.raises(ValueError, match='n_components must be >= 1, got 0'):
        dldr.dldr_basis(X, 0)
    with pytest.raises(ValueError, match='snapshot 0 has 100 entries, snapshot 2 has 99'):
        dldr.dldr_basis([X[0], X[1], X[2, :99], X[3]], 2)
    with pytest.raises(ValueError, match=r'2-D \(t, n\)'):
        dldr.dldr_basis(X[0], 1)
    duplicated = torch.cat([X[:3], X[:3]])  # 6 snapshots, centred rank 2
    dldr.dldr_basis(duplicated, 2)
    with pytest.raises(ValueError, match='eigenvalue 3 of the centred Gram matrix is ~0'):
        dldr.dldr_basis(duplicated, 3)
    with pytest.raises(ValueError, match='non-finite'):
        dldr.dldr_basis(torch.cat([X[:5], torch.full((1, 100), float('nan'))]), 2)


# ---------------------------------------------------------------------------------------------
# P-SGD
# ---------------------------------------------------------------------------------------------

def test_psgd_iterates_stay_in_affine_subspace():
    model = bn_model(seed=2)
    params = dldr.trainable_params(model)
    w_start = dldr.flat_params(params).double()
    P = random_orthonormal_rows(5, w_start.numel(), seed=2)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    for _ in range(40):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        dldr.project_grads_(params, P)
        optimizer.step()
    delta = dldr.flat_params(params).double() - w_start
    Pd = P.double()
    outside = delta - Pd.T @ (Pd @ delta)
    assert delta.norm() > 0.1  # it moved
    assert outside.abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Algorithm 2: P-BFGS
# ---------------------------------------------------------------------------------------------

def test_pbfgs_two_steps_match_hand_computation():
    model, x, y = logistic_problem(seed=0, x_scale=5.0)  # strong curvature: the first step backtracks
    params = dldr.trainable_params(model)
    n, d, sigma, rho = 33, 4, 0.4, 0.4
    P = random_orthonormal_rows(d, n, seed=0)
    Pn = P.double().numpy()
    optimizer = dldr.PBFGS(params, P, sigma=sigma, rho=rho)
    closure = make_closure(model, x, y)

    def check_armijo_step(w_before, w_after, g_tilde, B):
        """The step is α p with p = -B g~, α = ρ^k the first step length satisfying Armijo."""
        p = -B @ g_tilde
        s = Pn @ (w_after - w_before)
        step_size = s @ p / (p @ p)
        k = round(np.log(step_size) / np.log(rho))
        assert step_size == pytest.approx(rho ** k, rel=1e-4)
        np.testing.assert_allclose(s, rho ** k * p, rtol=1e-4, atol=1e-7)
        f0 = loss_and_grad(model, x, y, torch.from_numpy(w_before).float())[0]

        def f_at(a):
            return loss_and_grad(model, x, y, torch.from_numpy(w_before + a * Pn.T @ p).float())[0]

        slope = g_tilde @ p
        assert f_at(rho ** k) < f0 + sigma * rho ** k * slope
        for j in range(k):
            assert f_at(rho ** j) >= f0 + sigma * rho ** j * slope
        return s, k

    w0 = dldr.flat_params(params).double().numpy()
    g_tilde0 = Pn @ loss_and_grad(model, x, y, dldr.flat_params(params))[1].double().numpy()
    optimizer.step(closure)
    w1 = dldr.flat_params(params).double().numpy()
    s0, k0 = check_armijo_step(w0, w1, g_tilde0, np.eye(d))
    np.testing.assert_array_equal(optimizer.state[params[0]]['B'].numpy(), np.eye(d))

    g_tilde1 = Pn @ loss_and_grad(model, x, y, dldr.flat_params(params))[1].double().numpy()
    optimizer.step(closure)
    w2 = dldr.flat_params(params).double().numpy()
    yv = g_tilde1 - g_tilde0
    r = 1.0 / (yv @ s0)
    V = np.eye(d) - r * np.outer(yv, s0)
    B_expected = V.T @ np.eye(d) @ V + r * np.outer(s0, s0)
    B = optimizer.state[params[0]]['B']
    assert B.dtype == F64
    np.testing.assert_allclose(B.numpy(), B_expected, rtol=1e-4, atol=1e-6)
    check_armijo_step(w1, w2, g_tilde1, B_expected)
    assert k0 >= 1  # the backtracking branch was exercised
    assert optimizer.stats['steps'] == 2 and optimizer.stats['failed_searches'] == 0


@pytest.mark.parametrize('pairs', ['consecutive', 'same-batch'])
def test_pbfgs_curvature_pairs_by_hand(pairs):
    """Two steps on two different mini-batches.  B after the second step's update is the BFGS
    update from s_0 and y = g~_1(w_1) - g~_0(w_0) (consecutive: two batches) or
    y = g~_0(w_1) - g~_0(w_0) (same-batch: batch 0 at the new point), computed here by hand; the
    stats see one counted curvature pair and the losses before / after each step."""
    model, x, y = logistic_problem(seed=3, x_scale=2.0)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    params = dldr.trainable_params(model)
    d = 4
    P = random_orthonormal_rows(d, 33, seed=3)
    Pn = P.double().numpy()
    optimizer = dldr.PBFGS(params, P, curvature_pairs=pairs)

    def coords_at(w, batch):
        return Pn @ loss_and_grad(model, *batch, torch.from_numpy(w).float())[1].double().numpy()

    w0 = dldr.flat_params(params).double().numpy()
    gradients = []
    closures = [make_closure(model, *b) for b in batches]
    for k in range(2):
        def closure(k=k):
            if torch.is_grad_enabled():
                gradients.append(k)
            return closures[k]()
        optimizer.step(closure)
        if k == 0:
            w1 = dldr.flat_params(params).double().numpy()
    s0 = Pn @ (w1 - w0)
    assert np.abs(s0).max() > 1e-4
    y_expected = coords_at(w1, batches[1 if pairs == 'consecutive' else 0]) - coords_at(w0, batches[0])
    r = 1.0 / (y_expected @ s0)
    V = np.eye(d) - r * np.outer(y_expected, s0)
    B_expected = V.T @ V + r * np.outer(s0, s0)
    np.testing.assert_allclose(optimizer.state[params[0]]['B'].numpy(), B_expected, rtol=1e-4, atol=1e-6)
    # same-batch pairs cost a second gradient on the step's batch after each accepted step
    assert gradients == ([0, 1] if pairs == 'consecutive' else [0, 0, 1, 1])
    stats = optimizer.stats
    assert stats['curvature_skips'] == 0 and stats['steps'] == 2 and stats['failed_searches'] == 0
    f0 = loss_and_grad(model, *batches[0], torch.from_numpy(w0).float())[0]
    f1 = loss_and_grad(model, *batches[1], torch.from_numpy(w1).float())[0]
    assert stats['loss_sum'] == pytest.approx(f0 + f1, rel=1e-5)
    f0_after = loss_and_grad(model, *batches[0], torch.from_numpy(w1).float())[0]
    assert f0_after < f0 and stats['accepted_loss_sum'] > f0_after
    # |P g|^2 / |g|^2 at both evaluation points (P has orthonormal rows), summed
    fractions = [np.sum((Pn @ g) ** 2) / np.sum(g ** 2) for g in
                 (loss_and_grad(model, *batches[k], torch.from_numpy(w).float())[1].double().numpy()
                  for k, w in ((0, w0), (1, w1)))]
    assert stats['captured_sum'] == pytest.approx(sum(fractions), rel=1e-4)
    # the consistency of the two steps' subspace gradients: |g0 + g1|^2 / (2 (|g0|^2 + |g1|^2))
    g_tildes = [coords_at(w0, batches[0]), coords_at(w1, batches[1])]
    signal = np.sum(sum(g_tildes) ** 2) / (2 * sum(np.sum(g ** 2) for g in g_tildes))
    assert optimizer.reset_stats()['gradient_signal'] == pytest.approx(signal, rel=1e-4)
    assert np.isnan(optimizer.reset_stats()['gradient_signal'])  # no step since the reset


def test_pbfgs_counts_a_pair_of_negative_curvature_as_skipped():
    """Consecutive pairs from two mini-batches can have y^T s < 0 (no curvature: sampling noise);
    such a pair leaves B alone and is counted."""
    model, x, y = logistic_problem(seed=4)
    params = dldr.trainable_params(model)
    P = random_orthonormal_rows(3, 33, seed=4)
    optimizer = dldr.PBFGS(params, P)
    g0 = loss_and_grad(model, x, y, dldr.flat_params(params))[1].float()
    optimizer.step(make_closure(model, x, y))  # B = I: s = -α P g0 (P^T), so g~_0^T s < 0
    views = [g.view_as(p) for g, p in zip(g0.split([p.numel() for p in params]), params)]

    def steeper():  # a "batch" whose gradient is 3 g0 everywhere: y = 2 g~_0, y^T s = 2 g~_0^T s < 0
        loss = 3.0 * sum((p * v).sum() for p, v in zip(params, views))
        if torch.is_grad_enabled():
            model.zero_grad()
            loss.backward()
        return loss
    optimizer.step(steeper)
    assert optimizer.stats['curvature_skips'] == 1
    np.testing.assert_array_equal(optimizer.state[params[0]]['B'].numpy(), np.eye(3))
    with pytest.raises(ValueError, match='curvature_pairs'):
        dldr.PBFGS(params, P, curvature_pairs='other')


class QuadraticModel(nn.Module):
    """f(w) = ½ (w - w*)^T A (w - w*), evaluated in float64."""

    def __init__(self, n, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
        self.A = Q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=F64)) @ Q.T
        self.w_star = torch.randn(n, generator=g, dtype=F64)
        self.w = nn.Parameter(torch.randn(n, generator=g))

    def forward(self):
        e = self.w.double() - self.w_star
        return 0.5 * e @ (self.A @ e)


def test_pbfgs_reaches_restricted_minimiser_of_quadratic():
    n, d = 40, 6
    model = QuadraticModel(n)
    P = random_orthonormal_rows(d, n, seed=7)
    w0 = model.w.detach().double().clone()
    optimizer = dldr.PBFGS(model.parameters(), P)

    def closure():
        loss = model()
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
        return loss

    Pd = P.double()
    c_star = torch.linalg.solve(Pd @ model.A @ Pd.T, Pd @ model.A @ (model.w_star - w0))
    w_opt = w0 + Pd.T @ c_star
    for _ in range(25):
        optimizer.step(closure)
    error = (model.w.detach().double() - w_opt).norm() / (w_opt - w0).norm()
    assert error < 1e-5
    assert optimizer.stats['nonfinite_skips'] == 0


def test_pbfgs_trials_restore_weights_and_buffers_exactly():
    model = bn_model(seed=3)
    params = dldr.trainable_params(model)
    buffers = list(model.buffers())
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    P = random_orthonormal_rows(4, dldr.flat_params(params).numel(), seed=3)
    optimizer = dldr.PBFGS(params, P, buffers=buffers, max_trials=5)
    w_before = [p.detach().clone() for p in params]
    seen = {'after_eval': None, 'at_trials': []}

    def failing_closure():
        at_entry = [b.clone() for b in buffers]
        loss = F.cross_entropy(model(x), y)  # train mode: updates BN running stats
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
            seen['after_eval'] = [b.clone() for b in buffers]
            seen['loss'] = loss.detach()
            return loss
        seen['at_trials'].append((at_entry, [p.detach().clone() for p in params]))
        return loss + 1e3  # every trial fails the Armijo test

    optimizer.step(failing_closure)
    assert len(seen['at_trials']) == 5
    stats = dict(optimizer.stats)
    assert stats.pop('loss_sum') == pytest.approx(seen['loss'].item())  # f at w, counted once
    assert 0 < stats.pop('captured_sum') < 1
    assert stats == {'steps': 1, 'trials': 5, 'failed_searches': 1, 'nonfinite_skips': 0,
                     'step_size_sum': 0, 'curvature_skips': 0, 'accepted_loss_sum': 0}
    for at_entry, trial_params in seen['at_trials']:
        assert all(torch.equal(a, b) for a, b in zip(at_entry, seen['after_eval']))
        assert not all(torch.equal(a, b) for a, b in zip(trial_params, w_before))  # trials moved
    assert all(torch.equal(p, w) for p, w in zip(params, w_before))
    assert all(torch.equal(b, e) for b, e in zip(buffers, seen['after_eval']))
    assert torch.count_nonzero(optimizer.state[params[0]]['prev_step']) == 0

    def closure():
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
            seen['after_eval'] = [b.clone() for b in buffers]
        else:
            seen['trial_weights'] = dldr.flat_params(params)
        return loss

    optimizer.step(closure)  # a successful search
    assert optimizer.stats['failed_searches'] == 1 and optimizer.stats['trials'] >= 6
    assert torch.equal(dldr.flat_params(params), seen['trial_weights'])  # the accepted trial point
    assert all(torch.equal(b, e) for b, e in zip(buffers, seen['after_eval']))
    assert int(buffers[-1]) == 2  # num_batches_tracked counts only the two gradient evaluations


@pytest.mark.parametrize('where', ['loss', 'grad'])
def test_pbfgs_nonfinite_step_is_skipped_and_resets_curvature(where):
    model, x, y = logistic_problem(seed=1, batchnorm=True)
    params = dldr.trainable_params(model)
    buffers = list(model.buffers())
    P = random_orthonormal_rows(4, 33, seed=1)
    optimizer = dldr.PBFGS(params, P, buffers=buffers, alpha=0.1)
    good = make_closure(model, x, y)
    optimizer.step(good)
    optimizer.step(good)
    state = optimizer.state[params[0]]
    assert not torch.equal(state['B'], torch.eye(4, dtype=F64))
    w_before = [p.detach().clone() for p in params]
    buffers_before = [b.clone() for b in buffers]
    trials_before = optimizer.stats['trials']

    def bad():
        loss = F.cross_entropy(model(x), y)
        if where == 'loss':
            loss = loss * float('nan')
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
            if where == 'grad':
                params[0].grad[0, 0] = float('inf')
        return loss

    optimizer.step(bad)
    assert all(torch.equal(p, w) for p, w in zip(params, w_before))
    assert all(torch.equal(b, e) for b, e in zip(buffers, buffers_before))
    assert torch.isfinite(dldr.flat_params(params)).all()
    assert torch.equal(state['B'], torch.eye(4, dtype=F64))
    assert 'prev_coords' not in state and 'prev_step' not in state
    assert optimizer.stats['nonfinite_skips'] == 1 and optimizer.stats['trials'] == trials_before

    optimizer.step(good)  # training resumes; first step after the reset does not update B
    assert torch.equal(state['B'], torch.eye(4, dtype=F64))
    assert not all(torch.equal(p, w) for p, w in zip(params, w_before))


def test_pbfgs_residual_momentum_matches_formula():
    alpha, gamma, d, n = 0.5, 0.9, 4, 33
    P = random_orthonormal_rows(d, n, seed=4)
    Pn = P.double().numpy()
    runs = {}
    for a in (0.0, alpha):
        model, x, y = logistic_problem(seed=4)
        params = dldr.trainable_params(model)
        optimizer = dldr.PBFGS(params, P, alpha=a, gamma=gamma)
        closure = make_closure(model, x, y)
        w = [dldr.flat_params(params).double().numpy()]
        grads = []
        for _ in range(2):
            grads.append(loss_and_grad(model, x, y, dldr.flat_params(params))[1].double().numpy())
            optimizer.step(closure)
            w.append(dldr.flat_params(params).double().numpy())
        runs[a] = w, grads, optimizer

    (w_plain, _, plain), (w_mom, g_mom, mom) = runs[0.0], runs[alpha]
    residual = [g - Pn.T @ (Pn @ g) for g in g_mom]
    # step 1 from the same point: same subspace step, minus alpha * M_1 with M_1 = r_1
    np.testing.assert_allclose(w_mom[1], w_plain[1] - alpha * residual[0], atol=1e-6)
    # step 2: the part outside the subspace is -alpha * M_2, M_2 = gamma r_1 + r_2
    move = w_mom[2] - w_mom[1]
    np.testing.assert_allclose(move - Pn.T @ (Pn @ move), -alpha * (gamma * residual[0] + residual[1]),
                               atol=1e-6)
    np.testing.assert_allclose(mom.state[mom._params[0]]['residual_momentum'].numpy(),
                               gamma * residual[0] + residual[1], atol=1e-6)
    assert 'residual_momentum' not in plain.state[plain._params[0]]
    assert np.abs(residual[0]).max() > 1e-3  # the momentum term is not trivially zero


def test_pbfgs_state_dict_round_trip():
    def setup():
        model, x, y = logistic_problem(seed=5)
        P = random_orthonormal_rows(4, 33, seed=5)
        optimizer = dldr.PBFGS(dldr.trainable_params(model), P, alpha=0.1)
        return model, optimizer, make_closure(model, x, y)

    model_a, opt_a, closure_a = setup()
    for _ in range(3):
        opt_a.step(closure_a)
    buffer = io.BytesIO()
    torch.save({'model': model_a.state_dict(), 'opt': opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model_b, opt_b, closure_b = setup()
    model_b.load_state_dict(saved['model'])
    opt_b.load_state_dict(saved['opt'])
    state_a, state_b = opt_a.state[opt_a._params[0]], opt_b.state[opt_b._params[0]]
    assert not torch.equal(state_a['B'], torch.eye(4, dtype=F64))
    assert set(state_a) == set(state_b) == {'B', 'prev_coords', 'prev_step', 'residual_momentum'}
    for key in state_a:
        assert state_b[key].dtype == state_a[key].dtype and torch.equal(state_b[key], state_a[key])
    opt_a.step(closure_a)
    opt_b.step(closure_b)
    assert torch.equal(dldr.flat_params(opt_a._params), dldr.flat_params(opt_b._params))


def test_pbfgs_stats_reset_and_argument_checks():
    model, x, y = logistic_problem(seed=6)
    params = dldr.trainable_params(model)
    P = random_orthonormal_rows(3, 33, seed=6)
    optimizer = dldr.PBFGS(params, P)
    optimizer.step(make_closure(model, x, y))
    stats = optimizer.reset_stats()
    assert stats['steps'] == 1 and stats['trials'] >= 1
    assert optimizer.stats == dict.fromkeys(dldr.STAT_KEYS, 0)
    with pytest.raises(ValueError, match=r'P must have shape \(d, 33\)'):
        dldr.PBFGS(params, P[:, :30])
    with pytest.raises(ValueError, match='sigma must be in'):
        dldr.PBFGS(params, P, sigma=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    t, n, d = 12, 2000, 5
    X = structured_trajectory(t, n, SCALES, seed=8)
    cpu = dldr.dldr_basis(X, d)
    gpu = dldr.dldr_basis([row.cuda() for row in X], d, device='cuda', max_bytes=20000)
    assert gpu.P.is_cuda and gpu.eigenvalues.device.type == 'cpu'
    torch.testing.assert_close(gpu.P.cpu().abs(), cpu.P.abs(), atol=1e-5, rtol=0)

    model = QuadraticModel(40).cuda()
    model.A, model.w_star = model.A.cuda(), model.w_star.cuda()
    optimizer = dldr.PBFGS(model.parameters(), random_orthonormal_rows(6, 40, seed=8).cuda(), alpha=0.1)

    def closure():
        loss = model()
        if torch.is_grad_enabled():
            optimizer.zero_grad()
            loss.backward()
        return loss

    first = optimizer.step(closure).item()
    for _ in range(10):
        last = optimizer.step(closure).item()
    assert last < first and optimizer.state[model.w]['B'].is_cuda
