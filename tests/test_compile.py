"""--compile: torch.compile of the model (utils.compile_model).

The script-level tests compile with the ``aot_eager`` backend: the same graph capture (dynamo) and
autograd tracing (AOTAutograd) as the default inductor, without its C++ code generation, which
costs tens of seconds per graph on a CPU.  One test runs inductor itself on a small network.
Compiled and eager runs are compared with an eager run of the same seed: float tolerance, not
bit equality (a compiled graph may order its sums differently).
"""
import functools
import json

import pytest
import torch
import torch.nn.functional as F

import engine
import utils
from helpers import SGD_ARGS, in_process

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


@pytest.fixture
def aot_eager(monkeypatch):
    """--compile with the aot_eager backend; dynamo's caches cleared before and after."""
    torch._dynamo.reset()
    monkeypatch.setattr(utils.model, 'compile_model', functools.partial(utils.compile_model, backend='aot_eager'))
    yield
    torch._dynamo.reset()


def small_net():
    """A seeded conv net with BatchNorm: compiles in seconds."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3))


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_close_states(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_compiled_sgd_matches_eager_and_resumes_eager(tmp_path, capsys, aot_eager, cli):
    """SGD epoch 1 compiled = epoch 1 eager (float tolerance), with the eager state_dict keys (no
    ``_orig_mod.``) and ``compiled: true`` in its JSON; epoch 2 eager from the compiled run's
    checkpoint (--resume auto) = epoch 2 of the eager run."""
    args = [a for a in SGD_ARGS if not a.startswith('--epochs')] + ['--lr-milestones', '5']
    whole, split = tmp_path / 'whole', tmp_path / 'split'
    assert in_process(capsys, 'train_sgd', *args, '--epochs', '2', '--save-dir', whole)[0] == 0
    code, out, err = in_process(capsys, 'train_sgd', *args, '--epochs', '1', '--save-dir', split,
                                '--compile')
    assert code == 0, err
    assert json.loads((split / 'metrics_sgd.json').read_text())['compiled'] is True
    assert not any('_orig_mod' in k for k in load(split / 'checkpoint.pt')['model'])
    assert_close_states(load(split / '1.pt'), load(whole / '1.pt'))
    code, out, err = in_process(capsys, 'train_sgd', *args, '--epochs', '2', '--save-dir', split,
                                '--resume', 'auto')
    assert code == 0, err
    assert json.loads((split / 'metrics_sgd.json').read_text())['compiled'] is False
    assert_close_states(load(split / '2.pt'), load(whole / '2.pt'))


def test_compiled_pbfgs_step_matches_eager():
    """P-BFGS on a compiled model: its no-grad line-search forwards are a graph of their own
    (dynamo guards on grad mode); three steps with the script's closure convention give the eager
    iterates to float tolerance."""
    import dldr
    torch._dynamo.reset()

    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 3, (16,))
    n = sum(p.numel() for p in small_net().parameters())
    P = torch.linalg.qr(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)))[0].T.contiguous()
    states = []
    for model in (small_net(), utils.compile_model(small_net(), backend='aot_eager')):
        opt = dldr.PBFGS(dldr.trainable_params(model), P, buffers=list(model.buffers()))
        for _ in range(3):
            opt.step(engine.batch_closure(model, [(x, y)], opt))
        states.append(model.state_dict())
    assert_close_states(states[1], states[0], rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_a_model_that_does_not_compile_runs_eager_after_one_warning(tmp_path, capsys, monkeypatch, cli):
    """A backend failure at the first call: one ``warning:`` line, then the run goes on eager,
    ``compiled: false`` in the JSON; no traceback."""
    def broken(gm, example_inputs):
        raise RuntimeError('this backend cannot compile anything')

    torch._dynamo.reset()
    monkeypatch.setattr(utils.model, 'compile_model', functools.partial(utils.compile_model, backend=broken))
    args = [a for a in SGD_ARGS if not a.startswith('--epochs')] + ['--epochs', '1']
    code, out, err = in_process(capsys, 'train_sgd', *args, '--save-dir', tmp_path, '--compile')
    torch._dynamo.reset()
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if 'torch.compile failed' in line]
    assert len(warnings) == 1 and warnings[0].startswith('warning: ') and 'running eager' in warnings[0]
    assert 'Traceback' not in out + err
    assert json.loads((tmp_path / 'metrics_sgd.json').read_text())['compiled'] is False
    assert (tmp_path / '1.pt').exists()


def test_inductor_matches_eager_in_train_and_eval_mode():
    """The default backend (inductor) on a small conv net with BatchNorm: outputs, gradients and
    running statistics after two training steps equal eager's to float tolerance; eval mode too;
    the state_dict keys are the eager ones."""
    torch._dynamo.reset()

    x, y = torch.randn(8, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    eager, compiled = small_net(), utils.compile_model(small_net())
    assert utils.is_compiled(compiled) and not utils.is_compiled(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for model in (eager, compiled):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert_close_states(compiled.state_dict(), eager.state_dict())
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
