"""The training and evaluation loops, the epoch meter, BatchNorm re-estimation and the run's
metrics record: what every training script runs once it is set up.

The method lives in ``dldr.py`` (pure torch), data and files in ``utils.py``, the command lines in
``flags.py``, processes and their communication in ``distributed.py``, the subspace runs' set-up
in ``subspace_run.py``, the seeds in ``seeds.py``.  A script is parse -> ``distributed.setup`` ->
data -> model -> loop -> record, run through ``distributed.run_cli``.  Every collective here goes
through ``context.comm`` (a :class:`dldr.Comm`) and is named in the docstring that runs it.
"""
import contextlib
import sys
import time

PROCESS_START = time.time()
"""When the script started (this module is imported at start-up): a row's ``elapsed`` counts from
here, so it includes data loading, model building and, in a subspace run, the basis."""

import torch
import torch.nn.functional as F

import dldr
import utils


# ---------------------------------------------------------------------------------------------
# Training and evaluation loops.
# ---------------------------------------------------------------------------------------------

def autocast(device, amp):
    if amp == 'off':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


class Scores(tuple):
    """(mean loss, top-1 accuracy %): unpacks as that pair; ``acc5`` is the top-5 accuracy % (None
    with 5 classes or fewer)."""

    def __new__(cls, loss, acc, acc5=None):
        self = super().__new__(cls, (loss, acc))
        self.acc5 = acc5
        return self


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


def train_epoch(model, loader, optimizer, context, *, amp='off', scaler=None, before_step=None,
                after_step=None, log_step=None, desc='train', print_freq=0):
    """One epoch of mini-batch training; ``before_step()`` runs between backward and the step
    (P-SGD projects the gradient there), ``after_step(i)`` after step i (0-based) of the epoch,
    ``log_step(i, loss)`` too, with the step's loss tensor (still on the device: the tracker
    reads it only every --log-every steps, not a host sync per step).
    Returns the :class:`Scores` over all ranks; the loss is NaN/inf when any step produced a
    non-finite loss."""
    model.train()
    device = context.device
    meter = EpochMeter(device)
    for i, (x, y) in enumerate(progress(loader, len(loader), desc, print_freq, context.is_main)):
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


class RunRecord:
    """The run's metrics JSON (args, per-epoch rows, summary), rewritten atomically after every
    change by rank 0 of the whole job.  Its methods are what the scripts do to it; none of them
    communicates, so rank 0 alone may call them (the others keep a copy that is never written).
    ``metrics.py`` reads these files."""

    def __init__(self, path, args, context, **extra):
        self.path = path
        self.is_main = context.is_main
        self.elapsed_before = 0.0  # wall seconds of the parts of a resumed run before this one
        self.data = {'args': vars(args), **extra, 'world_size': context.world_size,
                     'batch_per_rank': args.batch_size // context.world_size,
                     'epochs': [], 'final_test_acc': None, 'best_test_acc': None, 'skipped_images': 0,
                     'finished': False}

    @property
    def epochs(self):
        return self.data['epochs']

    @property
    def snapshots(self):
        """[{'snapshot': k, 'epoch', 'step', 'iteration'}] of a sampling run."""
        return self.data.setdefault('snapshots', [])

    def resume(self, epochs, snapshots):
        """Continue a run from its checkpoint: its rows so far and its snapshot map."""
        self.data['epochs'] = epochs
        self.snapshots.extend(snapshots)
        if epochs:
            self._summarise()
            self.elapsed_before = epochs[-1].get('elapsed', 0.0)

    def add_snapshot(self, epoch, step, iteration):
        """Map the next snapshot number to where it was taken; returns the number (not saved
        here: the epoch's row follows)."""
        number = len(self.snapshots)
        self.snapshots.append({'snapshot': number, 'epoch': epoch, 'step': step, 'iteration': iteration})
        return number

    def add_epoch(self, row, skipped_images=0):
        """Append an epoch's row, stamped with ``elapsed`` (wall seconds since the run started,
        set-up included, summed over the parts of a resumed run) and ``process_seconds`` (this
        process's CPU time: steadier than wall time on a shared machine); ``skipped_images``:
        :func:`utils.count_skipped` so far."""
        self.data['skipped_images'] = skipped_images
        row = {**row, 'elapsed': self.elapsed_before + time.time() - PROCESS_START,
               'process_seconds': time.process_time()}
        self.data['epochs'].append(row)
        self._summarise()
        self.save()

    def _summarise(self):
        """``final_test_acc`` / ``best_test_acc``: the last and best ``test_acc`` (BatchNorm's
        running statistics, the reference's metric); ``final_test_acc_bn`` / ``best_test_acc_bn``
        likewise for ``test_acc_bn`` (statistics re-estimated) where the rows have it."""
        rows = self.data['epochs']
        if getattr(self, 'model', None) is not None:
            self.data['compiled'] = utils.is_compiled(self.model)
        for key in ('test_acc', 'test_acc_bn'):
            accs = [r[key] for r in rows if r.get(key) is not None]
            if accs:
                self.data['final_' + key] = accs[-1]
                self.data['best_' + key] = max(accs)

    def watch(self, model):
        """Record with every row whether ``model`` runs compiled (``compiled``: False also after
        a failed compile fell back to eager)."""
        self.model = model

    def note(self, **entries):
        """Set top-level entries (e.g. ``compiled``) and save."""
        self.data.update(entries)
        self.save()

    def finish(self, seconds):
        """The run completed: its wall time (added to an earlier part's) and ``finished``."""
        self.data['seconds'] = self.data.get('seconds', 0) + seconds
        self.data['finished'] = True
        self.save()

    def save(self):
        if self.is_main:
            utils.save_json(self.data, self.path)


def epoch_line(epoch, epochs, lr, train, test, train_seconds, eval_seconds, extra='', test_bn=None):
    """The log line of an epoch from its train / test :class:`Scores`: the test scores with
    BatchNorm's running statistics (the reference's metric), then, where the statistics were
    re-estimated (``test_bn``), those scores."""
    def top5(scores):
        return f' top5 {scores.acc5:6.2f}%' if scores.acc5 is not None else ''
    lr_text = f'lr {lr:.4g}  ' if lr is not None else ''
    bn_text = (f' | BN re-estimated: loss {test_bn[0]:.4f} acc {test_bn[1]:6.2f}%{top5(test_bn)}'
               if test_bn is not None else '')
    return (f'epoch {epoch:>4d}/{epochs}  {lr_text}train loss {train[0]:.4f} acc {train[1]:6.2f}%'
            f'{top5(train)}  test loss {test[0]:.4f} acc {test[1]:6.2f}%{top5(test)}{bn_text}  train '
            f'{train_seconds:.1f}s eval {eval_seconds:.1f}s{extra}')


def score_row(train, test, test_bn=None):
    """The loss / accuracy entries of a JSON row from the train and test :class:`Scores`:
    ``test_*`` with the running BatchNorm statistics, ``test_*_bn`` re-estimated (when given)."""
    row = {'train_loss': train[0], 'train_acc': train[1], 'test_loss': test[0], 'test_acc': test[1]}
    if test.acc5 is not None:
        row.update(train_acc5=train.acc5, test_acc5=test.acc5)
    if test_bn is not None:
        row.update(test_loss_bn=test_bn[0], test_acc_bn=test_bn[1])
        if test_bn.acc5 is not None:
            row['test_acc5_bn'] = test_bn.acc5
    return row
