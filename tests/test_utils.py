"""Data, label noise, subsets, augmentation and snapshot files, checked against independent
computations."""
import argparse
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import flags
import models
import sgd_run
import utils
from helpers import patch_synthetic


# ----------------------------------------------------------------------------- label noise

def reference_count(n, fraction):
    """The reference's count of redrawn labels, ``int(len(trainset) * args.corrupt)``, in numpy."""
    return int(np.floor(np.float64(n) * np.float64(fraction)))


@pytest.mark.parametrize('model', utils.NOISE_MODELS)
@pytest.mark.parametrize('num_classes,fraction', [(10, 0.2), (100, 0.5), (10, 1.0), (10, 0.0), (10, 0.29)])
def test_corrupt_labels_count_indices_and_range(num_classes, fraction, model):
    n = 5001 if fraction != 0.29 else 100  # 100 * 0.29 = 28.999999999999996: int gives 28, round 29
    labels = torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(3))
    new, idx = utils.corrupt_labels(labels, fraction, num_classes, seed=7, model=model)
    expected = reference_count(n, fraction)
    assert len(idx) == expected == len(set(idx.tolist()))
    assert idx.tolist() == sorted(idx.tolist()) and (len(idx) == 0 or 0 <= idx[0] <= idx[-1] < n)
    untouched = np.setdiff1d(np.arange(n), idx.numpy())
    np.testing.assert_array_equal(new.numpy()[untouched], labels.numpy()[untouched])
    assert new.min() >= 0 and new.max() < num_classes
    kept = (new[idx] == labels[idx]).numpy()
    if model == 'wrong':
        assert not kept.any()  # every redrawn label is another class
    elif expected >= 1000:
        # the reference's model: about 1/K of the redrawn labels keep their class
        k = expected / num_classes
        assert abs(kept.sum() - k) < 5 * np.sqrt(k * (1 - 1 / num_classes))


@pytest.mark.parametrize('model', utils.NOISE_MODELS)
def test_corrupt_labels_are_uniform_over_all_classes_of_cifar100(model):
    """CIFAR-100 draws among its 100 classes (the reference draws among the first 10: a bug we do
    not copy): the new labels (uniform) or their offsets from the true ones (wrong: 1..99) are
    uniform, by a chi-square statistic computed in numpy."""
    k, n = 100, 50_000
    labels = torch.arange(n) % k
    new, idx = utils.corrupt_labels(labels, 0.5, k, seed=11, model=model)
    if model == 'uniform':
        counts = np.bincount(new[idx].numpy(), minlength=k)
    else:
        counts = np.bincount(((new[idx] - labels[idx]) % k).numpy(), minlength=k)
        assert counts[0] == 0
        counts = counts[1:]
    expected = len(idx) / len(counts)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = len(counts) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof)  # about 5 standard deviations of the chi-square
    assert (counts[10:] > 0).all() if model == 'uniform' else True


def test_wrong_label_fraction_matches_the_reference_procedure_in_numpy():
    """The realised share of wrong labels of --corrupt 0.2 (uniform model) on 50,000 CIFAR-10
    labels against the reference's own procedure run in numpy (labels[i] = np.random.choice(10)
    for i < int(0.2 N)): both near c (1 - 1/K) = 0.18, as two independent samples."""
    n, c, k = 50_000, 0.2, 10
    rng = np.random.default_rng(0)
    clean = rng.integers(0, k, n)
    reference = clean.copy()
    for i in range(int(n * c)):
        reference[i] = rng.choice(k)
    reference_fraction = (reference != clean).mean()
    args = SimpleNamespace(corrupt=c, noise_model='uniform', randomseed=1)
    new, idx = utils.corrupt_labels(torch.from_numpy(clean), c, k, seed=5)
    ours = (new.numpy() != clean).mean()
    sd = np.sqrt(n * c * (1 / k) * (1 - 1 / k)) / n  # of the wrong share, given int(cN) redrawn
    assert abs(ours - c * (1 - 1 / k)) < 5 * sd and abs(reference_fraction - c * (1 - 1 / k)) < 5 * sd
    assert abs(ours - reference_fraction) < 7 * sd
    data = SimpleNamespace(corrupted=idx, wrong_label_fraction=float(ours))
    assert utils.noise_record(data, args) == {'n_corrupted': 10_000, 'noise_model': 'uniform',
                                              'wrong_label_fraction': float(ours)}


def test_corrupt_labels_deterministic_and_seed_dependent():
    labels = torch.arange(1000) % 10
    for model in utils.NOISE_MODELS:
        a = utils.corrupt_labels(labels, 0.3, 10, seed=1, model=model)
        b = utils.corrupt_labels(labels, 0.3, 10, seed=1, model=model)
        c = utils.corrupt_labels(labels, 0.3, 10, seed=2, model=model)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[1], c[1])
    # the two models pick the same indices from the same seed; only the new labels differ
    uniform, wrong = (utils.corrupt_labels(labels, 0.3, 10, seed=1, model=m) for m in utils.NOISE_MODELS)
    assert torch.equal(uniform[1], wrong[1]) and not torch.equal(uniform[0], wrong[0])


def test_corrupt_fraction_outside_unit_interval_is_refused_by_the_flag():
    # (the flag's validator is the one check: corrupt_labels no longer repeats it)
    with pytest.raises(argparse.ArgumentTypeError, match=r'\[0, 1\]'):
        flags.unit_interval('1.5')


def _args(**kw):
    base = dict(datasets='synthetic', data_dir='unused', smalldatasets=None, corrupt=0.0, randomseed=1,
                noise_model='uniform')
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize('model', utils.NOISE_MODELS)
def test_load_data_noise_leaves_test_set_and_is_shared_across_runs(model, synthetic, monkeypatch):
    # make_synthetic() generated once per session (its determinism: test_synthetic_is_deterministic_...);
    # every load_data call gets a private copy of it
    patch_synthetic(monkeypatch, synthetic)
    clean = utils.load_data(_args())
    noisy = utils.load_data(_args(corrupt=0.2, noise_model=model))
    again = utils.load_data(_args(corrupt=0.2, noise_model=model))
    assert torch.equal(noisy.test_y, clean.test_y) and torch.equal(noisy.test_x, clean.test_x)
    assert torch.equal(noisy.train_x, clean.train_x)
    n = len(clean.train_y)
    wrong = (noisy.train_y != clean.train_y).numpy()
    assert len(noisy.corrupted) == reference_count(n, 0.2)
    assert set(np.flatnonzero(wrong)) <= set(noisy.corrupted.tolist())
    assert noisy.wrong_label_fraction == wrong.mean()
    if model == 'wrong':
        assert wrong.sum() == reference_count(n, 0.2)
    else:
        assert 0 < reference_count(n, 0.2) - wrong.sum() < 0.25 * reference_count(n, 0.2)
    assert torch.equal(noisy.train_y, again.train_y)  # same seed: same labels in every script
    assert clean.corrupted is None and clean.wrong_label_fraction == 0.0


# ----------------------------------------------------------------------------- subsets

def test_balanced_subset_is_class_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(torch.arange(100, 200, 10))  # unequal class sizes
    keep = utils.balanced_subset(labels, 0.25, 10, seed=5)
    per_class = torch.bincount(labels[keep], minlength=10)
    expected = torch.tensor([round(0.25 * n) for n in range(100, 200, 10)])
    assert torch.equal(per_class, expected)
    assert len(set(keep.tolist())) == len(keep)
    assert torch.equal(keep, utils.balanced_subset(labels, 0.25, 10, seed=5))
    assert not torch.equal(keep, utils.balanced_subset(labels, 0.25, 10, seed=6))


# ----------------------------------------------------------------------------- CIFAR reader

def _write_cifar10(root, per_batch=4):
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, per_batch).tolist()
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump({b'data': data, b'labels': lab, b'batch_label': name.encode()}, f)
        images[name], labels[name] = data, lab
    return images, labels


def test_read_cifar10_pickles_without_md5(tmp_path):
    images, labels = _write_cifar10(str(tmp_path))
    data = utils.read_cifar(str(tmp_path), 'CIFAR10')
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.num_classes == 10
    # row layout of the pickles: 1024 red, then green, then blue values, each row-major 32x32
    first = images['data_batch_1'][1]
    assert data.train_x[1, 2, 5, 7] == first[2 * 1024 + 5 * 32 + 7]
    assert data.train_x[4, 0, 0, 0] == images['data_batch_2'][0][0]
    assert data.train_y.tolist() == sum((labels[f'data_batch_{i}'] for i in range(1, 6)), [])
    assert data.test_y.tolist() == labels['test_batch']
    # the reference's CIFAR-10 normalisation (its utils.get_datasets): ImageNet's statistics
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)


def test_read_cifar100_fine_labels(tmp_path):
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    for name, n in (('train', 6), ('test', 3)):
        with open(folder / name, 'wb') as f:
            pickle.dump({b'data': np.full((n, 3072), n, np.uint8), b'fine_labels': list(range(90, 90 + n)),
                         b'coarse_labels': [0] * n}, f)
    data = utils.read_cifar(str(tmp_path), 'CIFAR100')
    assert data.num_classes == 100 and data.train_y.tolist() == list(range(90, 96))
    assert data.test_x.shape == (3, 3, 32, 32) and int(data.test_x.max()) == 3
    # the reference's CIFAR-100 statistics, to the digits it writes them with
    assert data.mean == (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
    assert data.std == (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


def test_read_cifar_corrupt_file_is_a_user_error(tmp_path):
    _write_cifar10(str(tmp_path))
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(b'not a pickle')
    with pytest.raises(utils.UserError, match='data_batch_3'):
        utils.read_cifar(str(tmp_path), 'CIFAR10')


# ----------------------------------------------------------------------------- augmentation

def test_device_loader_crop_flip_matches_reference_semantics():
    """Each training image is the 32x32 window at the drawn offset of the image zero-padded by 4,
    mirrored when its flip was drawn: recomputed here per sample with numpy."""
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(10)
    loader = utils.DeviceLoader(x, y, 4, (0.0, 0.0, 0.0), (1 / 255,) * 3, torch.device('cpu'),
                                train=True, generator=g)
    draws = torch.Generator().manual_seed(11)
    order = torch.randperm(10, generator=draws)
    shifts = torch.randint(0, 9, (10, 2), generator=draws)
    flips = torch.rand(10, generator=draws).lt(0.5)
    batches = list(loader)
    got_x = torch.cat([b[0] for b in batches])
    got_y = torch.cat([b[1] for b in batches])
    assert torch.equal(got_y, order)
    for k in range(10):
        img = np.pad(x[order[k]].numpy(), ((0, 0), (4, 4), (4, 4)))
        r, c = shifts[k].tolist()
        crop = img[:, r:r + 32, c:c + 32]
        if flips[k]:
            crop = crop[:, :, ::-1]
        np.testing.assert_array_equal(got_x[k].numpy(), crop.astype(np.float32))
    assert 0 < flips.sum() < 10


def test_device_loader_without_augmentation_shuffles_only():
    """--no-augment: the images in the drawn order, pixels untouched, labels with them."""
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    loader = utils.DeviceLoader(x, torch.arange(10), 4, (0.0, 0.0, 0.0), (1 / 255,) * 3,
                                torch.device('cpu'), train=True,
                                generator=torch.Generator().manual_seed(3), augment=False)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), order)
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(),
                                  x[order].numpy().astype(np.float32))
    assert flags.common_parser('t', epochs=1).parse_args(['--no-augment']).augment is False


def test_adamw_decays_matrices_only():
    """--optimizer adamw: one AdamW step equals the closed form, with weight decay applied to
    the weight matrix and not to the bias or the model's no_weight_decay() parameter."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.pos = torch.nn.Parameter(torch.ones(4, 5))

        def no_weight_decay(self):
            return {'pos'}

    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SimpleNamespace(optimizer='adamw', lr=0.01, weight_decay=0.5, momentum=0.9)
    opt = sgd_run.make_optimizer(args, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    opt.step()
    # first Adam step with a constant gradient: the update is lr * sign(g) (bias-corrected m/sqrt(v))
    for name, p in model.named_parameters():
        decay = 0.5 if name == 'fc.weight' else 0.0
        expect = before[name] * (1 - 0.01 * decay) - 0.01 * 2.0 / (2.0 + 1e-8)
        torch.testing.assert_close(p.detach(), expect)


def test_device_loader_eval_normalises_in_order():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    loader = utils.DeviceLoader(x, torch.arange(5), 2, (0.5, 0.4, 0.3), (0.2, 0.2, 0.1),
                                torch.device('cpu'), train=False)
    got = torch.cat([b[0] for b in loader])
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.2, 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (x.float() / 255 - mean) / std)


def test_synthetic_is_deterministic_and_cifar_shaped():
    a, b = utils.make_synthetic(n_train=200, n_test=50), utils.make_synthetic(n_train=200, n_test=50)
    assert a.train_x.shape == (200, 3, 32, 32) and a.train_x.dtype == torch.uint8
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert set(a.train_y.tolist()) == set(range(10))
    assert a.train_x.float().std() > 10  # not a blank image


# ----------------------------------------------------------------------------- snapshots

def test_snapshot_roundtrip_and_module_prefix(tmp_path):
    torch.manual_seed(0)
    model = models.get_model('resnet8')
    path = str(tmp_path / '3.pt')
    utils.save_tensors(model.state_dict(), path)
    other = models.get_model('resnet8')
    utils.load_snapshot(path, other)
    for (k, v), w in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(v, w), k
    # DataParallel-style keys (the reference's trajectories) load as well
    utils.save_tensors({'module.' + k: v for k, v in model.state_dict().items()}, path)
    third = models.get_model('resnet8')
    utils.load_snapshot(path, third)
    assert torch.equal(third.linear.weight, model.linear.weight)
    assert not any(p.name.endswith('.tmp') for p in tmp_path.iterdir())  # atomic write cleaned up


def test_flat_snapshot_slices_follow_named_parameters(tmp_path):
    torch.manual_seed(0)
    model = models.get_model('resnet8')
    utils.save_tensors(model.state_dict(), str(tmp_path / '0.pt'))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    [snap] = utils.open_trajectory(str(tmp_path), 0, 1, model)
    assert len(snap) == flat.numel()
    for a, b in [(0, 10), (400, 1234), (5000, 5001), (len(flat) - 7, len(flat)), (0, len(flat))]:
        assert torch.equal(snap[a:b], flat[a:b])


def test_snapshot_of_other_arch_or_classes_is_refused(tmp_path):
    utils.save_tensors(models.get_model('resnet8', num_classes=100).state_dict(), str(tmp_path / '0.pt'))
    with pytest.raises(utils.UserError, match='0.pt does not fit'):
        utils.load_snapshot(str(tmp_path / '0.pt'), models.get_model('resnet8'))
    with pytest.raises(utils.UserError, match='does not fit'):
        utils.open_trajectory(str(tmp_path), 0, 1, models.get_model('resnet20', num_classes=100))


def test_missing_and_corrupt_snapshots_are_named(tmp_path):
    model = models.get_model('resnet8')
    utils.save_tensors(model.state_dict(), str(tmp_path / '0.pt'))
    with pytest.raises(utils.UserError, match=r'missing snapshot .*1\.pt'):
        utils.open_trajectory(str(tmp_path), 0, 3, model)
    data = (tmp_path / '0.pt').read_bytes()
    (tmp_path / '1.pt').write_bytes(data[: len(data) // 2])
    with pytest.raises(utils.UserError, match=r'corrupt or truncated snapshot: .*1\.pt'):
        utils.load_snapshot(str(tmp_path / '1.pt'), model)


def test_metrics_json_is_strict_with_nonfinite_values(tmp_path):
    path = tmp_path / 'metrics.json'
    utils.save_json({'epochs': [{'train_loss': float('nan'), 'test_loss': float('inf'),
                                 'test_acc': 10.0}], 'pair': (1.5, -float('inf'))}, str(path))

    def refuse(constant):
        raise ValueError(f'non-standard JSON constant {constant}')
    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {'epochs': [{'train_loss': None, 'test_loss': None, 'test_acc': 10.0}],
                    'pair': [1.5, None]}
