"""The files of a run: written atomically (tensors, strict JSON), loaded safely (``weights_only``,
one-line errors), trajectory snapshots checked and read lazily, save-dir checks."""
import contextlib
import json
import math
import os
import pickle
import tempfile
import zipfile

import numpy as np
import torch

from errors import UserError


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file in the target folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a truncated one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from other users
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_tensors(obj, path):
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    """Write ``obj`` as strict JSON: a non-finite float (a diverged loss) becomes null."""
    text = json.dumps(_strict_json(obj), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write((text + '\n').encode()))


def _strict_json(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def load_file(path, what='file', mmap=False):
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or unsafe files."""
    if not os.path.isfile(path):
        raise UserError(f'missing {what}: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f'refusing to load {path}: it holds pickled objects other than tensors '
                        f'and plain containers ({first[:120]})') from None
    except Exception as e:  # noqa: BLE001 -- junk bytes fail anywhere in torch.load (a text
        # file: KeyError 101 from the unpickler's memo): the file is not one torch.save wrote
        known = isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError))
        first = (str(e).strip().splitlines()[0] if known and str(e).strip() else
                 type(e).__name__ if known else 'not a file torch.save wrote')
        raise UserError(f'corrupt or truncated {what}: {path} ({first[:120]})') from None


def strip_module_prefix(state_dict):
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds (reference trajectories)."""
    if isinstance(state_dict, dict) and state_dict and all(
            isinstance(k, str) and k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def weights_of(obj):
    """The state_dict inside a loaded weights file: the file itself, or its ``state_dict`` (the
    reference's checkpoints) or ``model`` (train_sgd.py's checkpoints) entry; ``module.`` dropped."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    return strip_module_prefix(obj)


def snapshot_path(folder, i):
    return os.path.join(folder, f'{i}.pt')


def check_state_dict(state, model, path):
    """Raise a UserError naming ``path`` when ``state`` does not fit ``model``."""
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise UserError(f'{path} is not a state_dict')
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    bad = [k for k in expected if k in state and k not in not_tensors
           and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or not_tensors or bad:
        detail = (f'missing {missing[:2]}' if missing else f'unexpected {extra[:2]}' if extra else
                  f'{not_tensors[0]} is not a tensor' if not_tensors else
                  f'{bad[0]} has shape {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}')
        raise UserError(f'{path} does not fit this model (another arch or class count?): {detail}')


def load_snapshot(path, model):
    """Load a trajectory snapshot (a state_dict) into ``model``, checking it fits."""
    state = strip_module_prefix(load_file(path, 'snapshot'))
    check_state_dict(state, model, path)
    model.load_state_dict(state)


class FlatSnapshot:
    """A snapshot file seen as the flat vector of trainable parameters, sliced lazily.

    The file is memory-mapped, so ``snap[a:b]`` reads only the pages holding those coordinates:
    the basis extraction streams the trajectory without ever holding it whole in memory.
    """

    def __init__(self, path, model):
        state = strip_module_prefix(load_file(path, 'snapshot', mmap=True))
        check_state_dict(state, model, path)
        self.path = path
        self.tensors = [state[name].reshape(-1) for name, p in model.named_parameters() if p.requires_grad]
        self.offsets = np.cumsum([0] + [t.numel() for t in self.tensors])

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, sl):
        start, stop, _ = sl.indices(len(self))
        first = int(np.searchsorted(self.offsets, start, side='right') - 1)
        pieces = []
        for k in range(first, len(self.tensors)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            if lo >= stop:
                break
            pieces.append(self.tensors[k][max(start, lo) - lo:min(stop, hi) - lo])
        return torch.cat(pieces) if pieces else torch.empty(0)


def open_trajectory(folder, start, end, model, step=1):
    """The snapshots ``start, start+step, .. < end`` of ``folder`` as lazily read flat vectors.

    Every file is checked (present, loadable, same shapes as ``model``) before any work starts.
    """
    check_trajectory_files(folder, start, end, step)
    return [FlatSnapshot(snapshot_path(folder, i), model) for i in range(start, end, step)]


def check_trajectory_files(folder, start, end, step=1):
    """One-line UserError unless the snapshots ``start, start+step, .. < end`` are files in
    ``folder`` (present only: :func:`open_trajectory` reads and checks them)."""
    numbers = range(start, end, step)
    missing = [snapshot_path(folder, i) for i in numbers if not os.path.isfile(snapshot_path(folder, i))]
    if missing:
        more = f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''
        every = f', step {step}' if step > 1 else ''
        raise UserError(f'missing snapshot {missing[0]}{more}: the trajectory needs '
                        f'{start}.pt .. {numbers[-1]}.pt{every} in {folder}')


def existing_ancestor(path):
    """``path`` itself, or the nearest folder above it that exists: where it would be made
    (None: a broken symbolic link on the way, which cannot be made)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        if os.path.lexists(path):
            return None
        path = os.path.dirname(path)
    return path


def unwritable_dir(path):
    """Why ``path`` cannot be used, or made, as a folder this process writes into (None: it
    can); found without creating anything: a file or broken link on the way, or a read-only
    folder (a read-only file system included, which ``os.access`` reports even to root)."""
    where = existing_ancestor(path)
    if where is None:
        return 'a broken symbolic link is on the way'
    if not os.path.isdir(where):
        return f'{where} is a file, not a folder'
    if not os.access(where, os.W_OK | os.X_OK):
        return f'{where} is not writable'
    return None


def prepare_save_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create --save-dir {path}: {e.strerror}') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f'--save-dir {path} is not writable')


def refuse_overwrite(paths, args):
    """Refuse to replace existing results unless ``--overwrite`` was given."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not args.overwrite:
        raise UserError(f'{existing[0]} already exists; pass --overwrite to replace it '
                        f'or choose another --save-dir')
