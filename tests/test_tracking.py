"""--logger tensorboard / wandb, read back with each tool's own reader and compared with the
metrics JSON the same run wrote: every per-epoch number, the per-step loss and lr at the global
iterations --log-every names, the arguments as config, the basis of subspace runs, plot.py's
figures; one writer under torchrun; a missing package as one error line; no import without
--logger.

TensorBoard's event files are read through tensorboard's EventAccumulator.  A W&B offline run is
its transaction log ``run-<id>.wandb`` (wandb 0.2x+ has no Python reader of it any more): a
LevelDB-log framing of ``wandb.proto`` Records, unframed here in a few lines and decoded with
wandb's own protobuf classes.
"""
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from helpers import CHILD_ENV, ROOT, RUNNER, SMALL, assert_one_line_error, run, run_in_process, run_with_data

import distributed

SGD = ['--datasets', 'synthetic', '--arch', 'resnet8', '--epochs', '2', *SMALL]
PSGD = ['--datasets', 'synthetic', '--arch', 'resnet8', '--epochs', '2', '--params_start', '0',
        '--params_end', '3', '--n_components', '2', '--batch-size', '128', '--lr-milestones', '1', *SMALL]
PSGD_TAG = 'psgd_d2_0-3'


def offline_env(tmp_path):
    """No credentials anywhere (a fresh HOME, no API key, no WANDB_MODE): the tracker must pick
    offline itself; WANDB_DIR in tmp_path for anything wandb writes outside --log-dir."""
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith('WANDB_')}
    home = tmp_path / 'home'
    home.mkdir(exist_ok=True)
    return {**env, 'HOME': str(home), 'WANDB_DIR': str(tmp_path / 'wandb_dir')}


def scalars(folder):
    """{tag: [(step, value)]} of the one run in ``folder``, through tensorboard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={'scalars': 0, 'tensors': 0, 'images': 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}, acc


def wandb_records(path):
    """The ``wandb.proto`` Records of an offline run's ``.wandb`` file: a 7-byte header (':W&B',
    magic, version), then 32 KiB blocks of chunks (crc32c, length, type: 1 full, 2 first, 3
    middle, 4 last; a block's tail shorter than a chunk header is padding)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(path, 'rb').read()
    assert data[:4] == b':W&B'
    pos, block, pending = 7, 32768, b''
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(folder):
    """(config, summary, history rows) of the one offline run under ``folder``."""
    files = glob.glob(os.path.join(folder, 'wandb', 'offline-run-*', 'run-*.wandb'))
    assert len(files) == 1, files
    config, summary, history = {}, {}, []
    for r in wandb_records(files[0]):
        kind = r.WhichOneof('record_type')
        key = lambda item: item.key or '/'.join(item.nested_key)  # noqa: E731
        if kind == 'config':
            config.update({key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == 'summary':
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == 'history':
            history.append({key(i): json.loads(i.value_json) for i in r.history.item})
    return config, summary, history


def close(a, b):
    """Equal to float32 rounding (TensorBoard stores float32)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def epoch_numbers(row):
    return {k: v for k, v in row.items() if k != 'epoch' and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def assert_epochs_match(tags, rows):
    """Every number of every JSON row is the scalar epoch/<key> at step = its epoch, and the
    event files hold no epoch scalar the JSON lacks."""
    keys = set().union(*(epoch_numbers(r) for r in rows))
    assert {t for t in tags if t.startswith('epoch/')} == {f'epoch/{k}' for k in keys}
    for k in keys:
        logged = dict(tags[f'epoch/{k}'])
        expected = {r['epoch']: r[k] for r in rows if k in epoch_numbers(r)}
        assert logged.keys() == expected.keys(), k
        assert all(close(logged[e], v) for e, v in expected.items()), (k, logged, expected)


@pytest.fixture(scope='module')
def logged_sgd(tmp_path_factory, small_synthetic_file):
    """One SGD run with both loggers, --log-every 2, offline W&B without credentials: a process of
    its own (its environment), on the synthetic data generated once (run_script.py --synthetic)."""
    folder = tmp_path_factory.mktemp('tracked') / 'sgd'
    env = offline_env(folder.parent)
    proc = run_with_data(small_synthetic_file, 'train_sgd', *SGD, '--save-dir', folder, '--logger', 'tensorboard',
                         'wandb', '--log-every', '2', env=env)
    assert proc.returncode == 0, proc.stderr
    return folder, proc, json.loads((folder / 'metrics_sgd.json').read_text())


def test_tensorboard_epochs_steps_and_config_equal_the_json(logged_sgd):
    folder, _, metrics = logged_sgd
    runs = sorted(os.listdir(folder / 'logs'))
    assert runs == ['sgd', 'wandb']
    assert len(glob.glob(str(folder / 'logs' / 'sgd' / 'events.out.tfevents.*'))) == 1
    tags, acc = scalars(folder / 'logs' / 'sgd')
    rows = metrics['epochs']
    assert [r['epoch'] for r in rows] == [1, 2]
    assert_epochs_match(tags, rows)
    # per step: 500 images in batches of 128 -> 4 steps an epoch, 8 in all; every 2nd logged
    steps = math.ceil(metrics['n_train'] / metrics['args']['batch_size'])
    assert [s for s, _ in tags['train/loss']] == list(range(2, 2 * steps + 1, 2))
    assert all(np.isfinite(v) and v > 0 for _, v in tags['train/loss'])
    # the lr of each step is the lr of its epoch in the JSON (the schedule steps per epoch)
    for s, lr in tags['train/lr']:
        assert close(lr, rows[(s - 1) // steps]['lr'])
    # the mean of an epoch's logged losses is near the epoch's training loss (same data)
    first = [v for s, v in tags['train/loss'] if s <= steps]
    assert abs(np.mean(first) - rows[0]['train_loss']) < 0.5
    config = json.loads(acc.Tensors('config/text_summary')[0].tensor_proto.string_val[0]
                        .decode().strip('`\n'))
    assert config == metrics['args']


def test_wandb_offline_summary_is_the_last_epoch_and_config_the_args(logged_sgd):
    folder, proc, metrics = logged_sgd
    config, summary, history = wandb_run(folder / 'logs')
    rows = metrics['epochs']
    # no credentials: offline, said in one line with the run folder and the sync command
    lines = [line for line in proc.stdout.splitlines() if line.startswith('wandb:')]
    assert len(lines) == 1 and 'offline' in lines[0] and 'wandb sync' in lines[0], proc.stdout
    run_dir = lines[0].rsplit('wandb sync ', 1)[1].strip()
    assert os.path.isdir(run_dir) and glob.glob(os.path.join(run_dir, 'run-*.wandb'))
    assert 'Traceback' not in proc.stderr
    last = epoch_numbers(rows[-1])
    assert {k: summary[f'epoch/{k}'] for k in last} == pytest.approx(last, rel=1e-9)
    assert summary['epoch'] == rows[-1]['epoch']
    assert {k: v for k, v in config.items() if not k.startswith('_')} == metrics['args']
    # every epoch row went in as one history row, every 2nd step's loss as another
    epochs = [h for h in history if 'epoch' in h]
    assert [h['epoch'] for h in epochs] == [r['epoch'] for r in rows]
    for h, r in zip(epochs, rows):
        assert {k: h[f'epoch/{k}'] for k in epoch_numbers(r)} == pytest.approx(epoch_numbers(r), rel=1e-9)
    steps = math.ceil(metrics['n_train'] / metrics['args']['batch_size'])
    assert [h['iteration'] for h in history if 'train/loss' in h] == list(range(2, 2 * steps + 1, 2))


def test_psgd_pbfgs_tensorboard_have_the_basis_and_plot_adds_its_figures(logged_sgd, tmp_path, small_synthetic):
    source, _, _ = logged_sgd
    folder = tmp_path / 'run'
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns('logs'))
    # the runs and plot.py: main(argv) in-process (as their __main__), on the synthetic data generated once
    proc = run_in_process(small_synthetic, 'train_psgd', *PSGD, '--save-dir', folder, '--logger', 'tensorboard',
                          '--log-every', '1')
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((folder / f'metrics_{PSGD_TAG}.json').read_text())
    tags, acc = scalars(folder / 'logs' / PSGD_TAG)
    assert_epochs_match(tags, metrics['epochs'])
    steps = math.ceil(metrics['n_train'] / metrics['args']['batch_size'])
    assert [s for s, _ in tags['train/loss']] == list(range(1, 2 * steps + 1))
    assert [v for _, v in tags['train/lr']] == pytest.approx([1.0] * steps + [0.1] * steps)
    basis = metrics['basis']
    assert [v for _, v in tags['basis/d']] == [basis['n_components']] == [2]
    ratio = tags['basis/explained_variance_ratio']
    assert [s for s, _ in ratio] == [1, 2]
    assert [v for _, v in ratio] == pytest.approx(basis['explained_variance_ratio'], rel=1e-6)
    assert [v for _, v in tags['basis/cumulative_explained_variance']] == \
        pytest.approx(basis['cumulative_explained_variance'], rel=1e-6)
    kind = acc.Tensors('basis/kind/text_summary')[0].tensor_proto.string_val[0].decode()
    assert kind == basis['kind'] == 'dldr'

    # P-BFGS: its own loop (no train_epoch), the loss of every step (the mean over the ranks)
    pbfgs = [a for a in PSGD if a not in ('--lr-milestones', '1')]
    proc = run_in_process(small_synthetic, 'train_pbfgs', *pbfgs, '--epochs', '1', '--save-dir', folder,
                          '--logger', 'tensorboard', '--log-every', '1')
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((folder / 'metrics_pbfgs_d2_0-3.json').read_text())
    tags, _ = scalars(folder / 'logs' / 'pbfgs_d2_0-3')
    assert_epochs_match(tags, metrics['epochs'])
    assert [s for s, _ in tags['train/loss']] == list(range(1, metrics['epochs'][0]['steps'] + 1))
    assert 'train/lr' not in tags  # the line search sets the step: there is no lr

    proc = run_in_process(small_synthetic, 'plot', 'curves', folder, '--dpi', '30', '--logger', 'tensorboard')
    assert proc.returncode == 0, proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder / 'logs' / 'figures'), size_guidance={'images': 0})
    acc.Reload()
    from PIL import Image
    with Image.open(folder / 'curves.png') as im:
        size = im.size
    (image,) = acc.Images('figures/curves')
    assert (image.width, image.height) == size


def test_torchrun_two_ranks_one_writer_equal_to_the_json(logged_sgd, tmp_path, small_synthetic_file):
    source, _, _ = logged_sgd
    folder = tmp_path / 'run'
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns('logs'))
    # train_psgd.py's __main__ through run_script.py: the ranks read the synthetic data generated once
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           RUNNER, 'package', '--synthetic', str(small_synthetic_file), 'train_psgd', *PSGD, '--device', 'cpu',
           '--save-dir', str(folder), '--logger', 'tensorboard', '--log-every', '2']
    proc = subprocess.run(cmd, cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((folder / f'metrics_{PSGD_TAG}.json').read_text())
    assert metrics['world_size'] == 2
    events = glob.glob(str(folder / 'logs' / '**' / 'events.out.tfevents.*'), recursive=True)
    assert len(events) == 1 and os.path.dirname(events[0]) == str(folder / 'logs' / PSGD_TAG)
    tags, _ = scalars(folder / 'logs' / PSGD_TAG)
    assert_epochs_match(tags, metrics['epochs'])
    steps = math.ceil(metrics['n_train'] / metrics['args']['batch_size'])
    assert [s for s, _ in tags['train/loss']] == list(range(2, 2 * steps + 1, 2))


@pytest.mark.parametrize('logger', ['tensorboard', 'wandb'])
def test_missing_package_is_one_error_line(logger, tmp_path, monkeypatch, capsys):
    import train_sgd
    monkeypatch.setitem(sys.modules, logger, None)  # import tensorboard / wandb now fails
    with pytest.raises(SystemExit) as exit_:
        distributed.run_cli(lambda: train_sgd.main([*SGD, '--save-dir', str(tmp_path / 'x'),
                                                '--logger', logger]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err
    assert f'pip install {logger}' in err
    assert not (tmp_path / 'x').exists()  # refused before any work


def test_missing_package_inside_the_tracker_too(monkeypatch):
    """The lazy import itself (a package that vanished after the flags were parsed)."""
    import tracking
    import utils
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    with pytest.raises(utils.UserError, match='pip install tensorboard'):
        tracking.TensorBoardBackend('unused')
    monkeypatch.setitem(sys.modules, 'wandb', None)
    with pytest.raises(utils.UserError, match='pip install wandb'):
        tracking.WandbBackend('unused', 'p', 'n', {})


def test_without_logger_nothing_is_imported_or_written(tmp_path):
    code = ('import sys, train_sgd, train_psgd, train_pbfgs, sweep, plot, tracking\n'
            'train_sgd.parse_args(["--datasets", "synthetic"])\n'
            'bad = [m for m in ("tensorboard", "wandb", "timm", "torch.utils.tensorboard") if m in sys.modules]\n'
            'assert not bad, bad\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=CHILD_ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_sweep_passes_the_flags_on(tmp_path):
    import sweep
    args = sweep.parse_args(['--save-dir', str(tmp_path), '--dims', '2', '--logger', 'tensorboard',
                             '--log-every', '3', '--', '--datasets', 'synthetic', '--arch', 'resnet8',
                             '--params_end', '3'])
    argv = sweep.run_argv(args, 'dldr', 2, 1)
    import train_psgd
    child = train_psgd.parse_args(argv)
    assert (child.logger, child.log_every, child.log_dir, child.wandb_project) == \
        (('tensorboard',), 3, None, 'dldr')  # (lists are frozen to tuples)


def test_sweep_help_names_the_tracking_flags_and_a_bad_logger_is_one_error_line(capsys):
    """(The training scripts' --help is checked with all their flags in test_cli.py.)"""
    import sweep
    with pytest.raises(SystemExit):
        sweep.parse_args(['--help'])
    out = capsys.readouterr().out
    for flag in ('--logger', '--log-dir', '--wandb-project', '--log-every'):
        assert flag in out, flag
    proc = run('train_sgd.py', '--datasets', 'synthetic', '--logger', 'mlflow')
    assert_one_line_error(proc, 'mlflow')
