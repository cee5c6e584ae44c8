"""Scaffolding of the tests and the benchmarks (not used by the training scripts): local gloo
process groups (:func:`spawn_local`) and a communicator that counts the bytes of every collective
(:class:`CountingComm`).

The tests import it as ``scaffold`` (tests/ is on their sys.path), the benchmarks as
``tests.scaffold`` (run from the repository root).  The scripts themselves are launched by torchrun
(distributed.py).
"""
import datetime
import pickle
import queue as queue_module
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dldr
from distributed import Context, DistComm


class CountingComm(dldr.Comm):
    """Forwards to ``inner``, logging bytes (dldr.Comm is the one place the method communicates,
    so wrapping it sees all of a step's traffic): ``sent``, every all-reduce's tensor; ``log``,
    (collective, bytes) of every collective: the tensor it reduces or gathers on this rank
    (all-reduce: the tensor; reduce-scatter: all W inputs; all-gather: all W outputs)."""

    def __init__(self, inner):
        self.inner, self.rank, self.world_size = inner, inner.rank, inner.world_size
        self.sent, self.log = [], []

    def all_reduce_(self, tensor, op='mean'):
        self.sent.append(tensor.numel() * tensor.element_size())
        self.log.append(('all_reduce', self.sent[-1]))
        return self.inner.all_reduce_(tensor, op)

    def all_gather_(self, out, tensor):
        self.log.append(('all_gather', sum(t.numel() * t.element_size() for t in out)))
        self.inner.all_gather_(out, tensor)

    def reduce_scatter_(self, out, inputs, op='sum'):
        self.log.append(('reduce_scatter', sum(t.numel() * t.element_size() for t in inputs)))
        return self.inner.reduce_scatter_(out, inputs, op)

    def broadcast_(self, tensor, src=0):
        self.log.append(('broadcast', tensor.numel() * tensor.element_size()))
        return self.inner.broadcast_(tensor, src)

    def barrier(self):
        self.inner.barrier()

    def clear(self):
        self.sent.clear()
        self.log.clear()


def spawn_local(fn, world_size, *args, timeout=120):
    """Run ``fn(context, *args)`` in ``world_size`` fresh CPU processes (one thread each) joined
    by gloo through a file:// rendezvous; returns their results in rank order.

    ``fn`` must be importable (a module-level function) and its results picklable.  A rank that
    raises makes this raise RuntimeError with its traceback; the other ranks are terminated
    (they may be waiting in a collective), and nothing waits longer than ``timeout`` seconds.
    """
    spawn = mp.get_context('spawn')
    with tempfile.TemporaryDirectory(prefix='dldr_spawn_') as folder:
        results = spawn.Queue()
        procs = [spawn.Process(target=_spawned_rank, daemon=True,
                               args=(fn, rank, world_size, f'file://{folder}/rendezvous', timeout,
                                     results, args)) for rank in range(world_size)]
        for p in procs:
            p.start()
        out = {}
        try:
            deadline = time.monotonic() + timeout
            while len(out) < world_size:
                try:
                    rank, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue_module.Empty:
                    raise RuntimeError(f'spawn_local: no result from ranks '
                                       f'{sorted(set(range(world_size)) - set(out))} within {timeout}s') from None
                if not ok:
                    raise RuntimeError(f'rank {rank} failed:\n{value}')
                out[rank] = pickle.loads(value)
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
    return [out[r] for r in range(world_size)]


def _spawned_rank(fn, rank, world_size, init_method, timeout, results, args):
    torch.set_num_threads(1)
    try:
        limit = datetime.timedelta(seconds=timeout)
        dist.init_process_group('gloo', timeout=limit, init_method=init_method, rank=rank,
                                world_size=world_size)
        context = Context(torch.device('cpu'), comm=DistComm())
        # plain pickle: tensors travel by value, not as shared memory of an exiting process
        results.put((rank, True, pickle.dumps(fn(context, *args))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
