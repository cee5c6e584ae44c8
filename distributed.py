"""Processes and their communication: the device, the process group under torchrun, the
:class:`dldr.Comm` over it, the command-line wrapper.

Launched by ``torchrun``, every process reads RANK / LOCAL_RANK / WORLD_SIZE from its environment,
joins the process group (nccl on CUDA, gloo on the CPU) and uses cuda:LOCAL_RANK.
``--batch-size`` is the global batch; each rank takes its share of every mini-batch
(:class:`utils.DeviceLoader`).  Global rank 0 alone prints and writes files.

Every collective of a run goes through :class:`DistComm` (``context.comm``); this module is the
only one that calls ``torch.distributed`` (besides DDP in train_sgd.py, which is set up here too:
its process group).  The collectives, by caller:

* ``all_reduce_`` — ``dldr``: the d gradient coordinates of a P-SGD / P-BFGS step, P-BFGS's loss
  and trial losses, the basis extraction's t x t / d x d partial sums;
  ``engine.EpochMeter.result``: the epoch's loss and accuracy counts; ``engine.average_buffers_``:
  the BatchNorm statistics; ``utils.count_skipped``: the unreadable-image masks (ImageFolder).
* ``all_gather_`` — ``dldr``: the basis P, each rank's block of coordinates, once per run;
  with a sharded basis (``--shard-basis``, ``dldr.CompactSubspace.lift``) each rank's block of
  the lifted update P^T c at every P-SGD / P-BFGS step.
* ``reduce_scatter_`` — ``dldr.CompactSubspace.coords`` (``--shard-basis`` only): each rank's
  block of the summed gradient at every P-SGD / P-BFGS step (gloo and nccl both offer
  ``reduce_scatter``).
* ``broadcast_`` — ``engine.broadcast_buffers_``: rank 0's BatchNorm buffers before an SGD
  evaluation.
* ``barrier`` — ``Context.barrier``: the save-dir checked before rank 0 writes; rank 0's files
  complete before the others go on.
* DDP (train_sgd.py): the gradient all-reduce and the buffer broadcast at every forward.

The tests' and benchmarks' local process groups and traffic counts (``spawn_local``,
``CountingComm``) are in tests/scaffold.py.
"""
import datetime
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import dldr
import seeds
from errors import UserError


class DistComm(dldr.Comm):
    """:class:`dldr.Comm` over the default torch.distributed process group."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_(self, tensor, op='mean'):
        dist.all_reduce(tensor)  # SUM: ReduceOp.AVG exists on nccl only
        if op == 'mean':
            tensor.div_(self.world_size)
        return tensor

    def all_gather_(self, out, tensor):
        dist.all_gather(out, tensor)

    def reduce_scatter_(self, out, inputs, op='sum'):
        dist.reduce_scatter(out, list(inputs))  # SUM (as all_reduce_)
        if op == 'mean':
            out.div_(self.world_size)
        return out

    def barrier(self):
        dist.barrier()

    def broadcast_(self, tensor, src=0):
        dist.broadcast(tensor, src)
        return tensor


@dataclass
class Context:
    """Where this process runs: device, rank and the communicator of its group."""
    device: torch.device
    comm: dldr.Comm = field(default_factory=dldr.Comm)

    @property
    def rank(self):
        return self.comm.rank

    @property
    def world_size(self):
        return self.comm.world_size

    @property
    def is_main(self):
        return self.comm.rank == 0

    def barrier(self):
        self.comm.barrier()

    def print(self, *args, **kwargs):
        """``print`` on global rank 0 only (flushed: logs are read through ``tee``)."""
        if self.is_main:
            print(*args, **kwargs, flush=True)


def usable_device_types():
    """The device types a run can compute on here: cpu, cuda (when torch sees a GPU), mps
    (when available).  ``meta`` holds no data and the other types have no kernels this code
    uses, so they fail only later, with a traceback."""
    return ('cpu',) + ('cuda',) * torch.cuda.is_available() + ('mps',) * torch.backends.mps.is_available()


def pick_device(name=None, local_rank=0, flag='--device'):
    """The device ``name`` (``flag``'s value; a bare ``cuda``: this rank's GPU), one-line
    UserError for a name torch does not know, a type a run cannot compute on (meta, or an
    accelerator absent here) or a GPU it does not see; default: this rank's GPU, else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as e:
            raise UserError(f'bad {flag} {name!r}: {e}') from None
        if device.type not in usable_device_types() + ('cuda',):  # (cuda: the count below)
            raise UserError(f'{flag} {name}: not a device a run can compute on here; use '
                            f'{" or ".join(usable_device_types())}')
        if device.type == 'cuda' and device.index is None:
            device = torch.device('cuda', local_rank)
        # (not index >= count alone: torch wraps a large index, cuda:999 -> cuda:-25)
        if device.type == 'cuda' and not 0 <= device.index < torch.cuda.device_count():
            raise UserError(f'{flag} {name}: torch sees {torch.cuda.device_count()} CUDA '
                            f'device(s) here')
        return device
    return torch.device('cuda', local_rank) if torch.cuda.is_available() else torch.device('cpu')


def under_torchrun():
    return 'WORLD_SIZE' in os.environ and 'RANK' in os.environ


def global_rank():
    """This process's global rank from torchrun's environment (0 outside torchrun): known
    before the process group exists, e.g. while the flags are parsed."""
    return int(os.environ.get('RANK', 0)) if under_torchrun() else 0


def setup(args):
    """Device, process group (under torchrun), kernels and seeds of this process."""
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = pick_device(args.device, local_rank)
    context = Context(device)
    if under_torchrun():
        backend = args.dist_backend or ('nccl' if device.type == 'cuda' else 'gloo')
        if backend == 'nccl' and device.type != 'cuda':
            raise UserError(f'--dist-backend nccl needs CUDA devices, not {device}')
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.dist_timeout),
                                device_id=device if backend == 'nccl' else None)
        context.comm = DistComm()
    if args.batch_size % context.world_size:
        raise UserError(f'--batch-size {args.batch_size} (the global batch) must divide evenly '
                        f'over the {context.world_size} ranks')
    choose_kernels(args.deterministic)
    seeds.seed_process(args.randomseed)
    return context


def choose_kernels(deterministic):
    """``--deterministic``: deterministic algorithms only (an op without one raises), cuDNN's
    autotuner off, cuBLAS's fixed workspace; otherwise cuDNN picks the fastest kernels per shape
    (``cudnn.benchmark``), which may differ from run to run."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    else:
        torch.backends.cudnn.benchmark = True


def run_cli(main):
    """Run ``main()``: a :class:`UserError` becomes one ``error: ...`` line and exit status 2.

    Under torchrun the same bad input usually fails on every rank at once: rank 0 reports it and
    the other ranks wait a moment first (torchrun ends them as soon as one rank exits), so the
    log shows it once; an error only one rank sees is reported by that rank, tagged with it.
    """
    try:
        main()
    except UserError as e:
        rank = global_rank()
        if rank:
            time.sleep(3)
        print(f'error: {f"[rank {rank}] " if rank else ""}{e}', file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
