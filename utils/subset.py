"""A class-balanced, seeded random subset of CIFAR-10 or CIFAR-100, written in the standard python
pickle layout, so that ``--data-dir`` of the training scripts reads it as it reads the whole set.

    python -m utils.subset --data-dir DIR --out OUT --train N --test M [--seed S]

Reads DIR/cifar-10-batches-py or DIR/cifar-100-python and writes the same folder under OUT with
N // C training and M // C test images of each of the C classes (an omitted --train or --test
keeps that split whole, as it is), drawn by ``np.random.default_rng(S)``: per class a permutation
of its rows cut to size, then the split shuffled; training first, then test.  The training
subset is split evenly over data_batch_1..5, in order; the meta file is copied as is; the rows
keep their labels (CIFAR-100: fine and coarse) and file names.  The docs' subspace-kinds study
(docs/RESULTS.md) used a 10,000 / 2,000 subset drawn by this recipe with seed 0 from a
JPEG-compressed copy of CIFAR-10, read in another order: the original pickles give other images.
"""
import os
import pickle
import shutil
import tempfile

import numpy as np

from errors import UserError
from utils.data import _CIFAR, load_cifar_file
from utils.files import unwritable_dir

ROW_KEYS = ('labels', 'fine_labels', 'coarse_labels', 'filenames')
"""The per-image lists of a CIFAR pickle besides ``data`` (kept where every file of a split has them)."""
META = {'CIFAR10': 'batches.meta', 'CIFAR100': 'meta'}


def find_layout(data_dir, name=None):
    """The dataset (``CIFAR10`` / ``CIFAR100``) whose pickle folder is in ``data_dir``."""
    if not os.path.isdir(data_dir):
        raise UserError(f'--data-dir {data_dir}: no such folder')
    names = [name] if name else list(_CIFAR)
    found = [n for n in names if os.path.isdir(os.path.join(data_dir, _CIFAR[n][0]))]
    folders = [_CIFAR[n][0] + '/' for n in names]
    if not found:
        raise UserError(f'--data-dir {data_dir} holds {"neither " if len(names) > 1 else "no "}'
                        f'{" nor ".join(folders)} (the python-version pickles of CIFAR-10/100)')
    if len(found) > 1:
        raise UserError(f'--data-dir {data_dir} holds both {" and ".join(folders)}: say which with --datasets')
    return found[0]


def read_split(folder, files, label_key):
    """The rows of one split: {'data': uint8 (n, 3072), key: array of n} for the ROW_KEYS every file has."""
    entries = []
    for name in files:
        path = os.path.join(folder, name)
        entry = load_cifar_file(path, label_key)
        for key in ROW_KEYS:
            if key in entry and len(entry[key]) != len(entry['data']):
                raise UserError(f'corrupt dataset file {path}: {len(entry[key])} {key} for '
                                f'{len(entry["data"])} images')
        entries.append(entry)
    split = {'data': np.concatenate([e['data'] for e in entries])}
    for key in ROW_KEYS:
        if all(key in e for e in entries):
            values = [v for e in entries for v in e[key]]
            split[key] = np.array(values, dtype=np.int64 if key.endswith('labels') else object)
    return split


def choose(labels, n, num_classes, rng):
    """Row indices: n // num_classes of each class (each a permutation of its rows, cut), shuffled;
    all rows, in order, for n None."""
    if n is None:
        return np.arange(len(labels))
    per = n // num_classes
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(num_classes)])
    return rng.permutation(idx)


def check_size(flag, n, labels, num_classes, what, folder):
    if n is None:
        return
    if n > len(labels):
        raise UserError(f'{flag} {n}: more than the {len(labels)} {what} images in {folder}')
    if n < num_classes:
        raise UserError(f'{flag} {n}: fewer than the {num_classes} classes ({n} // {num_classes} = 0 '
                        f'images of each)')
    per = n // num_classes
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < per)
    if len(short):
        c = short[0]
        raise UserError(f'{flag} {n}: class {c} has {counts[c]} {what} images in {folder}, '
                        f'fewer than the {per} ({n} // {num_classes}) of each class')


def dump(path, split, idx, batch_label):
    entry = {'batch_label': batch_label, 'data': np.ascontiguousarray(split['data'][idx])}
    for key in ROW_KEYS:
        if key in split:
            entry[key] = split[key][idx].tolist()
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=4)


def main(argv=None):
    import flags  # (the training scripts' one-line errors; imports torch)
    p = flags.Parser(prog='python -m utils.subset', description=__doc__.split('\n\n')[0],
                     formatter_class=flags.HelpFormatter)
    p.add_argument('--data-dir', required=True, metavar='DIR',
                   help='the parent of cifar-10-batches-py/ or cifar-100-python/')
    p.add_argument('--out', required=True, metavar='OUT', help='where the subset\'s folder is written '
                   '(OUT/cifar-10-batches-py or OUT/cifar-100-python, which must not exist)')
    p.add_argument('--train', type=flags.positive_int, metavar='N',
                   help='training images to keep, N // classes of each (default: all, as they are)')
    p.add_argument('--test', type=flags.positive_int, metavar='M',
                   help='test images to keep, M // classes of each (default: all, as they are)')
    p.add_argument('--seed', type=flags.seed, default=0, help='seed of np.random.default_rng')
    p.add_argument('--datasets', choices=sorted(_CIFAR), metavar='NAME',
                   help='CIFAR10 or CIFAR100: which one, where DIR holds both')
    args = p.parse_args(argv)

    name = find_layout(args.data_dir, args.datasets)
    folder_name, train_files, test_files, label_key, num_classes = _CIFAR[name][:5]
    source = os.path.join(args.data_dir, folder_name)
    why = unwritable_dir(args.out)
    if why:
        raise UserError(f'--out {args.out}: {why}')
    target = os.path.join(args.out, folder_name)
    if os.path.lexists(target):
        raise UserError(f'{target} already exists (never overwritten: remove it or give another --out)')
    meta = os.path.join(source, META[name])
    if not os.path.isfile(meta):
        raise UserError(f'incomplete dataset folder: {meta} is missing')
    train = read_split(source, train_files, label_key)
    test = read_split(source, test_files, label_key)
    for split, files in ((train, train_files), (test, test_files)):
        bad = (split[label_key] < 0) | (split[label_key] >= num_classes)
        if bad.any():
            raise UserError(f'corrupt dataset file in {source}: the label {split[label_key][bad][0]} in '
                            f'{", ".join(files)} is not one of 0..{num_classes - 1}')
    check_size('--train', args.train, train[label_key], num_classes, 'training', source)
    check_size('--test', args.test, test[label_key], num_classes, 'test', source)

    rng = np.random.default_rng(args.seed)
    train_idx = choose(train[label_key], args.train, num_classes, rng)
    test_idx = choose(test[label_key], args.test, num_classes, rng)
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{folder_name}.', suffix='.tmp', dir=args.out)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the data from other users
        parts = np.array_split(train_idx, len(train_files))
        for i, (file, part) in enumerate(zip(train_files, parts), 1):
            dump(os.path.join(tmp, file), train, part, f'training batch {i} of {len(train_files)}')
        dump(os.path.join(tmp, test_files[0]), test, test_idx, 'testing batch 1 of 1')
        shutil.copyfile(meta, os.path.join(tmp, META[name]))
        os.mkdir(target)  # claims the name atomically: a folder made there since the check is kept
        try:
            for file in os.listdir(tmp):
                os.rename(os.path.join(tmp, file), os.path.join(target, file))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        os.rmdir(tmp)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f'{target} already exists (never overwritten: remove it or give another --out)') from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f'cannot write {target}: {e.strerror or e}') from None
        raise
    print(f'wrote {target}: {len(train_idx)} training, {len(test_idx)} test images of {name} '
          f'(seed {args.seed})')


if __name__ == '__main__':
    import distributed
    distributed.run_cli(main)
