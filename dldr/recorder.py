"""The trajectory: snapshots of a model's parameters during training, in memory or in the folder
layout train_sgd.py writes (``<dir>/0.pt, 1.pt, ...``, each a ``model.state_dict()``)."""
import os
import re
import tempfile

import torch
from torch import Tensor

from .flat import flat_params, trainable_params

UNITS = ('step', 'epoch')
"""What :class:`TrajectoryRecorder` counts: optimizer steps or epochs."""

_NUMBERED = re.compile(r'(\d+)\.pt')


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP / DataParallel wrapper (its names carry no ``module.`` prefix)."""
    return getattr(model, 'module', model) if isinstance(
        model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model


def _is_main() -> bool:
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def numbered_snapshots(folder) -> list[int]:
    """The numbers k of the ``k.pt`` files in ``folder``, sorted (empty if there is no folder)."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(_NUMBERED.fullmatch, os.listdir(folder)) if m)


class FileSnapshot:
    """A ``k.pt`` snapshot file seen as the flat vector of ``model``'s trainable parameters:
    ``len(s)`` and ``s[a:b]`` (float32), read lazily from the memory-mapped file, as
    :func:`~dldr.basis.dldr_basis` streams it.

    Args:
        path: the file (a state_dict; a ``module.`` prefix, as DDP saves it, is accepted).
        model: the model whose ``named_parameters()`` with ``requires_grad`` define the vector.
    """

    def __init__(self, path, model: torch.nn.Module):
        state = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
        if isinstance(state, dict) and state and all(str(k).startswith('module.') for k in state):
            state = {k[len('module.'):]: v for k, v in state.items()}
        names = [name for name, p in _unwrapped(model).named_parameters() if p.requires_grad]
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(f'{path} does not fit this model: no {missing[0]!r}')
        self.path = path
        self.tensors = [state[name].reshape(-1) for name in names]
        self.offsets = [0]
        for t in self.tensors:
            self.offsets.append(self.offsets[-1] + t.numel())

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index) -> Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError('a FileSnapshot is read by contiguous slices s[a:b]')
        a, b, _ = index.indices(len(self))
        pieces = []
        for t, lo, hi in zip(self.tensors, self.offsets, self.offsets[1:]):
            if hi > a and lo < b:
                pieces.append(t[max(a - lo, 0):min(b, hi) - lo].float())
        return torch.cat(pieces) if pieces else torch.empty(0)


def load_trajectory(folder, model: torch.nn.Module, start: int = 0, stop: int | None = None,
                    step: int = 1) -> list[FileSnapshot]:
    """Snapshots ``start, start + step, ... < stop`` of a folder train_sgd.py (or a
    :class:`TrajectoryRecorder`) wrote, as lazily read flat vectors for the basis builders.

    Args:
        folder: the folder holding ``0.pt, 1.pt, ...``.
        model: the model the snapshots are state_dicts of.
        start: the first snapshot number (default 0).
        stop: one past the last (default: all numbered files).
        step: take every ``step``-th snapshot (default 1).

    Raises:
        FileNotFoundError: a snapshot in the range is missing.
    """
    numbers = numbered_snapshots(folder)
    stop = (numbers[-1] + 1 if numbers else 0) if stop is None else stop
    out = []
    for k in range(start, stop, step):
        path = os.path.join(folder, f'{k}.pt')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'missing snapshot {path}')
        out.append(FileSnapshot(path, model))
    return out


class TrajectoryRecorder:
    """Snapshots of a model's trainable parameters every ``every`` optimizer steps or epochs: the
    trajectory DLDR extracts its subspace from.

    In memory (``folder=None``) each snapshot is a float32 flat vector (:func:`~dldr.flat.flat_params`)
    on ``device``; with a ``folder`` each is ``model.state_dict()`` written (atomically, by the
    main rank only) as ``<folder>/<k>.pt``: the layout train_sgd.py writes, so a script can build
    its basis from a recorder's folder (``--save-dir``) and a recorder can continue a script's
    folder (numbering goes on after the highest ``k.pt`` there).  :attr:`snapshots` is what the
    basis builders take either way.

    Call :meth:`step` after every optimizer step and :meth:`epoch_end` after every epoch; the one
    matching ``unit`` records every ``every``-th call.  :meth:`snapshot` records now (e.g. the
    initialisation, snapshot 0, before the first step).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        every: record every ``every``-th step or epoch (default 1).
        unit: 'step' or 'epoch' (default 'step').
        folder: where to write ``k.pt`` files (default None: keep the snapshots in memory).
        device: where in-memory snapshots are kept (default: the CPU).
        max_snapshots: stop recording after this many (default None: no limit).

    Example::

        recorder = TrajectoryRecorder(model, every=10)
        recorder.snapshot()                      # w_0
        for x, y in loader:
            ...; optimizer.step(); recorder.step()
        basis = dldr_basis(recorder.snapshots, 40)
    """

    def __init__(self, model: torch.nn.Module, every: int = 1, unit: str = 'step', folder=None,
                 device=None, max_snapshots: int | None = None):
        if every < 1:
            raise ValueError(f'every must be >= 1, got {every}')
        if unit not in UNITS:
            raise ValueError(f'unit must be one of {UNITS}, got {unit!r}')
        self.model, self.every, self.unit = _unwrapped(model), every, unit
        self.folder = None if folder is None else os.fspath(folder)
        self.device = torch.device('cpu' if device is None else device)
        self.max_snapshots = max_snapshots
        self.params = trainable_params(self.model)
        self.steps = self.epochs = 0
        self._memory: list[Tensor] = []
        self._numbers: list[int] = []
        if self.folder is not None:
            existing = numbered_snapshots(self.folder)
            self._next = existing[-1] + 1 if existing else 0

    def __len__(self) -> int:
        return len(self._memory) if self.folder is None else len(self._numbers)

    @property
    def full(self) -> bool:
        """Whether ``max_snapshots`` have been recorded."""
        return self.max_snapshots is not None and len(self) >= self.max_snapshots

    @torch.no_grad()
    def snapshot(self) -> None:
        """Record the parameters now (unless :attr:`full`)."""
        if self.full:
            return
        if self.folder is None:
            self._memory.append(flat_params(self.params).to(self.device))
            return
        number, self._next = self._next, self._next + 1
        if _is_main():
            os.makedirs(self.folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix='.tmp')
            os.close(fd)
            try:
                torch.save(self.model.state_dict(), tmp)
                os.replace(tmp, os.path.join(self.folder, f'{number}.pt'))
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        self._numbers.append(number)

    def step(self) -> bool:
        """Count one optimizer step; record if ``unit`` is 'step' and it is an ``every``-th.
        Returns whether a snapshot was taken."""
        self.steps += 1
        return self._tick('step', self.steps)

    def epoch_end(self) -> bool:
        """Count one epoch; record if ``unit`` is 'epoch' and it is an ``every``-th.  Returns
        whether a snapshot was taken."""
        self.epochs += 1
        return self._tick('epoch', self.epochs)

    def _tick(self, unit: str, count: int) -> bool:
        if unit != self.unit or count % self.every or self.full:
            return False
        self.snapshot()
        return True

    @property
    def snapshots(self) -> list:
        """The recorded snapshots, oldest first: float32 n-vectors (in memory) or
        :class:`FileSnapshot` readers of this recorder's files (with a folder; on a rank other
        than the main one, after a barrier)."""
        if self.folder is None:
            return list(self._memory)
        return [FileSnapshot(os.path.join(self.folder, f'{k}.pt'), self.model) for k in self._numbers]

    def clear(self) -> None:
        """Forget the in-memory snapshots (the files stay)."""
        self._memory.clear()
        self._numbers.clear()
