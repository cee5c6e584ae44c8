"""Bad input, flag by flag (issue 29): each class of bad value is one ``error:`` line and exit
status 2 before any work (or the right behaviour, stated in --help), nothing the user had is
deleted or left behind; under torchrun an argument error is printed once.

The matrix at the end covers every flag of train_sgd.py, train_psgd.py, train_pbfgs.py and
sweep.py that takes a value: a junk value, a boundary value and, for a path, one that is not a
folder / not a file / not writable; parse-time only (no training), in about a second.  A flag
added later without a row makes :func:`test_matrix_covers_every_flag` fail.

The run-level tests share one tiny trajectory (500 images, 2 batches an epoch, 2 epochs) trained
in-process.
"""
import argparse
import importlib
import json
import os
import shutil
import time

import pytest
import torch

import distributed
import flags
import sgd_run
import tracking
import utils
from helpers import SMALL, assert_one_line_error, file_state, in_process_state
from test_distributed import torchrun

TINY = ['--datasets', 'synthetic', '--arch', 'resnet8', '--batch-size', '250', *SMALL]
SUBSPACE = [*TINY, '--params_start', '0', '--params_end', '3', '--n_components', '2']


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, small_synthetic):
    """0.pt .. 2.pt, checkpoints and metrics of a 2-epoch run (2 steps an epoch); copy it."""
    folder = tmp_path_factory.mktemp('bad_input') / 'run'
    with pytest.MonkeyPatch.context() as mp, in_process_state(mp, small_synthetic):
        importlib.import_module('train_sgd').main([*TINY, '--epochs', '2', '--save-dir', str(folder)])
    return folder


@pytest.fixture
def trajectory(tiny_run, tmp_path):
    folder = tmp_path / 'run'
    shutil.copytree(tiny_run, folder)
    return folder


@pytest.fixture
def afile(tmp_path):
    """A regular file (root may write anywhere, but not into or below a file)."""
    path = tmp_path / 'afile'
    path.write_text('not a folder')
    return path


@pytest.fixture
def readonly(tmp_path, monkeypatch):
    """A read-only folder.  Root ignores permission bits: then ``os.access`` is made to answer
    as on a read-only file system (which it reports to root too)."""
    folder = tmp_path / 'readonly'
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access

        def access(path, mode, *args, **kwargs):
            inside = os.path.abspath(path) == str(folder) or os.path.abspath(path).startswith(f'{folder}/')
            return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)
        monkeypatch.setattr(os, 'access', access)
    yield folder
    folder.chmod(0o755)


def metrics(folder, name='metrics_sgd.json'):
    return json.loads((folder / name).read_text())


# ------------------------------------------------------------------------- 1, 2: the log folder

@pytest.mark.parametrize('script', ['train_sgd', 'train_psgd', 'train_pbfgs'])
@pytest.mark.parametrize('logger', [['tensorboard'], ['wandb'], ['tensorboard', 'wandb']])
def test_unwritable_log_dir_is_refused_before_any_work(cli, trajectory, afile, readonly, script, logger):
    base = TINY if script == 'train_sgd' else SUBSPACE
    before = file_state(trajectory)
    resume = [['--resume', 'auto']] if script == 'train_sgd' else [[]]
    for log_dir in (afile, afile / 'sub', readonly, readonly / 'sub'):
        for extra in resume + [[]]:
            assert_one_line_error(cli.fail(script, *base, *extra, '--save-dir', trajectory, '--logger',
                                           *logger, '--log-dir', log_dir), '--log-dir', str(log_dir))
    # the default, <save-dir>/logs, a file
    (trajectory / 'logs').write_text('')
    assert_one_line_error(cli.fail(script, *base, '--save-dir', trajectory, '--logger', *logger),
                          '--save-dir', 'logs')
    (trajectory / 'logs').unlink()
    assert file_state(trajectory) == before and afile.read_text() == 'not a folder'
    assert os.listdir(readonly) == []


def test_tracker_turns_a_late_os_error_into_one_line(afile):
    """The backstop: a log folder that went bad after the flags were checked."""
    args = argparse.Namespace(logger=['tensorboard'], log_dir=str(afile), save_dir='unused')
    with pytest.raises(utils.UserError, match='--log-dir'):
        tracking.make_tracker(args, name='run')


# ------------------------------------------------------------------------- 3: junk .pt files

@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('junk', [b'hello\n', b'\x80\x04\x95', b'PK\x03\x04junk', b'\x00' * 64])
def test_junk_file_is_one_error_line(junk, tmp_path):
    path = tmp_path / 'f.pt'
    path.write_bytes(junk)
    with pytest.raises(utils.UserError, match='corrupt or truncated|refusing to load'):
        utils.load_file(str(path))


@pytest.mark.parametrize('flags_', [['--resume'], ['-e', '--resume'], ['--pretrained']])
def test_text_file_as_checkpoint_or_weights(cli, tmp_path, flags_):
    junk = tmp_path / 'f.pt'
    junk.write_text('hello\n')
    result = cli.fail('train_sgd', *TINY, '--save-dir', tmp_path / 'save', *flags_, junk)
    assert_one_line_error(result, 'corrupt or truncated', str(junk), flags_[-1])
    assert junk.read_text() == 'hello\n'
    if flags_[-1] == '--resume':  # refused before the save-dir is made
        assert not (tmp_path / 'save').exists()


# ------------------------------------------------------------------------- 4: devices

@pytest.mark.parametrize('case', [['--device', 'meta'], ['--device', 'mps'], ['--device', 'xpu'],
                                  ['--basis-device', 'meta'], ['--basis-device', 'mps'],
                                  ['--basis-device', 'meta', '--shard-basis']])
def test_unusable_device_is_refused_while_parsing(cli, tmp_path, case):
    if case[1] == 'mps' and torch.backends.mps.is_available():
        pytest.skip('mps is usable here')
    scripts = ['train_psgd', 'train_pbfgs'] + ['train_sgd'] * (case[0] == '--device')
    for script in scripts:
        base = TINY if script == 'train_sgd' else SUBSPACE
        save = tmp_path / script
        assert_one_line_error(cli.fail(script, *base, *case, '--save-dir', save), case[0], case[1])
        assert not save.exists()  # (train_sgd --device meta wrote a 0.pt of nothing)


# ------------------------------------------------------------------------- 5, 6: the lr schedule

def test_default_milestones_never_collapse():
    import train_sgd
    expect = {0: [], 1: [], 2: [1], 3: [1, 2], 4: [2, 3], 8: [4, 6], 200: [100, 150]}
    for epochs, steps in expect.items():
        args = train_sgd.parse_args(['--datasets', 'synthetic', '--epochs', str(epochs)])
        assert sgd_run.milestones(args) == steps, epochs
        assert (sgd_run.milestones_note(args) is None) == (epochs == 0 or len(steps) == 2), epochs
    note = sgd_run.milestones_note(train_sgd.parse_args(['--datasets', 'synthetic', '--epochs', '1']))
    assert 'constant' in note and '--epochs 1' in note
    # the reference's schedules and explicit milestones are kept as they are
    args = train_sgd.parse_args(['--epochs', '1'])
    assert sgd_run.milestones(args) == [100, 150] and sgd_run.milestones_note(args) is None
    args = train_sgd.parse_args(['--datasets', 'synthetic', '--epochs', '1', '--lr-milestones', '5'])
    assert sgd_run.milestones(args) == [5] and sgd_run.milestones_note(args) is None


def test_short_runs_train_at_the_given_lr_and_decay_once(cli, tmp_path):
    for epochs, lrs in ((1, [0.1]), (2, [0.1, 0.01])):
        out = cli.ok('train_sgd', *TINY, '--epochs', epochs, '--save-dir', tmp_path / str(epochs))
        assert [r['lr'] for r in metrics(tmp_path / str(epochs))['epochs']] == pytest.approx(lrs)
        assert f'note: --epochs {epochs} is too short' in out


@pytest.mark.parametrize('script', ['train_sgd', 'train_psgd'])
def test_repeated_milestone_is_refused(cli, tmp_path, script):
    base = TINY if script == 'train_sgd' else SUBSPACE
    assert_one_line_error(cli.fail(script, *base, '--lr-milestones', '2', '2', '--save-dir', tmp_path / 's'),
                          '--lr-milestones', 'twice')


def test_resume_with_more_epochs_follows_the_current_schedule(cli, trajectory):
    out = cli.ok('train_sgd', *TINY, '--epochs', '4', '--resume', 'auto', '--save-dir', trajectory)
    line = [x for x in out.splitlines() if x.startswith('--resume:')]
    assert len(line) == 1 and '--epochs 4' in line[0] and 'after epochs 2 3' in line[0], out
    assert 'after epochs 1' in line[0] and 'lr 0.01 from epoch 3' in line[0]
    # epochs 3 and 4 as in an uninterrupted --epochs 4 run (decays after epochs 2 and 3)
    assert [r['lr'] for r in metrics(trajectory)['epochs']] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    checkpoint = torch.load(trajectory / 'checkpoint.pt', weights_only=True)
    assert sorted(checkpoint['scheduler']['milestones'].elements()) == [2, 3]


def test_resume_with_explicit_milestones_says_the_schedule_is_unchanged(cli, tmp_path):
    base = [*TINY, '--lr-milestones', '1', '--save-dir', tmp_path]
    cli.ok('train_sgd', *base, '--epochs', '1')
    out = cli.ok('train_sgd', *base, '--epochs', '2', '--resume', 'auto')
    assert '--epochs 2' in out and 'does not depend on it: x0.1 after epochs 1' in out
    assert [r['lr'] for r in metrics(tmp_path)['epochs']] == pytest.approx([0.1, 0.01])


# ------------------------------------------------------------------------- 7: --bn-update

def test_bn_update_larger_than_an_epoch_uses_and_records_the_batches_there_are(cli, trajectory):
    args = [*SUBSPACE, '--epochs', '1', '--bn-update', '1000', '--save-dir', trajectory]
    out = cli.ok('train_psgd', *args)
    assert 'an epoch has 2 training batches' in out
    record = metrics(trajectory, 'metrics_psgd_d2_0-3.json')
    assert record['bn_update_batches'] == 2 and record['args']['bn_update'] == 1000  # as given
    out = cli.ok('train_psgd', *args, '-e')
    assert 're-estimated on 2 training batches' in out and 're-estimated on 1000' not in out


# ------------------------------------------------------------------------- 8: once under torchrun

def test_argparse_error_is_printed_by_rank_0_only(monkeypatch, capsys):
    import train_psgd
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(time, 'sleep', lambda s: None)
    for rank, printed in (('1', False), ('0', True)):
        monkeypatch.setenv('RANK', rank)
        with pytest.raises(SystemExit) as info:
            train_psgd.parse_args([*SUBSPACE, '--log-every', '0'])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert (err.count('error: ') == 1 and '--log-every' in err) if printed else err == ''


@pytest.mark.parametrize('case', [
    ['--log-every', '0'],  # argparse
    ['--basis-device', 'meta', '--shard-basis'],  # flags' checks (UserError)
    ['--logger', 'tensorboard', '--log-dir', '{afile}'],
])
def test_torchrun_argument_error_printed_once(tmp_path, afile, case):
    case = [a.format(afile=afile) for a in case]
    start = time.monotonic()
    proc = torchrun('train_psgd.py', *SUBSPACE, '--device', 'cpu', *case, '--save-dir', tmp_path / 's')
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    ours = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(ours) == 1 and case[0] in ours[0], err
    assert not (tmp_path / 's').exists()


# ------------------------------------------------------------------------- side notes

def test_adam_records_the_lr_it_trains_with(capsys):
    import train_sgd
    args = train_sgd.parse_args(['--datasets', 'synthetic', '--optimizer', 'adam', '--lr', '0.05'])
    assert args.lr == flags.ADAM_LR == 0.001
    assert 'not --lr 0.05' in capsys.readouterr().out
    args = train_sgd.parse_args(['--datasets', 'synthetic', '--optimizer', 'adam'])
    assert args.lr == 0.001 and capsys.readouterr().out == ''  # the default --lr: no note
    assert train_sgd.parse_args(['--optimizer', 'adamw', '--lr', '0.05']).lr == 0.05


@pytest.mark.parametrize('script', ['train_psgd', 'train_pbfgs'])
def test_missing_trajectory_leaves_no_empty_save_dir(cli, tmp_path, trajectory, script):
    new = tmp_path / 'new'
    assert_one_line_error(cli.fail(script, *SUBSPACE, '--save-dir', new), 'missing snapshot')
    assert_one_line_error(cli.fail(script, *SUBSPACE, '--pretrain-dir', tmp_path / 'nothing',
                                   '--save-dir', new), 'missing snapshot')
    assert_one_line_error(cli.fail(script, *SUBSPACE, '--pretrain-dir', trajectory, '--train-start', '7',
                                   '--save-dir', new), 'missing snapshot', '7.pt')
    assert_one_line_error(cli.fail(script, *SUBSPACE, '-e', '--save-dir', new), 'missing', '-e')
    assert not new.exists()


# ------------------------------------------------------------------------- the matrix

SCRIPTS = ('train_sgd', 'train_psgd', 'train_pbfgs', 'sweep')
NO_VALUE = {'help', 'evaluate', 'half', 'channels_last', 'overwrite', 'deterministic', 'augment',
            'shard_basis'}
PATH_METAVARS = ('DIR', 'PATH')

OK = None


def err(*fragments):
    return fragments


# dest: [(kind, scripts (None: all that have the flag), argv, expected: OK or err(fragments))].
# kind: junk, boundary or path (a file / below a file / read-only / a folder for a file / absent).
# {afile}, {readonly}, {fresh} (an absent path in a writable folder) are filled in per test.
ALL = None
MATRIX = {
    'arch': [('junk', ALL, ['--arch', 'resnet9000'], err('--arch', 'unknown arch')),
             ('boundary', ALL, ['--arch', 'resnet8'], OK)],
    'datasets': [('junk', ALL, ['--datasets', 'imagenet'], err('--datasets', 'unknown dataset')),
                 ('boundary', ALL, ['--datasets', 'MNIST'], OK)],
    'data_dir': [('path', ALL, ['--data-dir', '{afile}'], err('--data-dir', 'not a folder')),
                 ('path', ALL, ['--data-dir', '{afile}/sub'], err('--data-dir', 'not a folder')),
                 ('boundary', ALL, ['--data-dir', '{fresh}'], OK)],
    'image_size': [('junk', ALL, ['--image-size', 'big'], err('--image-size')),
                   ('junk', ALL, ['--image-size', '0'], err('--image-size', 'positive')),
                   ('boundary', ALL, ['--image-size', '1'], OK)],
    'workers': [('junk', ALL, ['--workers', '-1'], err('--workers', '>= 0')),
                ('boundary', ALL, ['--workers', '0'], OK)],
    'epochs': [('junk', ALL, ['--epochs', '-1'], err('--epochs', '>= 0')),
               ('junk', ALL, ['--epochs', '1.5'], err('--epochs')),
               ('boundary', ALL, ['--epochs', '0'], OK)],
    'batch_size': [('junk', ALL, ['--batch-size', '0'], err('--batch-size', 'positive')),
                   ('boundary', ALL, ['--batch-size', '1'], OK)],
    'eval_batch_size': [('junk', ALL, ['--eval-batch-size', '-1'], err('--eval-batch-size', 'positive')),
                        ('boundary', ALL, ['--eval-batch-size', '1'], OK)],
    'print_freq': [('junk', ALL, ['--print-freq', '-1'], err('--print-freq', '>= 0')),
                   ('boundary', ALL, ['--print-freq', '0'], OK)],
    'amp': [('junk', ALL, ['--amp', 'fp8'], err('--amp', 'invalid choice')),
            ('boundary', ALL, ['--amp', 'bf16'], OK)],
    'compile': [('junk', ALL, ['--compile', 'fast'], err('--compile', 'invalid choice')),
                ('boundary', ALL, ['--compile'], OK),
                ('boundary', ALL, ['--compile', 'reduce-overhead'], OK)],
    'save_dir': [('path', ALL, ['--save-dir', '{afile}'], err('--save-dir', 'not a folder')),
                 ('path', ALL, ['--save-dir', '{afile}/sub'], err('--save-dir', 'not a folder')),
                 ('path', ALL, ['--save-dir', '{readonly}'], err('--save-dir', 'not writable')),
                 ('path', ALL, ['--save-dir', '{readonly}/sub'], err('--save-dir', 'not writable')),
                 ('boundary', ALL, ['--save-dir', '{fresh}/a/b'], OK)],
    'randomseed': [('junk', ALL, ['--randomseed', '-1'], err('--randomseed', '2**32')),
                   ('junk', ALL, ['--randomseed', str(2**32)], err('--randomseed', '2**32')),
                   ('boundary', ALL, ['--randomseed', '0'], OK)],
    'corrupt': [('junk', ALL, ['--corrupt', '1.5'], err('--corrupt', '[0, 1]')),
                ('boundary', ALL, ['--corrupt', '1'], OK)],
    'noise_model': [('junk', ALL, ['--noise-model', 'symmetric'], err('--noise-model', 'invalid choice')),
                    ('boundary', ALL, ['--noise-model', 'wrong'], OK)],
    'smalldatasets': [('junk', ALL, ['--smalldatasets', '0'], err('--smalldatasets', '(0, 1]')),
                      ('boundary', ALL, ['--smalldatasets', '1'], OK)],
    'device': [('junk', ALL, ['--device', 'gpu0'], err('--device', 'gpu0')),
               ('junk', ALL, ['--device', 'meta'], err('--device meta', 'not a device')),
               ('junk', ALL, ['--device', 'cuda:999'], err('--device cuda:999')),
               ('boundary', ALL, ['--device', 'cpu'], OK)],
    'dist_backend': [('junk', ALL, ['--dist-backend', 'mpi'], err('--dist-backend', 'invalid choice')),
                     ('boundary', ALL, ['--dist-backend', 'gloo'], OK)],
    'dist_timeout': [('junk', ALL, ['--dist-timeout', '0'], err('--dist-timeout', 'positive')),
                     ('boundary', ALL, ['--dist-timeout', '1'], OK)],
    'logger': [('junk', ALL, ['--logger', 'mlflow'], err('--logger', 'mlflow')),
               ('boundary', ALL, ['--logger', 'tensorboard', 'tensorboard'], OK)],
    'log_dir': [('path', ALL, ['--logger', 'tensorboard', '--log-dir', '{afile}'], err('--log-dir', 'not a folder')),
                ('path', ALL, ['--logger', 'wandb', '--log-dir', '{readonly}'], err('--log-dir', 'not writable')),
                ('path', ALL, ['--logger', 'wandb', '--log-dir', '{afile}/sub'], err('--log-dir', 'not a folder')),
                ('boundary', ALL, ['--logger', 'tensorboard', '--log-dir', '{fresh}'], OK),
                ('boundary', ALL, ['--log-dir', '{afile}'], OK)],  # (no --logger: not used)
    'wandb_project': [('junk', ALL, ['--wandb-project', ''], err('--wandb-project', 'not empty')),
                      ('junk', ALL, ['--wandb-project', 'a/b'], err('--wandb-project')),
                      ('boundary', ALL, ['--wandb-project', 'p' * 128], OK)],
    'log_every': [('junk', ALL, ['--log-every', '0'], err('--log-every', 'positive')),
                  ('boundary', ALL, ['--log-every', '1'], OK)],
    'lr': [('junk', ('train_sgd', 'train_psgd'), ['--lr', '0'], err('--lr', '> 0')),
           ('junk', ('train_sgd', 'train_psgd'), ['--lr', 'nan'], err('--lr', 'finite')),
           ('boundary', ('train_sgd', 'train_psgd'), ['--lr', '1e-9'], OK),
           ('junk', ('train_pbfgs',), ['--lr', 'fast'], err('--lr')),
           ('boundary', ('train_pbfgs',), ['--lr', '0'], OK)],  # (ignored: the line search)
    'momentum': [('junk', ALL, ['--momentum', '1'], err('--momentum', '[0, 1)')),
                 ('junk', ALL, ['--momentum', '-0.1'], err('--momentum', '[0, 1)')),
                 ('boundary', ALL, ['--momentum', '0'], OK)],
    'lr_milestones': [('junk', ALL, ['--lr-milestones', '0'], err('--lr-milestones', 'positive')),
                      ('junk', ALL, ['--lr-milestones', '3', '3'], err('--lr-milestones', 'twice')),
                      ('boundary', ALL, ['--lr-milestones'], OK)],
    'optimizer': [('junk', ALL, ['--optimizer', 'lbfgs'], err('--optimizer', 'invalid choice')),
                  ('boundary', ALL, ['--optimizer', 'adam', '--lr', '0.001'], OK)],
    'galore_rank': [('junk', ALL, ['--optimizer', 'galore', '--galore-rank', '0'], err('--galore-rank', 'positive')),
                    ('junk', ALL, ['--galore-rank', '4'], err('--galore-rank', 'only apply to --optimizer galore')),
                    ('boundary', ALL, ['--optimizer', 'galore', '--galore-rank', '1'], OK)],
    'galore_gap': [('junk', ALL, ['--optimizer', 'galore', '--galore-gap', '0'], err('--galore-gap', 'positive')),
                   ('junk', ALL, ['--optimizer', 'adamw', '--galore-gap', '5'], err('--galore-gap', 'galore')),
                   ('boundary', ALL, ['--optimizer', 'galore', '--galore-gap', '1'], OK)],
    'galore_scale': [('junk', ALL, ['--optimizer', 'galore', '--galore-scale', '0'], err('--galore-scale', '> 0')),
                     ('junk', ALL, ['--galore-scale', '1'], err('--galore-scale', 'galore')),
                     ('boundary', ALL, ['--optimizer', 'galore', '--galore-scale', '1e-9'], OK)],
    'start_epoch': [('junk', ALL, ['--start-epoch', '-1'], err('--start-epoch', '>= 0')),
                    ('junk', ALL, ['--start-epoch', '1'], err('--start-epoch 1', '--resume')),
                    ('boundary', ALL, ['--start-epoch', '0'], OK)],
    'weight_decay': [('junk', ALL, ['--weight-decay', '-0.1'], err('--weight-decay', '>= 0')),
                     ('junk', ALL, ['--weight-decay', 'inf'], err('--weight-decay', 'finite')),
                     ('boundary', ALL, ['--weight-decay', '0'], OK)],
    'resume': [('path', ALL, ['--resume', '{fresh}'], err('--resume', 'missing checkpoint')),
               ('path', ALL, ['--resume', '{readonly}'], err('--resume', 'a folder')),
               ('boundary', ALL, ['--resume', 'auto'], OK),
               ('boundary', ALL, ['--resume', ''], OK)],
    'pretrained': [('path', ALL, ['--pretrained', '{fresh}'], err('--pretrained', 'missing weights')),
                   ('path', ALL, ['--pretrained', '{readonly}'], err('--pretrained', 'a folder')),
                   ('junk', ALL, ['--pretrained'], err('--pretrained', 'ImageNet only')),
                   ('boundary', ALL, ['--pretrained', '{afile}'], OK)],  # (read at the start)
    'save_every': [('junk', ALL, ['--save-every', '0'], err('--save-every', 'positive')),
                   ('boundary', ALL, ['--save-every', '1'], OK)],
    'snapshot_every': [('junk', ALL, ['--snapshot-every', '0'], err('--snapshot-every', 'positive')),
                       ('boundary', ALL, ['--snapshot-every', '1'], OK)],
    'n_components': [('junk', ALL, ['--n_components', '0'], err('--n_components', 'positive')),
                     ('junk', ALL, ['--n_components', '3'], err('--n_components 3', 'smaller')),
                     ('boundary', ALL, ['--n_components', '1'], OK)],
    'params_start': [('junk', ALL, ['--params_start', '-1'], err('--params_start', '>= 0')),
                     ('junk', ALL, ['--params_start', '3'], err('--params_end', '--params_start')),
                     ('boundary', ALL, ['--params_start', '0'], OK)],
    'params_end': [('junk', ALL, ['--params_end', '0'], err('--params_end', 'greater')),
                   ('boundary', ALL, ['--params_end', '3'], OK)],
    'params_step': [('junk', ALL, ['--params-step', '0'], err('--params-step', 'positive')),
                    ('junk', ALL, ['--params-step', '2'], err('--n_components 2', 'step 2')),
                    ('boundary', ALL, ['--params-step', '1'], OK)],
    'pretrain_dir': [('path', ALL, ['--pretrain-dir', '{afile}'], err('--pretrain-dir', 'a file')),
                     ('boundary', ALL, ['--pretrain-dir', '{fresh}'], OK)],  # (checked at the start)
    'subspace': [('junk', ALL, ['--subspace', 'pca'], err('--subspace', 'invalid choice')),
                 ('boundary', ALL, ['--subspace', 'twa'], OK)],
    'subspace_seed': [('junk', ALL, ['--subspace-seed', '-1'], err('--subspace-seed', '2**32')),
                      ('boundary', ALL, ['--subspace-seed', '0'], OK)],
    'train_start': [('junk', ALL, ['--train-start', 'median'], err('--train-start')),
                    ('junk', ALL, ['--train-start', '-1'], err('--train-start')),
                    ('boundary', ALL, ['--train-start', 'mean'], OK)],
    'alpha': [('junk', ALL, ['--alpha', '-1'], err('--alpha', '>= 0')),
              ('boundary', ALL, ['--alpha', '0'], OK)],
    'gamma': [('junk', ALL, ['--gamma', '1'], err('--gamma', '[0, 1)')),
              ('boundary', ALL, ['--gamma', '0'], OK)],
    'basis_memory': [('junk', ALL, ['--basis-memory', '0'], err('--basis-memory', 'positive')),
                     ('boundary', ALL, ['--basis-memory', '1'], OK)],
    'basis_dtype': [('junk', ALL, ['--basis-dtype', 'float8'], err('--basis-dtype', 'invalid choice')),
                    ('junk', ALL, ['--basis-dtype', 'bf16', '--subspace', 'fastfood'], err('--basis-dtype bf16')),
                    ('boundary', ALL, ['--basis-dtype', 'int8'], OK)],
    'basis_device': [('junk', ALL, ['--basis-device', 'meta'], err('--basis-device meta', 'not a device')),
                     ('junk', ALL, ['--basis-device', 'cuda:999'], err('--basis-device cuda:999')),
                     ('boundary', ALL, ['--basis-device', 'cpu'], OK)],
    'bn_update': [('junk', ALL, ['--bn-update', '-1'], err('--bn-update', '>= 0')),
                  ('boundary', ALL, ['--bn-update', '0'], OK)],
    'accumulate': [('junk', ALL, ['--accumulate', '0'], err('--accumulate', 'positive')),
                   ('boundary', ALL, ['--accumulate', '1'], OK)],
    'max_trials': [('junk', ALL, ['--max-trials', '0'], err('--max-trials', 'positive')),
                   ('boundary', ALL, ['--max-trials', '1'], OK)],
    'curvature_pairs': [('junk', ALL, ['--curvature-pairs', 'all'], err('--curvature-pairs', 'invalid choice')),
                        ('boundary', ALL, ['--curvature-pairs', 'same-batch'], OK)],
    # sweep.py
    'kinds': [('junk', ALL, ['--kinds', 'pca'], err('--kinds', 'invalid choice')),
              ('boundary', ALL, ['--kinds', 'fastfood'], OK)],
    'dims': [('junk', ALL, ['--dims', '0'], err('--dims', 'positive')),
             ('junk', ALL, ['--dims', 'x'], err('--dims')),
             ('boundary', ALL, ['--dims', '1'], OK)],
    'seeds': [('junk', ALL, ['--seeds', '-1'], err('--seeds', '2**32')),
              ('boundary', ALL, ['--seeds', '0'], OK)],
    'target': [('junk', ALL, ['--target', '0'], err('--target', '> 0')),
               ('junk', ALL, ['--target', 'nan'], err('--target', 'finite')),
               ('boundary', ALL, ['--target', '1'], OK)],
    'success': [('junk', ALL, ['--success', '0'], err('--success', '(0, 1]')),
                ('boundary', ALL, ['--success', '1'], OK)],
}

BASE = {'train_sgd': ['--datasets', 'synthetic', '--arch', 'resnet8'],
        'train_psgd': ['--datasets', 'synthetic', '--arch', 'resnet8', '--params_start', '0',
                       '--params_end', '3', '--n_components', '2'],
        'sweep': ['--dims', '2']}
BASE['train_pbfgs'] = BASE['train_psgd']
SWEEP_PASSED_ON = ['--', '--datasets', 'synthetic', '--arch', 'resnet8', '--params_end', '3']


class _Parser(Exception):
    pass


def parser_of(script):
    """The script's parser, as its parse_args builds it (captured before parsing anything)."""
    module = importlib.import_module(script)

    def capture(self, *args, **kwargs):
        raise _Parser(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flags.Parser, 'parse_args', capture)
        mp.setattr(flags.Parser, 'parse_known_args', capture)
        with pytest.raises(_Parser) as info:
            module.parse_args([])
    return info.value.args[0]


def value_actions(script):
    """{dest: action} of every flag of ``script`` (the no-value ones included)."""
    return {a.dest: a for a in parser_of(script)._actions}


def test_matrix_covers_every_flag():
    """A flag that takes a value needs a junk and a boundary row (and, for a path, a path row);
    one that takes none must be listed in NO_VALUE."""
    for script in SCRIPTS:
        for dest, action in value_actions(script).items():
            if action.nargs == 0:
                assert dest in NO_VALUE, f'{script}: {action.option_strings} takes no value: add it to NO_VALUE'
                continue
            rows = [r for r in MATRIX.get(dest, []) if r[1] is None or script in r[1]]
            kinds = {r[0] for r in rows}
            assert {'junk', 'boundary'} <= kinds or {'path', 'boundary'} <= kinds, \
                f'{script}: {action.option_strings} needs junk and boundary rows in MATRIX'
            if action.metavar in PATH_METAVARS or dest.endswith('_dir'):
                assert 'path' in kinds, f'{script}: {action.option_strings} is a path: add a path row'
            assert all(set(r[2]) & set(action.option_strings) for r in rows), (script, dest)


def matrix_cases():
    for script in SCRIPTS:
        dests = value_actions(script)
        for dest, rows in MATRIX.items():
            for i, (kind, scripts, argv, expected) in enumerate(rows):
                if dest in dests and (scripts is None or script in scripts):
                    yield pytest.param(script, argv, expected, id=f'{script}-{dest}-{kind}{i}')


@pytest.mark.parametrize('script,argv,expected', list(matrix_cases()))
def test_matrix(script, argv, expected, tmp_path, afile, readonly, capsys):
    save = tmp_path / 'save'
    fill = dict(afile=afile, readonly=readonly, fresh=tmp_path / 'fresh')
    argv = [a.format(**fill) for a in argv]
    own = [*BASE[script], '--save-dir', str(save)] if script != 'sweep' else \
        ['--save-dir', str(save), *BASE[script]]
    full = [*own, *argv, *(SWEEP_PASSED_ON if script == 'sweep' else [])]
    module = importlib.import_module(script)
    capsys.readouterr()
    start = time.monotonic()
    try:
        distributed.run_cli(lambda: module.parse_args(full))
        code = 0
    except SystemExit as e:
        code = e.code
    out, errors = capsys.readouterr()
    assert time.monotonic() - start < 5  # parse time: no work
    if expected is OK:
        assert code == 0 and errors == '', (full, errors)
    else:
        assert_one_line_error((code, out, errors), *expected)
    assert not save.exists() and not (tmp_path / 'fresh').exists()  # nothing made while parsing
    assert afile.read_text() == 'not a folder' and os.listdir(readonly) == []
