"""Our models compute what the reference's models compute: outputs of every architecture that the
reference code (github nblt/DLDR) also has, on the same seeded weights and input, compared with
the reference's outputs recorded in ``tests/fixtures/reference_outputs.pt``.

How the fixture was made (once, outside the project; the reference's code is not vendored):
the reference at commit ``PROVENANCE['commit']`` was unpacked to a scratch folder
(``git archive HEAD | tar x -C /tmp/dldr_ref``) and a scratch script, for each architecture of
``tests/fixtures/reference_models.json`` (10 classes for the CIFAR ResNets of its ``resnet.py``,
100 for the CIFAR-100 zoo of its ``models/``):

1. built our model on the meta device and made a full state_dict in its layout with
   :func:`seeded_state` (seed ``SEED``), the helper below;
2. built the reference's model through the reference's own ``utils.get_model`` (its source, run
   as is) and loaded that state_dict with ``strict=True``: the same keys and shapes, or an error;
3. ran :func:`run_protocol` (below) on the input ``torch.randn(4, 3, 32, 32)`` of a generator
   seeded with ``INPUT_SEED`` (stored in the fixture too): the train-mode output (batch
   statistics; dropout and stochastic depth drawn from a fixed seed), the running statistics
   that this step left (summarised by :func:`bn_summary`), and the eval-mode output on running
   statistics estimated on the input (:func:`calibrated_state`, computed with our model);
4. saved it with ``torch.save`` (0.6 MB), with two sums of the generated weights so that a
   change of ``torch.randn`` itself is told apart from a change of a model.

The scratch script imported ``seeded_state``, ``run_protocol`` and ``weight_sums`` from this
module, so both sides ran the same protocol code; to regenerate, repeat 1-4 the same way (about
a minute on one CPU thread; torch 2.14, the reference's own model code unchanged).  On that
machine our outputs equalled the reference's to the last bit.

The test repeats steps 1 and 3 on our model alone (one thread, CPU, float32) and compares.
"""
import hashlib
import json
import os

import pytest
import torch

from models import get_model

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_outputs.pt')
PROVENANCE = {'repository': 'https://github.com/nblt/DLDR',
              'commit': '4f1284e1520540f3d7d7073a98ed77bbaf63a130'}
SEED, INPUT_SEED, TRAIN_SEED, CALIBRATION_SEED = 2023, 7, 11, 13
# float32 on the CPU: the same operations agree to rounding, but not to the same rounding on
# every CPU: oneDNN picks other convolution kernels on another instruction set (the fixture was
# made on an AMD EPYC; on an Intel Xeon with AVX512/AMX inceptionresnetv2's train-mode output,
# hundreds of BatchNorm layers deep, differs by 4.7e-5 of its scale).  5e-4 of the scale leaves
# that room ten times over, while a wrong layer, shape or initialisation moves outputs by 1e-1.
TOLERANCE = 5e-4


def seeded_state(layout, seed):
    """A full state_dict with ``layout``'s keys, shapes and dtypes (tensors on any device, meta
    included), drawn from one generator seeded with ``seed`` in key order: weights of rank >= 2
    N(0, 2 / fan_in), 1-D ``weight``s (norm scales) 1 + N(0, 0.01), running means N(0, 0.01),
    running variances U(0.5, 1.5), other floats N(0, 0.01); integer buffers zero."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, v in layout.items():
        shape = tuple(v.shape)
        if not v.dtype.is_floating_point:
            state[key] = torch.zeros(shape, dtype=v.dtype)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            fan_in = v.numel() // shape[0]
            state[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        elif key.endswith('weight'):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def bn_summary(state):
    """(names, summary) of the running statistics in ``state``: the sha256 of their newline-joined
    names, and per buffer its sum and its sum weighted by linspace(-1, 1) over the entries (a
    change of any entry shows), float64."""
    names = [k for k in state if k.endswith(('running_mean', 'running_var'))]
    rows = []
    for k in names:
        v = state[k].double().flatten()
        rows.append(torch.stack([v.sum(), (v * torch.linspace(-1, 1, len(v), dtype=torch.float64)).sum()]))
    digest = hashlib.sha256('\n'.join(names).encode()).hexdigest()
    return digest, torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def calibrated_state(ours, state, x):
    """``state`` with the running statistics of ``x``, computed with ``ours`` (our model of the
    same architecture): every BatchNorm reset, its momentum None (a cumulative average), one
    train-mode pass after ``torch.manual_seed(CALIBRATION_SEED)``.  (Seeded random statistics
    would make the eval-mode outputs of deep residual networks grow without bound; our model
    computes these statistics because the reference's scripted stochastic-depth blocks keep their
    BatchNorm momentum a constant.)"""
    ours.load_state_dict(state, strict=True)
    for m in ours.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        ours.train()
        torch.manual_seed(CALIBRATION_SEED)
        ours(x)
    return {k: v.clone() for k, v in ours.state_dict().items()}


def run_protocol(model, state, x, ours):
    """What the fixture records of ``model`` (ours or the reference's) with the weights ``state``
    on the input ``x``, no gradients: ``train``: the train-mode output (batch statistics; dropout
    and stochastic depth drawn after ``torch.manual_seed(TRAIN_SEED)``); ``bn_buffers`` /
    ``bn_summary``: the running statistics that this step left (the model's own BatchNorm
    momentum and eps at work); ``eval``: the eval-mode output on :func:`calibrated_state`
    (computed with ``ours``, our model of the architecture), summarised in ``eval_bn_summary``."""
    model.load_state_dict(state, strict=True)  # the same keys and shapes, or an error
    out = {}
    with torch.no_grad():
        model.train()
        torch.manual_seed(TRAIN_SEED)
        out['train'] = model(x)
        out['bn_buffers'], out['bn_summary'] = bn_summary(model.state_dict())
    calibrated = calibrated_state(ours, state, x)
    out['eval_bn_summary'] = bn_summary(calibrated)[1]
    model.load_state_dict(calibrated, strict=True)
    with torch.no_grad():
        model.eval()
        out['eval'] = model(x)
    return out


def weight_sums(state):
    """The sum and the sum of squares of every float entry, float64 (summed tensor by tensor in
    key order; one float64 copy at a time)."""
    total, squares = 0, 0
    for v in state.values():
        if v.is_floating_point():
            v = v.double()
            total, squares = total + v.sum(), squares + v.square().sum()
    return torch.stack([total, squares])


@pytest.fixture(scope='module')
def reference():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _archs():
    return sorted(torch.load(FIXTURE, weights_only=True)['archs']) if os.path.exists(FIXTURE) else []


def test_fixture_covers_every_reference_architecture(reference):
    with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_models.json')) as f:
        assert sorted(reference['archs']) == sorted(json.load(f))
    assert reference['provenance'] == PROVENANCE
    assert os.path.getsize(FIXTURE) < 1_000_000


def _close(ours, theirs, what):
    scale = max(1.0, theirs.abs().max().item())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE * scale, msg=lambda m: f'{what}: {m}')


@pytest.mark.parametrize('arch', _archs())
def test_outputs_match_the_reference(arch, reference):
    ref = reference['archs'][arch]
    with torch.device('meta'):
        model = get_model(arch, ref['num_classes'])
    state = seeded_state(model.state_dict(), SEED)
    torch.testing.assert_close(weight_sums(state), ref['weights_check'], rtol=1e-9, atol=0,
                               msg='the seeded weights differ from the fixture\'s: torch.randn changed?')
    # The model's own initialisation is skipped (storage allocated on the CPU, not initialised):
    # run_protocol loads the full state_dict first, and only buffers outside it (none) would keep
    # the garbage; a tensor attribute left on the meta device fails the forward pass.
    assert not any(m._non_persistent_buffers_set for m in model.modules())
    model.to_empty(device='cpu')
    ours = run_protocol(model, state, reference['input'], model)
    _close(ours['train'], ref['train'], f'{arch} train-mode output')
    assert ours['bn_buffers'] == ref['bn_buffers']
    _close(ours['bn_summary'], ref['bn_summary'], f'{arch} running statistics after the train-mode step')
    _close(ours['eval_bn_summary'], ref['eval_bn_summary'], f'{arch} running statistics for eval mode')
    _close(ours['eval'], ref['eval'], f'{arch} eval-mode output')
