"""DLDR: training in a tiny subspace spanned by the dominant directions of a training trajectory.

Li et al., "Low Dimensional Trajectory Hypothesis is True: DNNs Can Be Trained in Tiny Subspaces"
(TPAMI 2023).  Pure torch; see ``docs/METHOD.md`` for the formulas.  One concern a module:

* :mod:`dldr.comm` — :class:`Comm`, the one place data-parallel ranks communicate (:data:`LOCAL`:
  one process; ``distributed.DistComm`` over ``torch.distributed``).
* :mod:`dldr.flat` — flat vectors: the trainable parameters of a model, flattened in
  ``named_parameters()`` order (BatchNorm running statistics are buffers, not part of it).
* :mod:`dldr.basis` — the basis builders, all placed by one :class:`Placement`:
  :func:`dldr_basis` (Algorithm 1: the top-d principal directions of the centred snapshots),
  :func:`twa_basis` (Trainable Weight Averaging: the span of the raw snapshots),
  :func:`random_basis` (a seeded random subspace) and :func:`snapshot_mean`.
* :mod:`dldr.subspace` — :class:`Subspace`, the one interface of every subspace kind: ``coords``
  (g -> P g) and ``lift`` (c -> P^T c), the communication inside; :class:`DenseSubspace` (an
  explicit P), :class:`CompactSubspace` (P in bf16 / fp16 / int8, on another device, and/or
  sharded by columns over the ranks), :func:`store_basis`, :func:`as_subspace`.
* :mod:`dldr.structured` — :class:`FastfoodSubspace` (a structured random map, O(n) memory) and
  :class:`RedrawnSubspace` (a new random basis every step).
* :mod:`dldr.optim` — :class:`PSGD` (projected SGD with momentum), :class:`PBFGS` (Algorithm 2)
  and :func:`project_grads_`.
* :mod:`dldr.galore` — :class:`GaLoreAdamW`, AdamW on gradients projected onto a low-rank
  subspace per weight matrix, re-drawn from the gradient every T steps (Zhao et al. 2024).
* :mod:`dldr.recorder` — :class:`TrajectoryRecorder`: snapshots every N steps or epochs, in
  memory or as the ``<dir>/0.pt, 1.pt, ...`` state_dicts train_sgd.py writes.
* :mod:`dldr.integrations` — a Hugging Face ``TrainerCallback`` and a Lightning ``Callback``
  (optional dependencies: ``requirements-integrations.txt``).
"""
from .basis import (DEFAULT_MAX_BYTES, RANDOM_BLOCK, RANK_RTOL, Basis, Placement, _GaussianColumns,
                    dldr_basis, random_basis, snapshot_mean, twa_basis)
from .comm import LOCAL, Comm, shard_range
from .flat import flat_grad, flat_params, set_flat_grad_, set_flat_params_, trainable_params
from .galore import GaLoreAdamW
from .optim import CURVATURE_PAIRS, PBFGS, PSGD, STAT_KEYS, project_grads_
from .recorder import TrajectoryRecorder, load_trajectory
from .structured import FastfoodSubspace, RedrawnSubspace, draw_seed, fwht
from .subspace import (BASIS_DTYPES, PRODUCT_CHUNK_BYTES, CompactSubspace, DenseSubspace, Subspace,
                       as_subspace, store_basis)
from . import optim  # noqa: E402  (dldr.optim.PSGD / dldr.optim.PBFGS)

__all__ = [
    'Basis', 'BASIS_DTYPES', 'Comm', 'CompactSubspace', 'CURVATURE_PAIRS', 'DEFAULT_MAX_BYTES',
    'DenseSubspace', 'FastfoodSubspace', 'GaLoreAdamW', 'LOCAL', 'PBFGS', 'Placement', 'PRODUCT_CHUNK_BYTES', 'PSGD',
    'RANDOM_BLOCK', 'RANK_RTOL', 'RedrawnSubspace', 'STAT_KEYS', 'Subspace', 'TrajectoryRecorder',
    'as_subspace', 'dldr_basis', 'draw_seed', 'flat_grad', 'flat_params', 'fwht', 'load_trajectory',
    'project_grads_', 'random_basis', 'set_flat_grad_', 'set_flat_params_', 'shard_range',
    'snapshot_mean', 'store_basis', 'trainable_params', 'twa_basis']
