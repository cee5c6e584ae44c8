"""Files written by the reference code (github nblt/DLDR) work here.

The reference's train_sgd.py saves ``torch.save(model.state_dict(), '<k>.pt')`` of a
``DataParallel`` model: a plain state_dict whose keys carry the ``module.`` prefix, BatchNorm
buffers included, in the reference's module names (``layer1.0.conv1.weight``, ``linear.bias``).
This test writes such a trajectory for resnet20 (names and order from the reference, see
tests/fixtures/reference_models.json) and runs the reference's P-BFGS and P-SGD command lines on
it.
"""
import json
import os
from collections import OrderedDict

import pytest
import torch

import models
from helpers import ROOT, run_in_process

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'reference_models.json')
SMALL = ['--datasets', 'synthetic', '--smalldatasets', '0.05', '-p', '0', '--arch=resnet20']


def reference_names():
    with open(FIXTURE) as f:
        entry = json.load(f)['resnet20']
    return [line.rsplit(':', 1)[0] for line in entry['state_dict']]


@pytest.fixture(scope='module')
def reference_trajectory(tmp_path_factory):
    """0.pt .. 3.pt as the reference writes them: DataParallel keys, reference names and order."""
    folder = tmp_path_factory.mktemp('ref_traj')
    names = reference_names()
    torch.manual_seed(0)
    model = models.get_model('resnet20', num_classes=10)
    assert list(model.state_dict()) == names  # our names are the reference's
    for k in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01 * (k + 1))
        state = OrderedDict(('module.' + name, v.clone()) for name, v in model.state_dict().items())
        torch.save(state, folder / f'{k}.pt')
    return folder


@pytest.mark.parametrize('script, flags', [
    ('train_pbfgs.py', ['--epochs', '1', '--batch-size', '256']),
    ('train_psgd.py', ['--epochs', '1', '--lr', '1', '--batch-size', '128']),
])
def test_reference_trajectory_trains_with_reference_flags(reference_trajectory, script, flags, small_synthetic):
    # main(argv) in-process (as the script's __main__), on the synthetic data generated once
    proc = run_in_process(small_synthetic, script, *flags, *SMALL, '--params_start', '0', '--params_end', '4',
                          '--n_components', '2', f'--save-dir={reference_trajectory}', '--overwrite')
    assert proc.returncode == 0, proc.stderr
    method = script[len('train_'):-len('.py')]
    metrics = json.loads((reference_trajectory / f'metrics_{method}_d2_0-4.json').read_text())
    assert metrics['basis']['snapshots'] == [0, 4] and len(metrics['epochs']) == 1
    # the saved model is a plain state_dict in the reference's names (no module. prefix)
    saved = torch.load(reference_trajectory / f'{method}_d2_0-4.pt', weights_only=True)
    assert list(saved) == reference_names()
