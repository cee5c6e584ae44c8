"""The subspace runs (train_psgd.py, train_pbfgs.py): the table of subspace kinds, the basis of a
trajectory, and :class:`SubspaceRun` (set-up, evaluation with both BatchNorm measurements, end,
``--evaluate`` of a finished run).

Everything that differs between the kinds of ``--subspace`` is one row of :data:`KINDS`: how the
basis is built, the default and the largest d, where training starts by default, whether a seed
matters, whether P-BFGS can use it.  The scripts, flags.py, sweep.py and plot.py ask the table.
"""
import os
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import numpy as np
import torch

import dldr
import distributed
import engine
import seeds
import utils
from run import Evaluation, Run, RunRecord, score_row
from errors import UserError


# ---------------------------------------------------------------------------------------------
# The kinds of subspace.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Storage:
    """How an explicit basis P is held (``--shard-basis``, ``--basis-dtype``, ``--basis-device``):
    only this rank's block of columns, in which type, on which device (None: the run's)."""
    shard: bool = False
    dtype: str = 'float32'
    device: str | None = None

    @classmethod
    def of(cls, args):
        return cls(getattr(args, 'shard_basis', False), getattr(args, 'basis_dtype', 'float32'),
                   getattr(args, 'basis_device', None))

    def where(self, device):
        """The device P is computed and stored on."""
        return torch.device(self.device) if self.device else device

    @property
    def staging(self):
        """Where the basis functions hold the float32 P before it is stored: the host when P is
        kept in a low-precision type (so the device never holds it in float32), else where it is
        computed (None)."""
        return torch.device('cpu') if self.dtype != 'float32' else None

    def subspace(self, block, n, device, comm):
        """The :class:`dldr.Subspace` of ``block`` (the whole P, or this rank's columns when
        sharded) for parameters on ``device``."""
        return dldr.store_basis(block, n, dtype=self.dtype, shard_comm=comm if self.shard else None,
                                device=device, basis_device=self.where(device))


def _dldr(trajectory, d, n, seed, device, memory, comm, storage):
    basis = dldr.dldr_basis(trajectory, d, device=storage.where(device), max_bytes=memory,
                            comm=comm, gather=not storage.shard, store_device=storage.staging)
    ratio = basis.explained_variance_ratio.tolist()
    return storage.subspace(basis.P, n, device, comm), {
        'explained_variance_ratio': ratio, 'cumulative_explained_variance': np.cumsum(ratio).tolist(),
        'singular_values': basis.singular_values.tolist()}


def _twa(trajectory, d, n, seed, device, memory, comm, storage):
    return storage.subspace(dldr.twa_basis(trajectory, d, device=storage.where(device),
                                           max_bytes=memory, comm=comm, gather=not storage.shard,
                                           store_device=storage.staging),
                            n, device, comm), {}


def _random(trajectory, d, n, seed, device, memory, comm, storage):
    return storage.subspace(dldr.random_basis(d, n, seed, device=storage.where(device),
                                              max_bytes=memory, comm=comm, gather=not storage.shard,
                                              store_device=storage.staging),
                            n, device, comm), {}


def _fastfood(trajectory, d, n, seed, device, memory, comm, storage):
    return dldr.FastfoodSubspace(d, n, seed, device), {}


def _redrawn(trajectory, d, n, seed, device, memory, comm, storage):
    return dldr.RedrawnSubspace(lambda s: dldr.FastfoodSubspace(d, n, s, device), d, n, seed), {}


@dataclass(frozen=True)
class Kind:
    """One ``--subspace`` kind.

    ``build(trajectory, d, n, seed, device, max_bytes, comm, storage)`` returns the
    :class:`dldr.Subspace` and the extra entries of the run's ``basis`` JSON (``storage``: a
    :class:`Storage`, used by the kinds with an explicit P, ``explicit``).  ``max_dim(t)``: the largest d a trajectory
    of t snapshots allows (None: any), ``too_large``: why, formatted with d, t, first, last, every.
    ``paper``: the paper's own kind (file names and messages without the kind's name).
    ``pbfgs_refusal``: why P-BFGS cannot use it (None: it can)."""
    name: str
    help: str
    build: Callable
    default_dim: int | None  # None: the number of snapshots
    max_dim: Callable[[int], int] | None = None
    too_large: str = ''
    starts_at_mean: bool = False
    seeded: bool = False
    paper: bool = False
    pbfgs_refusal: str | None = None
    explicit: bool = True  # holds a d x n P (--shard-basis, --basis-dtype, --basis-device apply)

    def dim(self, args):
        """``--n_components`` unless given."""
        return self.default_dim or len(snapshot_numbers(args))

    def default_start(self, args):
        """``--train-start`` unless given: the mean of the snapshots, or the first of them."""
        return 'mean' if self.starts_at_mean else args.params_start

    def check_dim(self, args):
        numbers = snapshot_numbers(args)
        t = len(numbers)
        if self.max_dim is not None and args.n_components > self.max_dim(t):
            every = f', step {args.params_step}' if args.params_step > 1 else ''
            raise UserError(self.too_large.format(d=args.n_components, t=t, first=args.params_start,
                                                  last=args.params_end - 1, every=every))

    def describe(self):
        """``'random '`` in messages and names, ``''`` for the paper's kind."""
        return '' if self.paper else self.name + ' '


KINDS = MappingProxyType({k.name: k for k in (
    Kind('dldr', 'top-d principal directions of the centred snapshots (the paper)', _dldr,
         default_dim=40, max_dim=lambda t: t - 1, paper=True,
         too_large='--n_components {d} must be smaller than the number of snapshots ({t}: '
                   '{first}..{last}{every}): a centred trajectory of t snapshots has rank <= t-1'),
    Kind('twa', 'orthonormal basis of the raw snapshots in order (Trainable Weight Averaging; '
                'starts at their mean)', _twa,
         default_dim=None, max_dim=lambda t: t, starts_at_mean=True,
         too_large='--n_components {d} must not exceed the number of snapshots ({t}{every}) with '
                   '--subspace twa: their span has dimension <= {t}'),
    Kind('random', 'a seeded random subspace', _random, default_dim=40, seeded=True),
    Kind('fastfood', 'a seeded structured random map (Le et al. 2013, O(n) memory)', _fastfood,
         default_dim=40, seeded=True, explicit=False),
    Kind('redrawn', 'a new Fastfood random subspace at every step (Gressmann et al. 2020; P-SGD '
                    'only)', _redrawn, default_dim=40, seeded=True, explicit=False,
         pbfgs_refusal='--subspace redrawn changes the basis at every step; P-BFGS keeps '
                       'curvature in one fixed basis: use train_psgd.py for it'),
)})


def default_dims_text():
    """The default d of every kind, for ``--help``: '40; twa: the number of snapshots'."""
    usual = max({k.default_dim for k in KINDS.values()} - {None})
    return str(usual) + ''.join(f'; {k.name}: the number of snapshots' if k.default_dim is None
                                else f'; {k.name}: {k.default_dim}' for k in KINDS.values()
                                if k.default_dim != usual)


def snapshot_numbers(args):
    """The snapshots of a subspace run's basis."""
    return range(args.params_start, args.params_end, args.params_step)


def subspace_tag(method, args):
    """File-name stem of a subspace run's outputs: ``pbfgs_d40_0-81`` for DLDR (the reference's
    names), ``psgd_twa_d40_0-81``, ``psgd_random_s3_d40_0-81`` (kind, and seed where it matters),
    plus ``_step<K>`` with ``--params-step K`` and ``_mean`` or ``_from<K>`` for a --train-start
    other than the kind's default."""
    kind = KINDS[args.subspace]
    seed = f'_s{args.subspace_seed}' if kind.seeded else ''
    tag = (method if kind.paper else f'{method}_{kind.name}{seed}') + \
        f'_d{args.n_components}_{args.params_start}-{args.params_end}'
    if args.params_step > 1:
        tag += f'_step{args.params_step}'
    if args.train_start != kind.default_start(args):
        tag += '_mean' if args.train_start == 'mean' else f'_from{args.train_start}'
    return tag


def build_subspace(args, model, context):
    """The ``--subspace`` of the trajectory ``params_start .. params_end-1``, streamed from disk
    onto the device (each rank streaming its block of coordinates); then ``model`` is set to the
    ``--train-start``: snapshot K (weights and BN buffers), or the snapshots' mean (weights; the
    caller re-estimates the BN statistics).

    Returns the :class:`dldr.Subspace` and the ``basis`` entry of the run's JSON.
    """
    folder = args.pretrain_dir or args.save_dir
    kind, d, t = KINDS[args.subspace], args.n_components, len(snapshot_numbers(args))
    trajectory = utils.open_trajectory(folder, args.params_start, args.params_end, model,
                                       args.params_step)
    n, memory, comm = len(trajectory[0]), args.basis_memory * 2**20, context.comm
    info = {'kind': kind.name, 'seed': args.subspace_seed if kind.seeded else None,
            'snapshots': [args.params_start, args.params_end], 'step': args.params_step,
            'used': list(snapshot_numbers(args)), 'folder': folder, 'start': args.train_start,
            'n_components': d}
    storage = Storage.of(args)
    if storage != Storage():  # (the default adds no keys: the JSON of a plain run is unchanged)
        info.update(shard_basis=storage.shard, basis_dtype=storage.dtype,
                    basis_device=str(storage.where(context.device)))
    start = time.time()
    try:
        subspace, extra = kind.build(trajectory, d, n, args.subspace_seed, context.device, memory,
                                     comm, storage)
    except ValueError as e:
        raise UserError(f'{kind.describe()}basis of {folder}/{args.params_start}..'
                        f'{args.params_end - 1}.pt: {e}') from None
    info.update(extra)
    info['seconds'] = time.time() - start
    if storage != Storage():
        info['basis_bytes_per_rank'] = subspace.basis_bytes
    if args.train_start == 'mean':
        utils.load_snapshot(utils.snapshot_path(folder, args.params_start), model)
        dldr.set_flat_params_(dldr.trainable_params(model),
                              dldr.snapshot_mean(trajectory, device=context.device, max_bytes=memory))
    else:
        utils.load_snapshot(utils.snapshot_path(folder, args.train_start), model)
    where = 'the mean' if args.train_start == 'mean' else f'snapshot {args.train_start}'
    seed = f', seed {info["seed"]}' if info['seed'] is not None else ''
    ranks = f' x {context.world_size} ranks' if context.world_size > 1 else ''
    every = f', step {args.params_step}' if args.params_step > 1 else ''
    context.print(f'basis: {kind.name}, {t} snapshots {args.params_start}..{args.params_end - 1}{every} of '
                  f'{folder}, {n} parameters -> d = {d}{seed}, {info["seconds"]:.1f}s on '
                  f'{context.device}{ranks}; training starts at {where}')
    if 'basis_bytes_per_rank' in info:
        context.print(f'basis storage: {storage.dtype} on {info["basis_device"]}'
                      f'{", sharded over the ranks" if storage.shard else ""}: '
                      f'{info["basis_bytes_per_rank"] / 2**20:.1f} MiB of P on this rank')
    if 'explained_variance_ratio' in info:
        context.print('explained variance ratio: ' + ' '.join(f'{r:.4f}' for r in
                                                              info['explained_variance_ratio']))
        context.print('cumulative:               ' + ' '.join(f'{c:.4f}' for c in
                                                              info['cumulative_explained_variance']))
    return subspace, info


# ---------------------------------------------------------------------------------------------
# A subspace run.
# ---------------------------------------------------------------------------------------------

@dataclass
class SubspaceRun(Run):
    """train_psgd.py's and train_pbfgs.py's run: besides :class:`run.Run`'s, the subspace, the
    loader BatchNorm re-estimation reads (None without --bn-update) and the number of batches
    it reads, and the final model's path."""
    subspace: object = None  # the dldr.Subspace
    bn_loader: object = None
    bn_batches: int = 0
    model_path: str = ''
    basis: dict | None = None  # the 'basis' entry of the record

    @property
    def loaders(self):
        return self.train_loader, self.test_loader, self.bn_loader

    @classmethod
    def start_run(cls, config, method):
        """Checks, device and process group, data, model, basis, the model at
        ``--train-start``, loaders, record and tracker."""
        run = cls._set_up(config, method)
        context, model = run.context, run.model
        run.subspace, run.basis = build_subspace(config, model, context)
        if context.rank:  # dropout masks of its own (all ranks were seeded alike for the same init)
            torch.manual_seed(seeds.seed('rank_dropout', config.randomseed, rank=context.rank))
        if config.train_start == 'mean':  # the averaged weights get their own BN statistics, as in TWA
            loader = run.train_loader.with_generator(seeds.generator('bn_mean_start', config.randomseed))
            engine.update_bn(model, loader, len(loader), context, config.amp)
        run.record = RunRecord(
            os.path.join(config.save_dir, f'metrics_{subspace_tag(method, config)}.json'), config,
            context, method=method, basis=run.basis,
            n_parameters=sum(p.numel() for p in model.parameters()), n_train=len(run.data.train_y),
            **utils.noise_record(run.data, config), bn_update_batches=run.bn_batches)
        run.record.watch(model)
        run.open_tracker(subspace_tag(method, config))
        run.tracker.log_basis(run.basis)
        return run

    @classmethod
    def _set_up(cls, config, method):
        """Device and process group, save-dir, data, model, loaders (no basis, no record)."""
        context = distributed.setup(config)
        tag = subspace_tag(method, config)
        model_path = os.path.join(config.save_dir, f'{tag}.pt')
        metrics_path = os.path.join(config.save_dir, f'metrics_{tag}.json')
        # what the run reads is there before --save-dir is made: a refused run leaves no empty folder
        if config.evaluate:
            if not os.path.isfile(model_path):
                raise UserError(f'missing {model_path}: -e evaluates the final model of a finished '
                                f'run with these flags')
        else:
            folder = config.pretrain_dir or config.save_dir
            utils.check_trajectory_files(folder, config.params_start, config.params_end, config.params_step)
            start = (utils.snapshot_path(folder, config.train_start) if config.train_start != 'mean'
                     else None)
            if start and not os.path.isfile(start):  # (read after the basis: checked now)
                raise UserError(f'missing snapshot {start}: --train-start {config.train_start} '
                                f'starts training there')
        utils.prepare_save_dir(config.save_dir)
        if not config.evaluate:
            utils.refuse_overwrite([model_path, metrics_path], config)
        data = utils.load_data(config)
        model = utils.build_model(config, data, context.device)
        generator = seeds.generator('data', config.randomseed)
        train_loader, test_loader = utils.make_loaders(data, config, context, generator)
        bn_batches = min(config.bn_update, len(train_loader))
        if bn_batches < config.bn_update:  # the JSON and -e then say how many were used
            n = len(train_loader)
            context.print(f'--bn-update {config.bn_update}: an epoch has {n} training batch'
                          f'{"es" * (n > 1)}; BatchNorm statistics are re-estimated on '
                          f'{"all " * (n > 1)}{n}')
        # BatchNorm re-estimation reads the training data in its own order (the training order is
        # untouched), through the training loader's data: no second copy, no second worker pool
        bn_loader = train_loader.with_generator(torch.Generator()) if bn_batches else None
        return cls(config, context, method, data, model, train_loader, test_loader,
                   bn_loader=bn_loader, bn_batches=bn_batches, model_path=model_path)

    def evaluate(self, epoch):
        """Both BatchNorm measurements of the test set, each rank evaluating its shard:

        1. with the running statistics that training left (averaged over the ranks): the
           reference's metric, ``test_acc``;
        2. with ``--bn-update``, also with the statistics re-estimated on that many training
           batches, ``test_acc_bn``; the running statistics are then put back, so training and
           the saved model carry the reference's statistics, whatever is measured.

        Returns an :class:`run.Evaluation`."""
        config, t0 = self.config, time.time()
        engine.average_buffers_(self.model, self.context.comm)
        running = engine.evaluate(self.model, self.test_loader, self.context, config.amp)
        reestimated = None
        if self.bn_batches:
            kept = [b.clone() for b in self.model.buffers()]
            self.bn_loader.generator.manual_seed(seeds.seed('bn_order', config.randomseed, epoch=epoch))
            engine.update_bn(self.model, self.bn_loader, self.bn_batches, self.context, config.amp)
            reestimated = engine.evaluate(self.model, self.test_loader, self.context, config.amp)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), kept):
                    buffer.copy_(saved)
        return Evaluation(running, reestimated, time.time() - t0)

    def record_start(self):
        """``--epochs 0``: the starting point's test scores as row 0 (e.g. --train-start mean:
        SWA)."""
        ev = self.evaluate(0)
        self.context.print(f'epoch 0 (the start, not trained): test loss {ev.test.loss:.4f} acc '
                           f'{ev.test.acc:.2f}%')
        self.tracker.log_epoch(self.record.add_epoch({
            'epoch': 0, **score_row(None, ev.test, ev.test_bn), 'seconds': ev.seconds,
            'eval_seconds': ev.seconds}))

    def finish(self):
        """Save the final model (rank 0) and metrics and print where they are."""
        if self.context.is_main:
            utils.save_tensors(self.model.state_dict(), self.model_path)
        super().finish()
        self.context.barrier()
        self.context.print(f'model: {self.model_path}; metrics: {self.record.path}')

    @classmethod
    def evaluate_saved(cls, config, method):
        """``--evaluate``: the run's saved final model (not rewritten), with its running
        BatchNorm statistics and, with ``--bn-update``, re-estimated as after the last epoch."""
        run = cls._set_up(config, method)
        utils.load_snapshot(run.model_path, run.model)
        ev = run.evaluate(config.epochs - 1)
        for scores, how in ((ev.test, 'BatchNorm running statistics'),
                            (ev.test_bn, f'BatchNorm statistics re-estimated on {run.bn_batches} '
                                         f'training batches')):
            if scores is not None:
                run.context.print(f'{run.model_path}: test loss {scores.loss:.4f} acc {scores.acc:.2f}%'
                                  + (f' top5 {scores.acc5:.2f}%' if scores.acc5 is not None else '')
                                  + f' ({how})')
