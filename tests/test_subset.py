"""``python -m utils.subset`` (utils/subset.py) on small fake CIFAR folders built here: the subset
read back by utils.read_cifar is class-balanced and made of source rows (image, labels, file
name), equals an independent numpy draw of the documented recipe, is seeded, keeps CIFAR-100's
fine and coarse labels together; bad input is one ``error:`` line and exit status 2, nothing
written or overwritten."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import utils
from helpers import CHILD_ENV, ROOT, assert_one_line_error, file_state, in_process
from utils import subset

C10, C100 = 'cifar-10-batches-py', 'cifar-100-python'


def write_pickle(path, entry):
    with open(path, 'wb') as f:
        pickle.dump(entry, f)


def fake_cifar10(root, test_labels=None):
    """5 training batches of 40 rows (20 per class in all), a test batch of 50 (5 per class),
    random images; bytes keys and values, as the original pickles load with encoding='bytes'."""
    rng = np.random.default_rng(123)
    folder = root / C10
    folder.mkdir(parents=True)
    train_y = rng.permutation(np.repeat(np.arange(10), 20))
    for b in range(5):
        y = train_y[40 * b:40 * (b + 1)]
        write_pickle(folder / f'data_batch_{b + 1}', {
            b'batch_label': f'training batch {b + 1} of 5'.encode(), b'labels': y.tolist(),
            b'data': rng.integers(0, 256, (40, 3072), dtype=np.uint8),
            b'filenames': [f'train_{40 * b + i}.png'.encode() for i in range(40)]})
    test_y = rng.permutation(np.repeat(np.arange(10), 5)) if test_labels is None else test_labels
    write_pickle(folder / 'test_batch', {
        b'batch_label': b'testing batch 1 of 1', b'labels': list(test_y),
        b'data': rng.integers(0, 256, (len(test_y), 3072), dtype=np.uint8),
        b'filenames': [f'test_{i}.png'.encode() for i in range(len(test_y))]})
    write_pickle(folder / 'batches.meta', {b'label_names': [f'class{c}'.encode() for c in range(10)],
                                           b'num_cases_per_batch': 40, b'num_vis': 3072})
    return root


def fake_cifar100(root):
    """train: 300 rows (3 per fine class), test: 200 (2 per class), coarse label a fixed random
    function of the fine one; str keys, as a rebuilt copy writes them."""
    rng = np.random.default_rng(7)
    folder = root / C100
    folder.mkdir(parents=True)
    coarse_of = rng.integers(0, 20, 100)
    for split, per in (('train', 3), ('test', 2)):
        fine = rng.permutation(np.repeat(np.arange(100), per))
        write_pickle(folder / split, {
            'batch_label': f'{split}ing batch 1 of 1', 'fine_labels': fine.tolist(),
            'coarse_labels': coarse_of[fine].tolist(), 'filenames': [f'{split}_{i}.png' for i in range(len(fine))],
            'data': rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)})
    write_pickle(folder / 'meta', {'fine_label_names': [f'f{c}' for c in range(100)],
                                   'coarse_label_names': [f'c{c}' for c in range(20)]})
    return root


def load(path):
    with open(path, 'rb') as f:
        entry = pickle.load(f, encoding='bytes')
    return {k.encode() if isinstance(k, str) else k: v for k, v in entry.items()}


def source_rows(folder, files, keys):
    """{key: concatenated values} of the source pickles, rows in file order."""
    entries = [load(folder / f) for f in files]
    return {k: np.concatenate([np.asarray(e[k]) for e in entries]) for k in keys}


def expected(labels, n, num_classes, rng):
    """The documented recipe, written out independently of utils/subset.py."""
    per = n // num_classes
    picked = []
    for c in range(num_classes):
        picked.append(rng.permutation(np.flatnonzero(labels == c))[:per])
    return rng.permutation(np.concatenate(picked))


TRAIN_FILES = [f'data_batch_{b}' for b in range(1, 6)]


@pytest.fixture
def cifar10(tmp_path):
    return fake_cifar10(tmp_path / 'data')


def make(src, out, *args):
    subset.main(['--data-dir', str(src), '--out', str(out), *map(str, args)])


def test_cifar10_subset_is_balanced_rows_of_the_source_and_the_documented_draw(cifar10, tmp_path, capsys):
    out = tmp_path / 'out'
    make(cifar10, out, '--train', 100, '--test', 30)
    assert f'{out / C10}: 100 training, 30 test images of CIFAR10 (seed 0)' in capsys.readouterr().out
    data = utils.read_cifar(str(out), 'CIFAR10')  # the training scripts' reader, unchanged
    assert data.train_x.shape == (100, 3, 32, 32) and data.test_x.shape == (30, 3, 32, 32)
    assert np.bincount(data.train_y.numpy(), minlength=10).tolist() == [10] * 10
    assert np.bincount(data.test_y.numpy(), minlength=10).tolist() == [3] * 10

    rng = np.random.default_rng(0)
    for split, files, x, y, n in (('train', TRAIN_FILES, data.train_x, data.train_y, 100),
                                  ('test', ['test_batch'], data.test_x, data.test_y, 30)):
        src = source_rows(cifar10 / C10, files, [b'data', b'labels', b'filenames'])
        written = source_rows(out / C10, files, [b'data', b'labels', b'filenames'])
        x, y = x.numpy().reshape(len(x), -1), y.numpy()
        # every written row (image, label, file name) is one source row, none twice
        where = {row.tobytes(): i for i, row in enumerate(src[b'data'])}
        idx = np.array([where[row.tobytes()] for row in x])
        assert len(set(idx.tolist())) == n
        assert (src[b'labels'][idx] == y).all()
        assert [f.decode() if isinstance(f, bytes) else f for f in written[b'filenames']] == \
               [f.decode() for f in src[b'filenames'][idx]]
        # ... and exactly the rows the recipe draws, in its order (training first, then test)
        assert (idx == expected(src[b'labels'], n, 10, rng)).all(), split
    # the training subset spread evenly over the five files, in order; the meta copied as is
    assert [len(load(out / C10 / f)[b'labels']) for f in TRAIN_FILES] == [20] * 5
    assert (out / C10 / 'batches.meta').read_bytes() == (cifar10 / C10 / 'batches.meta').read_bytes()
    assert sorted(os.listdir(out)) == [C10]  # no temporary folder left


def test_same_seed_same_files_another_seed_another_subset(cifar10, tmp_path, capsys):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        make(cifar10, tmp_path / name, '--train', 50, '--test', 20, '--seed', seed)
    a, b, c = (file_state(tmp_path / name / C10) for name in 'abc')
    assert a == b
    assert a['batches.meta'] == c['batches.meta'] and a['test_batch'] != c['test_batch']
    images = [utils.read_cifar(str(tmp_path / name), 'CIFAR10').train_x for name in 'ac']
    assert {r.numpy().tobytes() for r in images[0]} != {r.numpy().tobytes() for r in images[1]}


def test_an_omitted_split_is_kept_whole_as_it_is(cifar10, tmp_path, capsys):
    make(cifar10, tmp_path / 'out', '--train', 10)
    whole = utils.read_cifar(str(cifar10), 'CIFAR10')
    data = utils.read_cifar(str(tmp_path / 'out'), 'CIFAR10')
    assert len(data.train_y) == 10 and (data.test_x == whole.test_x).all() and (data.test_y == whole.test_y).all()
    # the test split consumed no draws: the training draw is the recipe's first
    labels = np.asarray(whole.train_y)
    assert (data.train_x == whole.train_x[expected(labels, 10, 10, np.random.default_rng(0))]).all()


def test_cifar100_keeps_fine_and_coarse_labels_with_their_rows(tmp_path, capsys):
    src, out = fake_cifar100(tmp_path / 'data'), tmp_path / 'out'
    make(src, out, '--train', 200, '--test', 100, '--seed', 5)
    data = utils.read_cifar(str(out), 'CIFAR100')
    assert np.bincount(data.train_y.numpy(), minlength=100).tolist() == [2] * 100
    assert np.bincount(data.test_y.numpy(), minlength=100).tolist() == [1] * 100
    rng = np.random.default_rng(5)
    keys = [b'data', b'fine_labels', b'coarse_labels', b'filenames']
    for split, n in (('train', 200), ('test', 100)):
        s, w = source_rows(src / C100, [split], keys), source_rows(out / C100, [split], keys)
        idx = expected(s[b'fine_labels'], n, 100, rng)
        for key in keys:
            assert (w[key] == s[key][idx]).all(), (split, key)
    assert (out / C100 / 'meta').read_bytes() == (src / C100 / 'meta').read_bytes()
    assert sorted(os.listdir(out / C100)) == ['meta', 'test', 'train']


def test_both_layouts_need_datasets(cifar10, tmp_path, capsys):
    fake_cifar100(cifar10)
    assert_one_line_error(in_process(capsys, 'utils.subset', '--data-dir', cifar10, '--out', tmp_path / 'o',
                                     '--train', 100), 'holds both', C10, C100, '--datasets')
    make(cifar10, tmp_path / 'o', '--train', 100, '--datasets', 'CIFAR100')
    assert os.listdir(tmp_path / 'o') == [C100]


@pytest.mark.parametrize('args, fragments', [
    (['--train', '0'], ['argument --train', 'positive integer']),
    (['--train', 'ten'], ['argument --train']),
    (['--test', '-3'], ['argument --test']),
    (['--train', '201'], ['--train 201', 'more than the 200 training images']),
    (['--test', '51'], ['--test 51', 'more than the 50 test images']),
    (['--train', '9'], ['--train 9', 'fewer than the 10 classes']),
    (['--test', '5'], ['--test 5', 'fewer than the 10 classes']),
    (['--seed', '-1'], ['argument --seed']),
])
def test_bad_sizes(cifar10, tmp_path, capsys, args, fragments):
    out = tmp_path / 'out'
    result = in_process(capsys, 'utils.subset', '--data-dir', cifar10, '--out', out, *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_bad_folders(cifar10, tmp_path, capsys):
    def check(data_dir, out, *fragments, extra=()):
        assert_one_line_error(in_process(capsys, 'utils.subset', '--data-dir', data_dir, '--out', out,
                                         '--train', 100, *extra), *fragments)

    empty = tmp_path / 'empty'
    empty.mkdir()
    check(empty, tmp_path / 'o1', 'holds neither', C10, C100)
    check(tmp_path / 'nowhere', tmp_path / 'o1', '--data-dir', 'no such folder')
    check(empty, tmp_path / 'o1', 'holds no', C100, extra=['--datasets', 'CIFAR100'])
    afile = tmp_path / 'afile'
    afile.write_text('not a folder')
    check(cifar10, afile, '--out', 'is a file')
    assert afile.read_text() == 'not a folder'
    # an existing subset is never overwritten, nor touched
    make(cifar10, tmp_path / 'done', '--train', 100)
    before = file_state(tmp_path / 'done' / C10)
    check(cifar10, tmp_path / 'done', str(tmp_path / 'done' / C10), 'already exists')
    assert file_state(tmp_path / 'done' / C10) == before
    # an incomplete source: nothing written
    (cifar10 / C10 / 'data_batch_3').unlink()
    check(cifar10, tmp_path / 'o2', 'incomplete dataset folder', 'data_batch_3 is missing')
    assert not (tmp_path / 'o2').exists()
    assert not (tmp_path / 'o1').exists()


def test_a_class_with_too_few_images(tmp_path, capsys):
    src = fake_cifar10(tmp_path / 'data', test_labels=np.array([0] + [1 + i % 9 for i in range(49)]))
    assert_one_line_error(in_process(capsys, 'utils.subset', '--data-dir', src, '--out', tmp_path / 'o',
                                     '--test', 20), '--test 20', 'class 0 has 1 test images', 'fewer than the 2')
    assert not (tmp_path / 'o').exists()


def test_the_command_line(cifar10, tmp_path):
    """``python -m utils.subset`` as documented: the subset, then the same command again refused."""
    cmd = [sys.executable, '-m', 'utils.subset', '--data-dir', str(cifar10), '--out', str(tmp_path / 'o'),
           '--train', '100', '--test', '20']
    done = subprocess.run(cmd, cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == '', done.stderr
    assert 'wrote' in done.stdout and len(utils.read_cifar(str(tmp_path / 'o'), 'CIFAR10').test_y) == 20
    again = subprocess.run(cmd, cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert_one_line_error(again, 'already exists')


def test_a_folder_made_at_the_target_while_writing_is_kept(cifar10, tmp_path, capsys, monkeypatch):
    """The target is claimed by mkdir, not replaced by a rename: a folder that appears there after
    the first check (another process) is left as it was, and no temporary folder stays behind."""
    out = tmp_path / 'out'
    copy = subset.shutil.copyfile

    def copy_then_race(src, dst):
        copy(src, dst)
        (out / C10).mkdir()  # empty: a rename would silently replace it

    monkeypatch.setattr(subset.shutil, 'copyfile', copy_then_race)
    result = in_process(capsys, 'utils.subset', '--data-dir', cifar10, '--out', out, '--train', 100)
    assert_one_line_error(result, str(out / C10), 'already exists')
    assert sorted(os.listdir(out)) == [C10] and os.listdir(out / C10) == []
