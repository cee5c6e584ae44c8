"""The training and evaluation loops: one epoch of any optimizer (closure optimizers such as
P-BFGS included), evaluation, the epoch meter, BatchNorm re-estimation.

The method lives in the ``dldr`` package (pure torch), data and files in the ``utils`` package, the command
lines in ``flags.py``, processes and their communication in ``distributed.py``, a run's state
and its record in ``run.py`` (with ``sgd_run.py`` and ``subspace_run.py``), the seeds in
``seeds.py``.  Every collective here goes through ``context.comm`` (a :class:`dldr.Comm`) and is
named in the docstring that runs it.
"""
import contextlib
import sys
import time
from typing import NamedTuple

PROCESS_START = time.time()
"""When the script started (this module is imported at start-up): a row's ``elapsed`` counts from
here, so it includes data loading, model building and, in a subspace run, the basis."""

import torch
import torch.nn.functional as F

import dldr


# ---------------------------------------------------------------------------------------------
# Training and evaluation loops.
# ---------------------------------------------------------------------------------------------

def autocast(device, amp):
    if amp == 'off':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


class Scores(NamedTuple):
    """Mean loss, top-1 accuracy % and top-5 accuracy % (None with 5 classes or fewer)."""
    loss: float
    acc: float
    acc5: float | None = None


class EpochMeter:
    """Running loss sum, top-1 and top-5 correct counts and image count, kept on the device (no
    per-step host sync); :meth:`result` sums them over the ranks."""

    def __init__(self, device):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss * n, top-1, top-5, n
        self.top5 = False

    def update(self, loss, output, target):
        n = target.shape[0]
        output = output.detach()
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += (output.argmax(1) == target).sum()
        if output.shape[1] > 5:
            self.top5 = True
            self.sums[2] += (output.topk(5, 1).indices == target[:, None]).any(1).sum()
        self.sums[3] += n

    def result(self, comm=dldr.LOCAL):
        """:class:`Scores` over every rank's images — one all-reduce, one host sync."""
        loss, correct, correct5, count = comm.all_reduce_(self.sums.clone(), 'sum').tolist()
        if count == 0:
            return Scores(float('nan'), float('nan'))
        return Scores(loss / count, 100.0 * correct / count, 100.0 * correct5 / count if self.top5 else None)


def evaluate(model, loader, context, amp='off'):
    """Test :class:`Scores` in eval mode; each rank evaluates its shard of the test set."""
    model.eval()
    meter = EpochMeter(context.device)
    with torch.inference_mode(), autocast(context.device, amp):
        for x, y in loader:
            out = model(x)
            meter.update(F.cross_entropy(out.float(), y), out, y)
    return meter.result(context.comm)


def progress(iterable, total, desc, print_freq, show=True):
    """tqdm on a terminal; otherwise plain iteration with a line every ``print_freq`` steps."""
    if not show:
        yield from iterable
        return
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = time.time()
    for i, item in enumerate(iterable):
        yield item
        if print_freq and (i + 1) % print_freq == 0 and i + 1 < total:
            print(f'  {desc} [{i + 1}/{total}] {time.time() - start:.1f}s', flush=True)


def batch_closure(model, batches, optimizer, amp='off', meter=None):
    """A closure for ``optimizer.step(closure)`` on the mini-batch ``batches[-1]``, averaging the
    gradients of all ``batches`` (a list of (x, y); more than one: gradient accumulation).

    With grad enabled it zeroes the gradients, backpropagates the mean loss of the batches and
    returns the last batch's loss; the first such call also counts the batches into ``meter``
    (an :class:`EpochMeter`; P-BFGS's same-batch curvature pair calls it a second time).  Under
    ``torch.no_grad()`` (a line-search trial) it returns the loss on the last batch, a forward
    pass only."""
    device = batches[-1][0].device
    counted = meter is None

    def closure():
        nonlocal counted
        x, y = batches[-1]
        if not torch.is_grad_enabled():
            with autocast(device, amp):
                return F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        for xb, yb in batches:
            with autocast(device, amp):
                out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
            (loss / len(batches)).backward()
            if not counted:
                meter.update(loss, out, yb)
        counted = True
        return loss

    return closure


def _groups(loader, k):
    """Consecutive lists of ``k`` batches (the last may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def takes_closure(optimizer):
    """Whether ``optimizer.step`` needs a closure (P-BFGS, torch's LBFGS)."""
    return getattr(optimizer, 'takes_closure', False) or isinstance(optimizer, torch.optim.LBFGS)


def train_epoch(model, loader, optimizer, context, *, amp='off', scaler=None, before_step=None,
                after_step=None, log_step=None, accumulate=1, desc='train', print_freq=0):
    """One epoch of mini-batch training.

    A plain optimizer steps once per batch: forward, backward, ``before_step()`` between
    backward and the step (P-SGD projects the gradient there), the step.  A closure optimizer
    (:func:`takes_closure`) steps once per ``accumulate`` batches with a :func:`batch_closure`
    over them.  ``after_step(i)`` runs after step i (0-based) of the epoch, ``log_step(i, loss)``
    too, with the step's loss tensor (still on the device: the tracker reads it only every
    --log-every steps, not a host sync per step).

    Returns the :class:`Scores` over all ranks; the loss is NaN/inf when any step produced a
    non-finite loss."""
    model.train()
    device = context.device
    meter = EpochMeter(device)
    closure_steps = takes_closure(optimizer)
    steps = -(-len(loader) // accumulate) if closure_steps else len(loader)
    batches = _groups(loader, accumulate) if closure_steps else loader
    for i, batch in enumerate(progress(batches, steps, desc, print_freq, context.is_main)):
        if closure_steps:
            loss = optimizer.step(batch_closure(model, batch, optimizer, amp, meter))
        else:
            x, y = batch
            with autocast(device, amp):
                out = model(x)
                loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if before_step is not None:  # on the scaled gradients (linear): every rank's scaler
                    before_step()            # then checks the same all-reduced gradient for inf
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if before_step is not None:
                    before_step()
                optimizer.step()
            meter.update(loss, out, y)
        if after_step is not None:
            after_step(i)
        if log_step is not None:
            log_step(i, loss)
    return meter.result(context.comm)


def grad_scaler(args, device):
    """A GradScaler for fp16 autocast on CUDA (bf16 and CPU need none)."""
    if args.amp == 'fp16' and device.type == 'cuda':
        return torch.amp.GradScaler('cuda')
    return None


def _float_buffers(model):
    return [b for b in model.buffers() if b.is_floating_point()]


@torch.no_grad()
def average_buffers_(model, comm):
    """Replace the floating buffers (BatchNorm running statistics) by their mean over the ranks:
    one all-reduce of their concatenation."""
    buffers = _float_buffers(model)
    if comm.world_size == 1 or not buffers:
        return
    flat = comm.all_reduce_(torch.cat([b.reshape(-1).float() for b in buffers]))
    torch._foreach_copy_(buffers, list(flat.split([b.numel() for b in buffers])))


@torch.no_grad()
def broadcast_buffers_(model, comm):
    """Give every rank global rank 0's buffers (as DDP does at each training forward)."""
    if comm.world_size > 1:
        for b in model.buffers():
            comm.broadcast_(b, 0)


@torch.no_grad()
def update_bn(model, loader, batches, context, amp='off'):
    """Re-estimate the BatchNorm running statistics as the plain average over ``batches`` training
    batches (as torch.optim.swa_utils.update_bn), averaged over the ranks.  Trainable parameters
    are untouched; the model is left in train mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms or batches == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    # eager even under --compile: a cumulative average (momentum None) makes BatchNorm read its
    # batch count as a Python number, a graph break and a recompilation for a few forwards
    with autocast(context.device, amp), torch.compiler.set_stance('force_eager'):
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    average_buffers_(model, context.comm)
