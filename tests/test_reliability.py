"""Reliability of the three scripts: exact resume after a real SIGKILL, atomic files, safe loading,
no mixing of trajectories, one-line errors (exit 2, no traceback, nothing deleted) and non-finite
losses.

Real subprocesses where the process boundary is the point (the killed run, a crafted unsafe
file); the uninterrupted run, the resume after the kill (which reads nothing but the killed run's
files) and the error table run ``main(argv)`` in-process through ``distributed.run_cli`` (what the scripts'
``__main__`` does) with the synthetic dataset generated once, because ~30 interpreter start-ups
would cost more than this whole file.
"""
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

import models
import utils
from helpers import (RUNNER, SGD_ARGS, SMALL, assert_one_line_error, file_state, in_process, in_process_state,
                     run, start)


@pytest.fixture
def trajectory(sgd_run, tmp_path):
    """A private copy of the shared trajectory (0.pt .. 2.pt, checkpoints, JSON)."""
    folder = tmp_path / 'run'
    shutil.copytree(sgd_run[0], folder)
    return folder


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_identical(a, b, where='root'):
    """Nested dicts / lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f'{where}[{i}]')
    else:
        assert a == b, (where, a, b)


def without_seconds(rows):
    return [{k: v for k, v in row.items() if not k.endswith('seconds') and k != 'elapsed'} for row in rows]


# (the in-process runs: the ``cli`` fixture of conftest.py, main(argv) under distributed.run_cli on
# the synthetic data generated once, 200 test images)


# ----------------------------------------------------------------------------- 1. resume

def kill_after_first_checkpoint(proc, folder, timeout=240):
    """SIGKILL ``proc`` as soon as ``folder/checkpoint.pt`` (written after epoch 1) appears."""
    deadline = time.time() + timeout
    while not (folder / 'checkpoint.pt').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_matches_uninterrupted_run(request, tmp_path, small_synthetic,
                                                       small_synthetic_file, capsys, monkeypatch):
    folder = tmp_path / 'killed'
    # train_sgd.py's __main__ in a process of its own (run_script.py), on the data of the
    # uninterrupted run (sgd_run: in-process on small_synthetic)
    with open(tmp_path / 'killed.log', 'w') as log:
        proc = start(RUNNER, 'package', '--synthetic', small_synthetic_file, 'train_sgd', *SGD_ARGS,
                     f'--save-dir={folder}', stdout=log, stderr=subprocess.STDOUT)
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(proc, folder))
    killer.start()
    try:  # the uninterrupted run (unless test_cli.py ran it already) trains meanwhile
        reference = request.getfixturevalue('sgd_run')[0]
    finally:
        killer.join()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / 'killed.log').read_text()
    assert not (folder / '2.pt').exists(), 'the run ended before the kill: nothing was tested'
    for name in os.listdir(folder):  # whatever the kill interrupted, no final name is truncated
        if name.endswith('.pt') and not name.startswith('.'):
            load(folder / name)

    # the resume reads nothing but the killed run's files: main() in this process, on the same
    # data and one thread as the other two runs
    with in_process_state(monkeypatch, small_synthetic):
        code, out, err = in_process(capsys, 'train_sgd', *SGD_ARGS, f'--save-dir={folder}', '--resume', 'auto')
    assert code == 0, err
    assert 'resumed from' in out and 'at epoch 1' in out

    for k in range(3):
        assert_identical(load(folder / f'{k}.pt'), load(reference / f'{k}.pt'), f'{k}.pt')
    assert not (folder / '3.pt').exists()
    got, want = load(folder / 'checkpoint.pt'), load(reference / 'checkpoint.pt')
    for key in ('epoch', 'best_acc', 'model', 'optimizer', 'scheduler', 'rng', 'label_noise',
                'label_noise_labels'):
        assert_identical(got[key], want[key], key)
    assert without_seconds(got['epochs']) == without_seconds(want['epochs'])
    got, want = (json.loads((f / 'metrics_sgd.json').read_text()) for f in (folder, reference))
    assert without_seconds(got['epochs']) == without_seconds(want['epochs'])
    assert (got['final_test_acc'], got['best_test_acc']) == (want['final_test_acc'], want['best_test_acc'])
    assert (folder / 'label_noise.json').read_text() == (reference / 'label_noise.json').read_text()


def test_resume_of_a_finished_run_keeps_its_summary(cli, trajectory):
    before = json.loads((trajectory / 'metrics_sgd.json').read_text())
    cli.ok('train_sgd', *SGD_ARGS, '--save-dir', trajectory, '--resume', 'auto')
    after = json.loads((trajectory / 'metrics_sgd.json').read_text())
    assert after['final_test_acc'] == before['final_test_acc'] is not None
    assert after['best_test_acc'] == before['best_test_acc']
    assert without_seconds(after['epochs']) == without_seconds(before['epochs'])


def test_resume_refuses_other_flags_other_noise_and_non_checkpoints(cli, trajectory, tmp_path):
    before = file_state(trajectory)
    base = [*SGD_ARGS, '--save-dir', trajectory]
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', 'auto', '--lr', '0.05'),
                      'cannot resume', '--lr', '0.1')
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', 'auto', '--corrupt', '0.3'),
                      'cannot resume', '--corrupt')
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', 'auto', '--noise-model', 'wrong'),
                      'cannot resume', "--noise_model 'uniform', not 'wrong'")
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', trajectory / '1.pt'),
                      'not a full checkpoint', '1.pt')
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', tmp_path / 'nothing.pt'),
                      'missing checkpoint', 'nothing.pt')
    # a checkpoint from another folder would continue into this folder's trajectory
    other = tmp_path / 'other'
    other.mkdir()
    shutil.copy(trajectory / 'checkpoint.pt', other / 'checkpoint.pt')
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', other / 'checkpoint.pt'), 'mix')
    assert file_state(trajectory) == before

    # label-noise indices: stored in the checkpoint and checked against the ones drawn now
    original = load(trajectory / 'checkpoint.pt')
    assert original['label_noise'].numel() == original['label_noise_labels'].numel() == 100
    for key, what in (('label_noise', 'indices'), ('label_noise_labels', 'labels')):
        checkpoint = dict(original, **{key: (original[key] + 1) % 10})
        utils.save_tensors(checkpoint, str(trajectory / 'checkpoint.pt'))
        before = file_state(trajectory)
        assert_one_line_error(cli.fail('train_sgd', *base, '--resume', 'auto'), f'label-noise {what}')
        assert file_state(trajectory) == before
    # a checkpoint older than --noise-model (no such argument, no labels) ran the 'wrong' model
    legacy = dict(original, args={k: v for k, v in original['args'].items() if k != 'noise_model'})
    del legacy['label_noise_labels']
    utils.save_tensors(legacy, str(trajectory / 'checkpoint.pt'))
    assert_one_line_error(cli.fail('train_sgd', *base, '--resume', 'auto'),
                          'cannot resume', "--noise_model 'wrong', not 'uniform'")


# ----------------------------------------------------------------------------- 2. atomic files

def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / '3.pt'
    utils.save_tensors({'w': torch.arange(10.)}, str(path))
    old = path.read_bytes()

    def fails_midway(f):
        f.write(b'half a snapshot' * 100)
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        utils.atomic_write(str(path), fails_midway)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # torch.save fails half-way
        utils.save_tensors({'w': torch.ones(1000), 'f': lambda: 0}, str(path))

    def interrupted(f):  # Ctrl-C (a BaseException) half-way
        f.write(b'x' * 100)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        utils.atomic_write(str(path), interrupted)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ['3.pt']
    assert torch.equal(utils.load_file(str(path))['w'], torch.arange(10.))
    # the final file gets the usual permissions (not mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_atomic_write_killed_mid_write_keeps_old_file(tmp_path):
    path = tmp_path / '3.pt'
    utils.save_tensors({'w': torch.arange(10.)}, str(path))
    old = path.read_bytes()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: start replacing 3.pt, then hang half-way until killed
        try:
            def hang(f):
                f.write(b'half a snapshot' * 1000)
                f.flush()
                os.write(ready_w, b'!')
                time.sleep(60)
            utils.atomic_write(str(path), hang)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b'!'
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(ready_r)
    assert path.read_bytes() == old
    leftovers = [n for n in os.listdir(tmp_path) if n != '3.pt']
    # a kill leaves at most a hidden temp file, which no trajectory reader takes for a snapshot
    assert len(leftovers) == 1 and leftovers[0].startswith('.3.pt.') and leftovers[0].endswith('.tmp')


# ----------------------------------------------------------------------------- 3. unsafe files

class _Malicious:
    """Unpickling this calls os.mkdir(marker): code execution, observable and harmless."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_code_is_refused_everywhere(cli, trajectory, tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pt'
    torch.save({'conv1.weight': _Malicious(str(marker)), 'epoch': 1}, evil)
    torch.load(evil, weights_only=False)  # control: a plain unpickle does run the code
    assert marker.is_dir()
    marker.rmdir()

    # a real process: --resume of the crafted file
    quick = [a for a in SGD_ARGS if a != '--deterministic']  # (which costs ~2 s of imports)
    proc = run('train_sgd.py', *quick, '--resume', evil, '--save-dir', tmp_path / 'save')
    assert_one_line_error(proc, 'refusing to load', 'evil.pt')
    # a crafted snapshot inside a trajectory (both subspace scripts)
    shutil.copy(evil, trajectory / '1.pt')
    before = file_state(trajectory)
    for script in ('train_psgd', 'train_pbfgs'):
        assert_one_line_error(cli.fail(script, *SUBSPACE, '--save-dir', trajectory), 'refusing to load', '1.pt')
    with pytest.raises(utils.UserError, match='refusing to load'):
        utils.load_file(str(evil))
    assert not marker.exists()
    assert file_state(trajectory) == before


# ----------------------------------------------------------------------------- 4. no mixing

def test_used_save_dir_refuses_fresh_start_unless_overwrite(cli, sgd_run, trajectory, tmp_path):
    before = file_state(trajectory)
    for flags in (['--lr', '0.05'], []):  # another configuration, or even the same one
        assert_one_line_error(cli.fail('train_sgd', *SGD_ARGS, *flags, '--save-dir', trajectory),
                          'already holds a trajectory', '--overwrite', '--resume')
    # --overwrite with a run that cannot start (no CIFAR10 offline) deletes nothing
    empty = tmp_path / 'no_data'
    empty.mkdir()
    assert_one_line_error(cli.fail('train_sgd', '--datasets', 'CIFAR10', '--data-dir', empty, '--arch',
                               'resnet8', '--overwrite', '--save-dir', trajectory), 'CIFAR10 not found')
    assert file_state(trajectory) == before

    # --overwrite that starts: the old trajectory goes entirely before the new one is written
    cli.ok('train_sgd', *SGD_ARGS, '--randomseed', '2', '--epochs', '0', '--overwrite',
           '--save-dir', trajectory)
    assert sorted(n for n in os.listdir(trajectory) if n.endswith('.pt')) == ['0.pt']
    assert not torch.equal(load(trajectory / '0.pt')['conv1.weight'],
                           load(sgd_run[0] / '0.pt')['conv1.weight'])
    noise = (trajectory / 'label_noise.json').read_text()
    assert '"randomseed": 2' in noise


def test_psgd_rerun_needs_overwrite(cli, trajectory):
    args = [*SUBSPACE, '--save-dir', trajectory]
    cli.ok('train_psgd', *args)  # 0 epochs: basis, final model and metrics only
    outputs = file_state(trajectory)
    assert {'psgd_d2_0-3.pt', 'metrics_psgd_d2_0-3.json'} <= outputs.keys()
    assert_one_line_error(cli.fail('train_psgd', *args), 'already exists', '--overwrite')
    assert file_state(trajectory) == outputs
    cli.ok('train_psgd', *args, '--overwrite')
    assert json.loads((trajectory / 'metrics_psgd_d2_0-3.json').read_text())['args']['overwrite']


def test_resume_auto_without_a_checkpoint_starts_the_same_run(cli, trajectory, tmp_path):
    """A job script that always passes --resume auto: the first time it is a fresh run, bit for
    bit the run without the flag; a second call continues it (nothing left: same files)."""
    out = cli.ok('train_sgd', *SGD_ARGS, '--resume', 'auto', '--save-dir', tmp_path)
    assert 'starting a new run' in out
    for name in ('0.pt', '1.pt', '2.pt'):
        assert_identical(load(tmp_path / name), load(trajectory / name), name)
    first = file_state(tmp_path)
    cli.ok('train_sgd', *SGD_ARGS, '--resume', 'auto', '--save-dir', tmp_path)
    assert {k: v for k, v in file_state(tmp_path).items() if not k.endswith('.json')} == \
        {k: v for k, v in first.items() if not k.endswith('.json')}


def test_sgd_lr_milestones(cli, tmp_path):
    cli.ok('train_sgd', *SGD_ARGS, '--lr-milestones', '1', '--save-dir', tmp_path)
    rows = json.loads((tmp_path / 'metrics_sgd.json').read_text())['epochs']
    assert [r['lr'] for r in rows] == pytest.approx([0.1, 0.01])
    # a resume must keep the trajectory's schedule
    assert_one_line_error(cli.fail('train_sgd', *SGD_ARGS, '--epochs', '3', '--resume', 'auto',
                               '--save-dir', tmp_path), '--lr_milestones', '[1]')


def test_psgd_lr_milestones(cli, trajectory):
    # (2 steps an epoch: the schedule is per epoch)
    base = [*SUBSPACE[:-len(SMALL) - 2], '--epochs', '3', '--batch-size', '250', *SMALL,
            '--save-dir', trajectory]
    cli.ok('train_psgd', *base, '--lr', '0.5', '--lr-milestones', '1', '2')
    rows = json.loads((trajectory / 'metrics_psgd_d2_0-3.json').read_text())['epochs']
    assert [r['lr'] for r in rows] == pytest.approx([0.5, 0.05, 0.005])
    cli.ok('train_psgd', *base, '--lr', '0.5', '--lr-milestones', '--overwrite')  # none: constant
    rows = json.loads((trajectory / 'metrics_psgd_d2_0-3.json').read_text())['epochs']
    assert [r['lr'] for r in rows] == [0.5, 0.5, 0.5]


# ----------------------------------------------------------------------------- 5. one-line errors

# A subspace run that would succeed quickly on the shared trajectory (0 epochs).
SUBSPACE = ['--datasets', 'synthetic', '--arch', 'resnet8', '--corrupt', '0.2', '--params_start', '0',
            '--params_end', '3', '--n_components', '2', '--epochs', '0', *SMALL]


def _truncate(folder):
    data = (folder / '1.pt').read_bytes()
    (folder / '1.pt').write_bytes(data[:len(data) // 2])


def _replace_1(make):
    def mutate(folder):
        torch.save(make(folder), folder / '1.pt')
    return mutate


def _non_tensor_entry(folder):
    state = load(folder / '0.pt')
    state['conv1.weight'] = 3
    return state


TRAJECTORY_ERRORS = {
    'missing snapshot': (lambda f: (f / '1.pt').unlink(), [], ['missing snapshot', '1.pt']),
    'truncated snapshot': (_truncate, [], ['corrupt or truncated snapshot', '1.pt']),
    'empty snapshot': (lambda f: (f / '1.pt').write_bytes(b''), [], ['corrupt or truncated', '1.pt']),
    'garbage snapshot': (lambda f: (f / '1.pt').write_bytes(bytes(range(256)) * 16), [],
                         ['corrupt or truncated', '1.pt']),
    'other arch': (_replace_1(lambda f: models.get_model('resnet20').state_dict()), [],
                   ['1.pt', 'does not fit']),
    'other class count': (_replace_1(lambda f: models.get_model('resnet8', num_classes=100).state_dict()),
                          [], ['1.pt', 'does not fit']),
    'not a dict': (_replace_1(lambda f: [torch.zeros(3)]), [], ['1.pt', 'not a state_dict']),
    'non-tensor entry': (_replace_1(_non_tensor_entry), [], ['1.pt', 'conv1.weight']),
    'flags of another arch': (None, ['--arch', 'resnet20'], ['0.pt', 'does not fit']),
    'n_components >= t': (None, ['--n_components', '3'], ['--n_components 3', 'smaller']),
    'n_components 0': (None, ['--n_components', '0'], ['--n_components', 'positive']),
    'params_end <= params_start': (None, ['--params_start', '3'], ['--params_end', '--params_start']),
    'unknown arch': (None, ['--arch', 'resnet9000'], ['unknown arch', 'resnet9000']),
    'unknown dataset': (None, ['--datasets', 'imagenet'], ['unknown dataset', 'imagenet']),
    'pretrain-dir missing': (None, ['--pretrain-dir', '/nonexistent/dir'], ['missing snapshot']),
    'start-epoch': (None, ['--start-epoch', '2'], ['--start-epoch']),
}


@pytest.mark.parametrize('script', ['train_psgd', 'train_pbfgs'])
@pytest.mark.parametrize('case', TRAJECTORY_ERRORS)
def test_subspace_errors_are_one_line_and_delete_nothing(cli, trajectory, script, case):
    mutate, flags, fragments = TRAJECTORY_ERRORS[case]
    if mutate is not None:
        mutate(trajectory)
    before = file_state(trajectory)
    assert_one_line_error(cli.fail(script, *SUBSPACE, *flags, '--save-dir', trajectory), *fragments)
    assert file_state(trajectory) == before


SGD_ERRORS = {
    'unknown arch': (['--arch', 'resnet9000'], ['unknown arch', 'resnet9000']),
    'unknown dataset': (['--datasets', 'imagenet'], ['unknown dataset', 'imagenet']),
    'corrupt > 1': (['--corrupt', '1.5'], ['--corrupt', '[0, 1]']),
    'corrupt < 0': (['--corrupt', '-0.1'], ['--corrupt', '[0, 1]']),
    'smalldatasets 0': (['--smalldatasets', '0'], ['--smalldatasets', '(0, 1]']),
    'smalldatasets > 1': (['--smalldatasets', '1.5'], ['--smalldatasets', '(0, 1]']),
    'batch size 0': (['--batch-size', '0'], ['--batch-size', 'positive']),
    'batch size < 0': (['--batch-size', '-4'], ['--batch-size', 'positive']),
    'epochs < 0': (['--epochs', '-1'], ['--epochs', '>= 0']),
    'resume missing': (['--resume', '/nonexistent/checkpoint.pt'], ['missing checkpoint']),
    'not a number': (['--lr', 'fast'], ['--lr']),
    'no such device': (['--device', 'cuda:999'], ['--device cuda:999']),
    'start-epoch without resume': (['--start-epoch', '1'], ['--start-epoch 1', '--resume']),
}


@pytest.mark.parametrize('case', SGD_ERRORS)
def test_sgd_errors_are_one_line_and_delete_nothing(cli, trajectory, case):
    flags, fragments = SGD_ERRORS[case]
    before = file_state(trajectory)
    # --overwrite: were the check late, the earlier trajectory would already be gone
    assert_one_line_error(cli.fail('train_sgd', *SGD_ARGS, *flags, '--overwrite', '--save-dir', trajectory),
                      *fragments)
    assert file_state(trajectory) == before


@pytest.mark.parametrize('script', ['train_sgd', 'train_psgd', 'train_pbfgs'])
def test_unwritable_save_dir(cli, tmp_path, script):
    afile = tmp_path / 'afile'  # root may write anywhere, but not below a regular file
    afile.write_text('not a folder')
    flags = SGD_ARGS if script == 'train_sgd' else SUBSPACE
    for save_dir in (afile / 'sub', afile):
        assert_one_line_error(cli.fail(script, *flags, '--save-dir', save_dir), '--save-dir', str(save_dir))
    assert afile.read_text() == 'not a folder'


# ----------------------------------------------------------------------------- 6. non-finite

def test_sgd_nonfinite_loss_stops_and_keeps_last_good_snapshot(cli, tmp_path):
    folder = tmp_path / 'blowup'
    code, _, err = cli.fail('train_sgd', '--datasets', 'synthetic', '--arch', 'resnet8', '--lr', '1e30',
                            '--epochs', '3', '--batch-size', '500', *SMALL, '--save-dir', folder)
    # SystemExit(message): the interpreter prints it on stderr and exits with status 1
    assert isinstance(code, str) and code.startswith('error: non-finite') and 'Traceback' not in err
    last_good = code.split('last good snapshot is ')[1].split(' ')[0]
    assert os.path.isfile(last_good)
    k = int(os.path.basename(last_good)[:-3])
    snapshots = sorted(n for n in os.listdir(folder) if n[0].isdigit())
    assert snapshots == [f'{i}.pt' for i in range(k + 1)]
    if (folder / 'metrics_sgd.json').exists():  # epochs are recorded only when they went well
        rows = json.loads((folder / 'metrics_sgd.json').read_text())['epochs']
        assert len(rows) == k and all(math.isfinite(r['test_loss']) for r in rows)
    for name in snapshots + ['checkpoint.pt'] * (folder / 'checkpoint.pt').exists():
        state = load(folder / name)
        state = state.get('model', state)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), name


def test_pbfgs_nonfinite_loss_skips_steps_end_to_end(cli, trajectory):
    # 0.pt gets one huge (finite) BatchNorm scale: the forward pass overflows to inf/NaN there
    state = load(trajectory / '0.pt')
    state['bn1.weight'][0] = 3e38
    utils.save_tensors(state, str(trajectory / '0.pt'))
    out = cli.ok('train_pbfgs', *SUBSPACE, '--n_components', '1', '--epochs', '1', '--batch-size', '250',
                 '--bn-update', '0', '--save-dir', trajectory)  # (re-estimation would overflow too)
    row = json.loads((trajectory / 'metrics_pbfgs_d1_0-3.json').read_text())['epochs'][0]
    assert row['steps'] == 2 and row['nonfinite_skips'] == 2 and row['trials'] == 0
    assert 'skipped 2' in out
    final = load(trajectory / 'pbfgs_d1_0-3.pt')
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    assert_identical(final, state)  # every step skipped: weights and BN statistics untouched
    assert row['train_loss'] is None  # NaN, written as JSON null (strict JSON)
