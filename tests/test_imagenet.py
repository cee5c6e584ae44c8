"""The ImageNet path on a tiny ImageFolder written by the test (6 classes x 8 train + 4 val JPEGs of
40x40 random images, one truncated JPEG in train/): SGD with --snapshot-every -> P-SGD and P-BFGS
with --params-step at --image-size 32 with torchvision's resnet18; top-5 accuracy; --pretrained;
label noise and subsets on file lists; one-line errors for bad folders and misfitting weights.
"""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import engine
import flags
import models
import seeds
import utils
from helpers import assert_one_line_error, in_process, run, run_in_process

CLASSES, TRAIN, VAL = 6, 8, 4
COMMON = ['--datasets', 'ImageNet', '--arch', 'resnet18', '--image-size', '32', '-p', '0']


def write_image_folder(root, bad=True):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (('train', TRAIN), ('val', VAL)):
        for c in range(CLASSES):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((40, 40, 3)) * 100 + 25 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.jpg')
    if bad:  # a truncated JPEG: the run must skip it, not die
        data = (root / 'train' / 'class0' / '0.jpg').read_bytes()
        (root / 'train' / 'class0' / 'broken.jpg').write_bytes(data[:len(data) // 2])
    return root


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp('imagenet') / 'data')


@pytest.fixture(scope='module')
def sgd_run(image_folder, tmp_path_factory):
    """2 epochs of 4 steps (49 files, batch 14), a snapshot every 2 iterations, one worker."""
    save = tmp_path_factory.mktemp('sgd')
    proc = run('train_sgd.py', *COMMON, '--data-dir', image_folder, '-j', '1', '-b', '14',
               '--epochs', '2', '--snapshot-every', '2', '--save-dir', save)
    assert proc.returncode == 0, proc.stderr
    return save, proc


def test_sgd_snapshot_numbering_top5_and_skipped_file(sgd_run):
    save, proc = sgd_run
    metrics = json.loads((save / 'metrics_sgd.json').read_text())
    assert [(s['snapshot'], s['epoch'], s['step'], s['iteration']) for s in metrics['snapshots']] == [
        (0, 0, 0, 0), (1, 1, 2, 2), (2, 1, 4, 4), (3, 2, 2, 6), (4, 2, 4, 8)]
    assert sorted(p.name for p in save.glob('[0-9]*.pt')) == [f'{k}.pt' for k in range(5)]
    assert metrics['n_train'] == CLASSES * TRAIN + 1
    assert all('test_acc5' in row and 'train_acc5' in row for row in metrics['epochs'])
    assert 'top5' in proc.stdout
    # the truncated file: one warning naming it (printed once over both epochs), counted once
    warnings = [line for line in proc.stderr.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and 'broken.jpg' in warnings[0], proc.stderr
    assert metrics['skipped_images'] == 1
    snap1 = torch.load(save / '1.pt', weights_only=True)
    assert set(snap1) == set(models.get_model('resnet18', CLASSES, family='imagenet').state_dict())


def gram_singular_values(folder, numbers, model):
    flat = np.stack([utils.FlatSnapshot(str(folder / f'{k}.pt'), model)[:].double().numpy()
                     for k in numbers])
    centred = flat - flat.mean(0)
    return np.sqrt(np.clip(np.linalg.eigvalsh(centred @ centred.T)[::-1], 0, None))


@pytest.fixture(scope='module')
def subspace_runs(sgd_run, image_folder):
    """P-SGD and P-BFGS from every 2nd snapshot of 0..4, d = 2: main(argv) in-process (as the
    scripts' __main__)."""
    save, _ = sgd_run
    common = [*COMMON, '--data-dir', image_folder, '-j', '0', '-b', '14', '--epochs', '1',
              '--params_start', '0', '--params_end', '5', '--params-step', '2', '--n_components', '2',
              '--save-dir', save]
    for script, extra in (('train_psgd', ['--lr', '0.1']), ('train_pbfgs', ['--max-trials', '30'])):
        proc = run_in_process(None, script, *common, *extra)
        assert proc.returncode == 0, proc.stderr
    return save


@pytest.mark.parametrize('method', ['psgd', 'pbfgs'])
def test_subspace_runs_use_every_kth_snapshot(subspace_runs, method):
    save = subspace_runs
    metrics = json.loads((save / f'metrics_{method}_d2_0-5_step2.json').read_text())
    basis = metrics['basis']
    assert basis['used'] == [0, 2, 4] and basis['step'] == 2
    model = models.get_model('resnet18', CLASSES, family='imagenet')
    expected = gram_singular_values(save, [0, 2, 4], model)[:2]
    np.testing.assert_allclose(basis['singular_values'], expected, rtol=1e-4)
    assert metrics['epochs'][0]['test_acc5'] is not None
    if method == 'pbfgs':
        assert metrics['args']['max_trials'] == 30


def test_top5_accuracy_by_hand():
    logits = torch.tensor([[9., 8, 7, 6, 5, 4, 3],     # target 0: top-1 and top-5
                           [9., 8, 7, 6, 5, 4, 3],     # target 4: top-5 only
                           [9., 8, 7, 6, 5, 4, 3],     # target 6: neither
                           [0., 0, 0, 0, 0, 0, 1]])    # target 6: top-1
    target = torch.tensor([0, 4, 6, 6])
    meter = engine.EpochMeter(torch.device('cpu'))
    meter.update(torch.tensor(2.0), logits[:2], target[:2])
    meter.update(torch.tensor(4.0), logits[2:], target[2:])
    scores = meter.result()
    loss, acc = scores.loss, scores.acc
    assert loss == pytest.approx(3.0) and acc == pytest.approx(50.0)
    assert scores.acc5 == pytest.approx(75.0)
    few = engine.EpochMeter(torch.device('cpu'))
    few.update(torch.tensor(1.0), logits[:, :5], torch.tensor([0, 1, 2, 3]))
    assert few.result().acc5 is None  # 5 classes or fewer: no top-5


def test_label_noise_and_subset_on_file_lists(image_folder):
    args = SimpleNamespace(datasets='ImageNet', data_dir=str(image_folder), image_size=32,
                           smalldatasets=0.5, corrupt=0.25, randomseed=3, noise_model='wrong')
    data = utils.load_data(args)
    clean = utils.read_image_folder(str(image_folder), 32)
    keep = utils.balanced_subset(clean.train_y, 0.5, CLASSES, seeds.seed('subset', 3))
    assert data.train_paths == [clean.train_paths[i] for i in keep.tolist()]
    assert torch.bincount(clean.train_y[keep]).tolist() == [4] * CLASSES  # round(0.5 * 9) = 4 in class0
    n = len(keep)
    assert len(data.corrupted) == int(n * 0.25)
    changed = (data.train_y != clean.train_y[keep]).nonzero().flatten()
    assert changed.tolist() == data.corrupted.tolist()
    expected, _ = utils.corrupt_labels(clean.train_y[keep], 0.25, CLASSES, seeds.seed('label_noise', 3),
                                       'wrong')
    assert torch.equal(data.train_y, expected)
    assert data.test_paths == clean.test_paths  # the val set is never touched


def test_pretrained_file_reference_checkpoint_and_misfit(image_folder, tmp_path, capsys):
    torch.manual_seed(5)
    weights = models.get_model('resnet18', CLASSES, family='imagenet').state_dict()
    plain, reference, misfit = tmp_path / 'w.pt', tmp_path / 'model.th', tmp_path / 'other.pt'
    torch.save(weights, plain)
    torch.save({'state_dict': {f'module.{k}': v for k, v in weights.items()}, 'best_prec1': 1.0},
               reference)
    torch.save(models.get_model('resnet18', 10, family='imagenet').state_dict(), misfit)
    args = [*COMMON, '--data-dir', image_folder, '-j', '0', '--epochs', '0']
    for path in (plain, reference):
        save = tmp_path / path.stem
        code, _, err = in_process(capsys, 'train_sgd', *args, '--pretrained', path, '--save-dir', save)
        assert code == 0, err
        start = torch.load(save / '0.pt', weights_only=True)
        assert all(torch.equal(start[k], v) for k, v in weights.items())
    code, out, err = in_process(capsys, 'train_sgd', *args, '-e', '--resume', reference,
                                '--save-dir', tmp_path / 'eval')
    assert code == 0 and 'top5' in out, err
    assert_one_line_error(in_process(capsys, 'train_sgd', *args, '--pretrained', misfit, '--save-dir',
                            tmp_path / 'bad'), str(misfit), 'does not fit')


def test_default_weights_absent_names_the_file(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    assert_one_line_error(in_process(capsys, 'train_sgd', *COMMON, '--data-dir', image_folder, '--pretrained',
                            '--save-dir', tmp_path / 's'),
                 str(tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'), 'nothing is downloaded')
    assert_one_line_error(in_process(capsys, 'train_sgd', '--datasets', 'synthetic', '--pretrained',
                            '--save-dir', tmp_path / 's'), '--datasets ImageNet only')


@pytest.mark.parametrize('damage, fragment', [
    (lambda root: os.rename(root / 'val', root / 'validation'), 'missing folder'),
    (lambda root: os.rename(root / 'train', root / 'training'), 'missing folder'),
    (lambda root: (root / 'train' / 'class9').mkdir(), 'empty class folder'),
    (lambda root: (root / 'val' / 'class0').rename(root / 'val' / 'strange'), 'not a class'),
])
def test_bad_folders_one_line_error(tmp_path, capsys, damage, fragment):
    root = write_image_folder(tmp_path / 'data', bad=False)
    damage(root)
    assert_one_line_error(in_process(capsys, 'train_sgd', *COMMON, '--data-dir', root, '--save-dir',
                            tmp_path / 's'), fragment)


def test_arch_families():
    assert 'resnet50' in models.available_archs('imagenet') and 'resnet20' not in models.available_archs('imagenet')
    assert models.get_model('resnet18', 10).conv1[0].kernel_size == (3, 3)  # the CIFAR variant
    assert models.get_model('resnet18', 10, family='imagenet').conv1.kernel_size == (7, 7)
    for arch in ('googlenet', 'inception_v3'):  # one output in train mode, as the loops expect
        with torch.device('meta'):
            assert not models.get_model(arch, 10, family='imagenet').aux_logits
    with pytest.raises(utils.UserError, match='unknown arch'):
        flags.finish_sgd_args(SimpleNamespace(half=False, start_epoch=0, resume='', datasets='ImageNet',
                                              arch='resnet20'))


def test_resume_continues_the_snapshot_numbering(image_folder, tmp_path, capsys):
    args = [*COMMON, '--data-dir', image_folder, '-j', '0', '-b', '14', '--snapshot-every', '3',
            '--save-dir', tmp_path]
    assert in_process(capsys, 'train_sgd', *args, '--epochs', '1')[0] == 0
    code, out, err = in_process(capsys, 'train_sgd', *args, '--epochs', '2', '--resume', 'auto')
    assert code == 0, err
    metrics = json.loads((tmp_path / 'metrics_sgd.json').read_text())
    # 4 steps an epoch: snapshots after iterations 3, 4 (end of epoch 1), 6, 8 (end of epoch 2)
    assert [(s['snapshot'], s['epoch'], s['step'], s['iteration']) for s in metrics['snapshots']] == [
        (0, 0, 0, 0), (1, 1, 3, 3), (2, 1, 4, 4), (3, 2, 2, 6), (4, 2, 4, 8)]
    assert sorted(p.name for p in tmp_path.glob('[0-9]*.pt')) == [f'{k}.pt' for k in range(5)]
