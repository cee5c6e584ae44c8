"""End to end: the reference command lines of train_sgd.py, train_psgd.py and train_pbfgs.py on
the offline synthetic dataset at small sizes, checked against the files they write and against an
independent numpy SVD of the snapshots; ``--help`` of every script.

The SGD trajectory is produced once per session (the ``sgd_run`` fixture of conftest.py) and
shared with the other test files; tests that write copy it first.  The runs call ``main(argv)``
in-process under ``distributed.run_cli``, as the scripts' ``__main__`` does (an interpreter's
start-up costs more than these runs; the scripts run as processes in test_reliability.py,
test_distributed.py and test_tracking.py).
"""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import distributed
import flags
import models
import seeds
import utils
from helpers import PBFGS_ARGS, PSGD_ARGS, assert_one_line_error, file_state, flat_snapshot, run_in_process


# ------------------------------------------------------------------------------------ SGD

def test_sgd_writes_trajectory_metrics_and_label_noise(sgd_run, synthetic):
    folder, output = sgd_run
    assert '500 train' in output['stdout'] and '100 labels corrupted' in output['stdout']
    for k in range(3):
        state = torch.load(folder / f'{k}.pt', map_location='cpu', weights_only=True)
        utils.check_state_dict(state, models.get_model('resnet8'), f'{k}.pt')
    assert not (folder / '3.pt').exists()
    assert not any(name.endswith('.tmp') for name in os.listdir(folder))

    metrics = json.loads((folder / 'metrics_sgd.json').read_text())
    rows = metrics['epochs']
    assert [r['epoch'] for r in rows] == [1, 2]
    for row in rows:
        assert {'lr', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'seconds'} <= row.keys()
        assert 0 <= row['test_acc'] <= 100 and np.isfinite(row['train_loss'])
        assert row['train_seconds'] > 0 and row['eval_seconds'] > 0
        assert row['train_seconds'] + row['eval_seconds'] <= row['seconds'] * 1.01
    assert 'train ' in output['stdout'] and ' eval ' in output['stdout']
    assert metrics['world_size'] == 1 and metrics['batch_per_rank'] == 128
    assert metrics['final_test_acc'] == rows[-1]['test_acc']
    assert metrics['best_test_acc'] == max(r['test_acc'] for r in rows)
    args = metrics['args']
    assert (args['lr'], args['corrupt'], args['arch'], args['epochs']) == (0.1, 0.2, 'resnet8', 2)
    assert metrics['n_train'] == 500 and metrics['n_corrupted'] == 100
    assert args['noise_model'] == metrics['noise_model'] == 'uniform'  # the reference's, the default

    noise = json.loads((folder / 'label_noise.json').read_text())
    indices = noise['indices']
    assert len(indices) == int(metrics['n_train'] * 0.2) == 100
    assert indices == sorted(set(indices)) and 0 <= indices[0] and indices[-1] < 500
    assert noise['noise_model'] == 'uniform' and len(noise['labels']) == 100
    # the labels drawn from all 10 classes: some keep their class, so fewer than 20 % are wrong
    clean = synthetic.train_y  # utils.make_synthetic().train_y (generated once per session)
    keep = utils.balanced_subset(clean, 0.05, 10, seeds.seed('subset', 1))
    wrong = sum(noise['labels'][i] != clean[keep][j].item() for i, j in enumerate(indices))
    assert 70 <= wrong < 100
    assert noise['wrong_label_fraction'] == metrics['wrong_label_fraction'] == wrong / 500
    assert f'{wrong / 5:.1f}% of the labels wrong' in output['stdout']
    # the rolling checkpoint carries the same indices and labels (verified again on --resume)
    checkpoint = torch.load(folder / 'checkpoint.pt', map_location='cpu', weights_only=True)
    assert checkpoint['label_noise'].tolist() == indices and checkpoint['epoch'] == 2
    assert checkpoint['label_noise_labels'].tolist() == noise['labels']


# ------------------------------------------------------------------------------------ subspace runs

@pytest.fixture(scope='module')
def subspace_run(sgd_run, tmp_path_factory, small_synthetic):
    """P-SGD and P-BFGS (the reference command lines) on a copy of the shared trajectory, run
    in-process (main(argv) under distributed.run_cli, as the scripts' __main__) on the synthetic
    data generated once, 200 test images."""
    folder = tmp_path_factory.mktemp('subspace') / 'save'
    shutil.copytree(sgd_run[0], folder)
    psgd = run_in_process(small_synthetic, 'train_psgd', *PSGD_ARGS, f'--save-dir={folder}')
    pbfgs = run_in_process(small_synthetic, 'train_pbfgs', *PBFGS_ARGS, f'--save-dir={folder}')
    assert psgd.returncode == 0, psgd.stderr
    assert pbfgs.returncode == 0, pbfgs.stderr
    return folder, psgd, pbfgs


def numpy_basis(folder, start, end):
    """Explained-variance ratios and singular values of the centred snapshots, by numpy SVD."""
    model = models.get_model('resnet8')
    X = np.stack([flat_snapshot(folder / f'{k}.pt', model) for k in range(start, end)])
    W = X - X.mean(axis=0)
    S = np.linalg.svd(W, compute_uv=False)
    return S ** 2 / (S ** 2).sum(), S, X, W


@pytest.mark.parametrize('method', ['psgd', 'pbfgs'])
def test_subspace_run_files_basis_and_iterates(subspace_run, method):
    folder, psgd, pbfgs = subspace_run
    proc = psgd if method == 'psgd' else pbfgs
    metrics = json.loads((folder / f'metrics_{method}_d2_0-3.json').read_text())
    basis = metrics['basis']
    assert basis['snapshots'] == [0, 3] and basis['n_components'] == 2
    ratio, singular, X, W = numpy_basis(folder, 0, 3)
    np.testing.assert_allclose(basis['explained_variance_ratio'], ratio[:2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(basis['singular_values'], singular[:2], rtol=1e-5)
    assert 'explained variance ratio' in proc.stdout

    rows = metrics['epochs']
    assert len(rows) == 1 and metrics['final_test_acc'] == rows[0]['test_acc']
    assert metrics['n_corrupted'] == 100 and metrics['noise_model'] == 'uniform'
    assert metrics['wrong_label_fraction'] == json.loads((folder / 'label_noise.json').read_text())[
        'wrong_label_fraction']  # the subspace runs draw the trajectory's labels
    assert rows[0]['train_seconds'] > 0 and rows[0]['eval_seconds'] > 0
    if method == 'pbfgs':
        assert rows[0]['steps'] == 2 and rows[0]['nonfinite_skips'] == 0  # 500 images / 256
        assert 1 <= rows[0]['mean_trials'] <= 20
        assert 'trials/step' in proc.stdout and 'skipped 0' in proc.stdout
        # the mean accepted step size replaces the meaningless 'lr 1' of the epoch line
        accepted = rows[0]['steps'] - rows[0]['failed_searches']
        if accepted:
            assert 0.4 ** 19 <= rows[0]['mean_step_size'] <= 1
            assert f"step {rows[0]['mean_step_size']:.3g}" in proc.stdout
        assert ' lr ' not in proc.stdout.split('epoch    1/1')[1]

    # the final model: loadable, finite, and w_final - w_0 in the span of the centred snapshots
    model = models.get_model('resnet8')
    utils.load_snapshot(str(folder / f'{method}_d2_0-3.pt'), model)
    w = flat_snapshot(folder / f'{method}_d2_0-3.pt', model)
    assert np.isfinite(w).all()
    delta = w - X[0]
    Q = np.linalg.svd(W.T, full_matrices=False)[0][:, :2]  # 2 = rank of 3 centred snapshots
    if method == 'psgd' or rows[0]['failed_searches'] < rows[0]['steps']:
        assert np.linalg.norm(delta) > 0  # it moved
    assert np.linalg.norm(delta - Q @ (Q.T @ delta)) <= 1e-4 * np.linalg.norm(delta)


def test_rerunning_psgd_refuses_without_overwrite(subspace_run, cli):
    # (that --overwrite lets the rerun through is checked in test_reliability.py; a one-line error
    # of a real process: test_reliability.py's crafted file, test_tracking.py's bad logger)
    folder = subspace_run[0]
    before = file_state(folder)
    assert_one_line_error(cli.fail('train_psgd', *PSGD_ARGS, f'--save-dir={folder}'), 'already exists',
                          '--overwrite')
    assert file_state(folder) == before


# ------------------------------------------------------------------------------------ --help

class _Parsed(Exception):
    pass


def parser_flags(script, monkeypatch):
    """Every option string the script's parser defines (captured in-process, not from --help)."""
    module = __import__(script)

    def capture(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(flags.Parser, 'parse_args', capture)
    with pytest.raises(_Parsed) as info:
        module.parse_args([])
    return {s for action in info.value.args[0]._actions for s in action.option_strings}


REFERENCE_FLAGS = {'--datasets', '--lr', '--corrupt', '--arch', '--epochs', '--save-dir',
                   '--batch-size', '--overwrite', '--deterministic', '--smalldatasets',
                   '--randomseed', '--data-dir'}
SGD_FLAGS = {'--resume', '--optimizer', '--weight-decay', '--save-every', '--pretrained',
             '--start-epoch', '--snapshot-every'}
SUBSPACE_FLAGS = {'--params_start', '--params_end', '--n_components', '--pretrain-dir', '--alpha',
                  '--gamma'}


@pytest.mark.parametrize('script', ['train_sgd', 'train_psgd', 'train_pbfgs'])
def test_help_exits_0_and_mentions_every_flag(script, monkeypatch, capsys):
    # in-process (main(['--help']) is what `python script --help` runs): saves three start-ups
    module = __import__(script)
    with pytest.raises(SystemExit) as info:
        distributed.run_cli(lambda: module.main(['--help']))
    assert info.value.code in (0, None)
    out, err = capsys.readouterr()
    assert err == '' and out.startswith('usage:')
    flags = parser_flags(script, monkeypatch)
    expected = REFERENCE_FLAGS | (SUBSPACE_FLAGS if script != 'train_sgd' else SGD_FLAGS)
    expected |= {'--accumulate', '--curvature-pairs'} if script == 'train_pbfgs' else set()
    expected |= {'--logger', '--log-dir', '--wandb-project', '--log-every'}  # tracking.py
    assert expected <= flags, expected - flags
    assert 'timm/NAME' in out  # --arch takes timm's models too
    if script != 'train_sgd':  # each script lists only the flags it uses
        assert not SGD_FLAGS & flags, SGD_FLAGS & flags
    if script == 'train_pbfgs':  # kept for the reference's command lines, and says so
        assert '--momentum' not in flags
        assert "(ignored: kept for the reference's command lines)" in ' '.join(out.split())
    missing = [f for f in flags if f not in out]
    assert not missing, missing
    # an on/off flag shows no default (--no-augment's would read '(default: True)'), nor an unset
    # one (--galore-rank's '(default: None)' after its help's 'default 128')
    text = ' '.join(out.split())
    assert text.count('(default:') > 10
    assert not {'(default: True)', '(default: False)', '(default: None)'} & set(re.findall(r'\(default: \w+\)', text))


def test_bn_update_default_is_sized_in_images():
    """--bn-update's default: ceil(BN_UPDATE_IMAGES / batch) batches; an explicit N is kept."""
    import flags
    import train_psgd
    base = ['--datasets', 'synthetic', '--params_start', '0', '--params_end', '3', '--n_components', '2']
    for batch, expected in ((128, 16), (1024, 2), (1000, 3), (4096, 1)):
        args = train_psgd.parse_args([*base, '--batch-size', str(batch)])
        assert args.bn_update == expected == -(-flags.BN_UPDATE_IMAGES // batch)
    assert train_psgd.parse_args([*base, '--bn-update', '3']).bn_update == 3
    assert train_psgd.parse_args([*base, '--bn-update', '0']).bn_update == 0
