"""dldr.GaLoreAdamW against a float64 numpy implementation of its formulas, torch's AdamW, and
its own resume."""
import io

import numpy as np
import pytest
import torch

from dldr import GaLoreAdamW
from dldr.galore import orthogonal_factor


def quadratic(shape, seed):
    """A, B of the loss 0.5 ||A W - B||^2 over W of ``shape`` (gradient A^T (A W - B))."""
    gen = np.random.default_rng(seed)
    a = gen.standard_normal((shape[0] + 3, shape[0])) / np.sqrt(shape[0])
    b = gen.standard_normal((shape[0] + 3, shape[1]))
    return a, b


def numpy_galore(w, a, b, steps, *, lr, betas, eps, wd, rank, gap, scale, side):
    """GaLore AdamW written out in float64 from docs/METHOD.md."""
    w = w.astype(np.float64).copy()
    beta1, beta2 = betas
    m = v = proj = None
    for t in range(1, steps + 1):
        g = a.T @ (a @ w - b)
        if (t - 1) % gap == 0:
            u, _, vh = np.linalg.svd(g, full_matrices=False)
            rows = vh[:rank] if side == 'right' else u[:, :rank].T
            rows = rows * np.sign(rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)])[:, None]
            proj = rows if side == 'right' else rows.T
        r = g @ proj.T if side == 'right' else proj.T @ g
        m = (1 - beta1) * r if m is None else beta1 * m + (1 - beta1) * r
        v = (1 - beta2) * r * r if v is None else beta2 * v + (1 - beta2) * r * r
        n = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
        w = (1 - lr * wd) * w - lr * scale * (n @ proj if side == 'right' else proj @ n)
    return w


def run_torch(w0, a, b, steps, optimizer=None, **settings):
    """``steps`` float32 steps on the quadratic from w0, or from the parameter of ``optimizer``."""
    if optimizer is None:
        optimizer = GaLoreAdamW([torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))], **settings)
    w = optimizer.param_groups[0]['params'][0]
    at, bt = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (at @ w - bt).square().sum()).backward()
        optimizer.step()
    return w.detach().numpy(), optimizer


@pytest.mark.parametrize('shape, proj_type, side, rank', [
    ((12, 5), 'std', 'right', 2), ((5, 12), 'std', 'left', 2), ((12, 5), 'reverse_std', 'left', 2),
    ((5, 12), 'right', 'right', 2), ((6, 4), 'left', 'left', 3),
    ((6, 4), 'std', 'right', 10)])  # a rank above the smaller side keeps all of it
def test_matches_numpy(shape, proj_type, side, rank):
    a, b = quadratic(shape, 0)
    w0 = np.random.default_rng(1).standard_normal(shape)
    settings = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, rank=rank, scale=0.5)
    got, _ = run_torch(w0, a, b, 8, weight_decay=0.1, update_proj_gap=3, proj_type=proj_type, **settings)
    expected = numpy_galore(w0, a, b, 8, wd=0.1, gap=3, side=side, **settings)
    assert np.abs(expected - w0).max() > 0.1  # it moved
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_plain_groups_are_torch_adamw():
    """Without a rank, and for 1-D parameters in a group with one, the step is torch's AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    twin.load_state_dict(model.state_dict())
    biases = [model[0].bias, model[2].bias]
    ours = GaLoreAdamW([{'params': [model[0].weight]}, {'params': biases, 'rank': 2}], lr=0.01)
    ref = torch.optim.AdamW([twin[0].weight, twin[0].bias, twin[2].bias], lr=0.01, foreach=False)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for net, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_step_stays_in_the_projector_span_and_moments_are_low_rank():
    """Between re-draws, a step of a conv kernel (out x in·k·k) moves it only along the r rows
    of the projector; the moments are out x r."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    optimizer = GaLoreAdamW([{'params': [conv.weight], 'rank': 3, 'update_proj_gap': 10}], lr=0.01,
                            weight_decay=0.0)
    x = torch.randn(4, 3, 6, 6)
    before = []
    for _ in range(4):
        before.append(conv.weight.detach().clone())
        optimizer.zero_grad()
        conv(x).square().mean().backward()
        optimizer.step()
    state = optimizer.state[conv.weight]
    proj = state['projector'].double()  # 8 x 27, m < n: the left side
    assert tuple(proj.shape) == (8, 3) and tuple(state['exp_avg'].shape) == (3, 27)
    np.testing.assert_allclose((proj.T @ proj).numpy(), np.eye(3), atol=1e-6)
    for w0 in before:
        delta = (conv.weight.detach() - w0).reshape(8, -1).double()
        assert delta.norm() > 1e-3
        outside = delta - proj @ (proj.T @ delta)
        assert outside.norm() < 1e-5 * delta.norm()


def test_resume_from_state_dict_is_bit_identical():
    a, b = quadratic((9, 6), 2)
    w0 = np.random.default_rng(3).standard_normal((9, 6))
    settings = dict(lr=0.05, rank=2, update_proj_gap=4)
    straight, _ = run_torch(w0, a, b, 7, **settings)
    half, optimizer = run_torch(w0, a, b, 3, **settings)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    w = torch.nn.Parameter(torch.tensor(half))
    resumed = GaLoreAdamW([w], **settings)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    got, _ = run_torch(None, a, b, 4, optimizer=resumed)  # a re-draw at step 5 included
    np.testing.assert_array_equal(got, straight)


def test_signs_are_fixed():
    """orthogonal_factor is the same for G and for any SVD sign choice: each vector's largest
    entry is positive, and it spans G's top singular vectors."""
    g = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    for side, rows in (('right', lambda f: f), ('left', lambda f: f.T)):
        f = rows(orthogonal_factor(g, 2, side))
        assert (f.gather(1, f.abs().argmax(1, keepdim=True)) > 0).all()
        u, _, vh = np.linalg.svd(g.double().numpy())
        top = vh[:2] if side == 'right' else u[:, :2].T
        np.testing.assert_allclose(np.abs(f.double().numpy() @ top.T), np.eye(2), atol=1e-5)


@pytest.mark.parametrize('settings, message', [
    ({'rank': 0}, 'rank must be a positive int'), ({'rank': 2.5}, 'rank must be a positive int'),
    ({'update_proj_gap': 0}, 'update_proj_gap'), ({'proj_type': 'up'}, 'proj_type'),
    ({'rank': True}, 'rank must be a positive int'), ({'scale': 0.0}, 'scale must be > 0'),
    ({'scale': -1.0}, 'scale'), ({'lr': -1.0}, 'lr'), ({'betas': (0.9, 1.0)}, 'betas'),
    ({'weight_decay': -0.1}, 'weight_decay')])
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        GaLoreAdamW([torch.nn.Parameter(torch.zeros(3, 3))], **settings)


def test_closure_returns_the_loss():
    w = torch.nn.Parameter(torch.ones(4, 3))
    optimizer = GaLoreAdamW([{'params': [w], 'rank': 1}])

    def closure():
        optimizer.zero_grad()
        loss = w.square().sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 12.0
    assert (w < 1.0).all()


def test_train_sgd_optimizer_galore_projects_matrices_and_resumes_bit_identically(tmp_path, cli):
    """train_sgd.py --optimizer galore: the decayed weight matrices (convolutions, the classifier)
    keep rank-2 moments, BatchNorm weights and biases full ones; 2 epochs = 1 epoch + --resume auto
    (a re-draw after the resume included), bit for bit."""
    from helpers import SGD_ARGS
    args = [a for a in SGD_ARGS if not a.startswith('--epochs')] + [
        '--optimizer', 'galore', '--galore-rank', '2', '--galore-gap', '3', '--lr', '0.01', '--wd', '0.05']
    whole, split = tmp_path / 'whole', tmp_path / 'split'
    cli.ok('train_sgd', *args, '--epochs', '2', '--save-dir', whole)
    cli.ok('train_sgd', *args, '--epochs', '1', '--save-dir', split)
    cli.ok('train_sgd', *args, '--epochs', '2', '--save-dir', split, '--resume', 'auto')
    got, want = (torch.load(f / 'checkpoint.pt', weights_only=True) for f in (split, whole))
    for name in got['model']:
        assert torch.equal(got['model'][name], want['model'][name]), name
    groups = got['optimizer']['param_groups']
    assert (groups[0]['rank'], groups[0]['update_proj_gap'], groups[1]['rank']) == (2, 3, None)
    state = got['optimizer']['state']
    matrices = groups[0]['params']
    assert matrices and all(2 in state[i]['exp_avg'].shape and 'projector' in state[i] for i in matrices)
    assert all('projector' not in state[i] for i in groups[1]['params'])
    for i in state:
        for key in ('exp_avg', 'exp_avg_sq', 'projector'):
            if key in state[i]:
                assert torch.equal(state[i][key], want['optimizer']['state'][i][key]), (i, key)


def test_a_non_finite_gradient_at_a_redraw_gives_non_finite_weights_not_an_error():
    """A diverging run: the SVD of a NaN gradient is not attempted; the weights turn NaN, which the
    training loop's own check reports."""
    w = torch.nn.Parameter(torch.ones(5, 3))
    optimizer = GaLoreAdamW([{'params': [w], 'rank': 2}])
    w.grad = torch.full((5, 3), float('nan'))
    optimizer.step()
    assert torch.isnan(w).all() and tuple(optimizer.state[w]['projector'].shape) == (2, 3)


def test_bf16_parameters_keep_bf16_state_and_follow_float32():
    a, b = quadratic((8, 5), 4)
    w0 = np.random.default_rng(5).standard_normal((8, 5))
    settings = dict(lr=0.02, rank=2, update_proj_gap=2)
    full, _ = run_torch(w0, a, b, 5, **settings)
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.bfloat16))
    optimizer = GaLoreAdamW([w], **settings)
    at, bt = torch.tensor(a, dtype=torch.bfloat16), torch.tensor(b, dtype=torch.bfloat16)
    for _ in range(5):
        optimizer.zero_grad()
        (0.5 * (at @ w - bt).float().square().sum()).backward()
        optimizer.step()
    assert {t.dtype for t in optimizer.state[w].values() if isinstance(t, torch.Tensor)} == {torch.bfloat16}
    np.testing.assert_allclose(w.detach().float().numpy(), full, atol=0.05)  # bf16's 8-bit mantissa


def test_steps_without_a_gradient_do_not_count_and_channels_last_is_the_same_step():
    """A parameter without a gradient is skipped (its step count, hence the re-draws, count its
    own steps); a channels_last kernel steps as a contiguous one."""
    torch.manual_seed(0)
    kernel = torch.randn(6, 4, 3, 3)
    grads = [torch.randn(6, 4, 3, 3) for _ in range(4)]
    finals = []
    for layout, skip in ((torch.contiguous_format, None), (torch.channels_last, None), (torch.contiguous_format, 2)):
        w = torch.nn.Parameter(kernel.clone().to(memory_format=layout))
        optimizer = GaLoreAdamW([{'params': [w], 'rank': 2, 'update_proj_gap': 2}], lr=0.01)
        for i, g in enumerate(grads):
            w.grad = None if i == skip else g.clone().to(memory_format=layout)
            optimizer.step()
        finals.append((w.detach().clone(), optimizer.state[w]['step']))
    torch.testing.assert_close(finals[1][0], finals[0][0], rtol=1e-6, atol=1e-7)
    assert (finals[0][1], finals[2][1]) == (4, 3)
    # the skipped run equals three steps on the other gradients
    w = torch.nn.Parameter(kernel.clone())
    optimizer = GaLoreAdamW([{'params': [w], 'rank': 2, 'update_proj_gap': 2}], lr=0.01)
    for g in (grads[0], grads[1], grads[3]):
        w.grad = g.clone()
        optimizer.step()
    assert torch.equal(w.detach(), finals[2][0])


def test_train_sgd_groups_and_note():
    """make_optimizer: the decayed matrices are projected; biases, norms and the model's
    no_weight_decay() names (a ViT's position embedding) train as AdamW; the run says how many
    matrices the rank reduces, with a note when it reduces none."""
    from types import SimpleNamespace
    import sgd_run

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 5)
            self.pos = torch.nn.Parameter(torch.zeros(4, 6))

        def no_weight_decay(self):
            return {'pos'}

    model = Tiny()
    config = SimpleNamespace(optimizer='galore', lr=0.01, weight_decay=0.1, galore_rank=3, galore_gap=5,
                             galore_scale=0.5)
    optimizer = sgd_run.make_optimizer(config, model)
    projected, plain = optimizer.param_groups
    assert [p is model.fc.weight for p in projected['params']] == [True]
    assert (projected['rank'], projected['update_proj_gap'], projected['scale']) == (3, 5, 0.5)
    assert plain['rank'] is None and plain['weight_decay'] == 0.0
    assert {id(p) for p in plain['params']} == {id(model.fc.bias), id(model.pos)}
    assert sgd_run.galore_note(config, optimizer).startswith('--optimizer galore: rank 3 reduces 1 of the 1')
    config.galore_rank = 5  # fc.weight is 5 x 6: nothing to reduce
    assert sgd_run.galore_note(config, optimizer).startswith('note: --optimizer galore: rank 5 reduces 0 of the 1')
