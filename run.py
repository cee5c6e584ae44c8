"""The run layer: one :class:`Run` owns what a training script keeps between its epochs — the
frozen settings, the process context, data, model, loaders, the metrics record and the tracker —
and does what every script does at the end of an epoch and of the run.

    run = SubspaceRun.start_run(config, 'psgd')   # subspace_run.py; sgd_run.SGDRun.start_run(config)
    for epoch in run.epochs():
        train = engine.train_epoch(run.model, run.train_loader, optimizer, run.context, ...)
        run.end_epoch(epoch + 1, train, run.evaluate(epoch), train_seconds=...)
    run.finish()

:class:`RunRecord` is the metrics JSON; the run is its only writer and ``metrics.py`` its only
reader.  Nothing here communicates except where a docstring says so.
"""
import platform
import time
from dataclasses import dataclass
from typing import Any

import torch

import engine
import flags
import tracking
import utils
from distributed import Context


def environment(device) -> dict:
    """What ran a run, for its record: torch's and Python's versions, the device's type and name (a
    GPU's, or the CPU's model as the OS reports it; for another accelerator, the host CPU's).  A
    resumed run's record holds its last part's."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
        except OSError:
            pass
    return {'torch': torch.__version__, 'python': platform.python_version(), 'device_type': device.type,
            'device': name}


class RunRecord:
    """The run's metrics JSON (settings, per-epoch rows, summary), rewritten atomically after
    every change by rank 0 of the whole job.  None of its methods communicates, so rank 0 alone
    may call them (the others keep a copy that is never written).  ``metrics.py`` reads these
    files."""

    def __init__(self, path, config, context, **extra):
        self.path = path
        self.is_main = context.is_main
        self.model = None
        self.elapsed_before = 0.0  # wall seconds of the parts of a resumed run before this one
        self.data = {'args': flags.as_dict(config), **extra, 'environment': environment(context.device),
                     'world_size': context.world_size,
                     'batch_per_rank': config.batch_size // context.world_size,
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
        :func:`utils.count_skipped` so far.  Returns the row as stored."""
        self.data['skipped_images'] = skipped_images
        row = {**row, 'elapsed': self.elapsed_before + time.time() - engine.PROCESS_START,
               'process_seconds': time.process_time()}
        self.data['epochs'].append(row)
        self._summarise()
        self.save()
        return row

    def _summarise(self):
        """``final_test_acc`` / ``best_test_acc``: the last and best ``test_acc`` (BatchNorm's
        running statistics, the reference's metric); ``final_test_acc_bn`` / ``best_test_acc_bn``
        likewise for ``test_acc_bn`` (statistics re-estimated) where the rows have it; whether
        the watched model runs compiled."""
        rows = self.data['epochs']
        if self.model is not None:
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
        """Set top-level entries and save."""
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
    """The log line of an epoch from its train / test :class:`engine.Scores`: the test scores
    with BatchNorm's running statistics (the reference's metric), then, where the statistics were
    re-estimated (``test_bn``), those scores."""
    def top5(scores):
        return f' top5 {scores.acc5:6.2f}%' if scores.acc5 is not None else ''
    lr_text = f'lr {lr:.4g}  ' if lr is not None else ''
    bn_text = (f' | BN re-estimated: loss {test_bn.loss:.4f} acc {test_bn.acc:6.2f}%{top5(test_bn)}'
               if test_bn is not None else '')
    return (f'epoch {epoch:>4d}/{epochs}  {lr_text}train loss {train.loss:.4f} acc {train.acc:6.2f}%'
            f'{top5(train)}  test loss {test.loss:.4f} acc {test.acc:6.2f}%{top5(test)}{bn_text}  train '
            f'{train_seconds:.1f}s eval {eval_seconds:.1f}s{extra}')


def score_row(train, test, test_bn=None):
    """The loss / accuracy entries of a JSON row from the train and test :class:`engine.Scores`
    (train None: an evaluation only): ``test_*`` with the running BatchNorm statistics,
    ``test_*_bn`` re-estimated (when given)."""
    row = {} if train is None else {'train_loss': train.loss, 'train_acc': train.acc}
    row.update(test_loss=test.loss, test_acc=test.acc)
    if test.acc5 is not None and train is not None:
        row.update(train_acc5=train.acc5, test_acc5=test.acc5)
    if test_bn is not None:
        row.update(test_loss_bn=test_bn.loss, test_acc_bn=test_bn.acc)
        if test_bn.acc5 is not None:
            row['test_acc5_bn'] = test_bn.acc5
    return row


@dataclass(frozen=True)
class Evaluation:
    """The test scores after an epoch: with the running BatchNorm statistics (the reference's
    metric), re-estimated ones where measured, and the seconds both took."""
    test: engine.Scores
    test_bn: engine.Scores | None
    seconds: float


@dataclass
class Run:
    """A training run: what the script set up, the record it writes and the tracker it logs to.

    Subclasses (``sgd_run.SGDRun``, ``subspace_run.SubspaceRun``) add their state and build
    themselves in ``start_run(config, ...)``; the scripts then only loop and call
    :meth:`end_epoch` and :meth:`finish`."""
    config: Any  # the frozen settings (flags.freeze)
    context: Context
    method: str  # 'sgd', 'psgd', 'pbfgs'
    data: Any  # utils.Dataset or utils.FolderData
    model: Any
    train_loader: Any
    test_loader: Any
    record: RunRecord | None = None
    tracker: Any = None

    def __post_init__(self):
        self.started = time.time()  # reset when the epochs begin

    @property
    def loaders(self):
        return self.train_loader, self.test_loader

    def open_tracker(self, name):
        self.tracker = tracking.make_tracker(self.config, self.context, name)

    def epochs(self, start=0):
        """The epochs to run, 0-based; the run's ``seconds`` count from here."""
        self.started = time.time()
        return range(start, self.config.epochs)

    def end_epoch(self, epoch, train, evaluation, *, train_seconds, lr=None, note='', **entries):
        """The end of epoch ``epoch`` (1-based): its log line (``note`` appended), its JSON row
        (scores, times, ``entries``) and the tracker's.  Collective: the skipped-image count is
        summed over the ranks."""
        test, test_bn, eval_seconds = evaluation.test, evaluation.test_bn, evaluation.seconds
        self.context.print(epoch_line(epoch, self.config.epochs, lr, train, test, train_seconds,
                                      eval_seconds, note, test_bn))
        skipped = utils.count_skipped(self.loaders, self.context.comm)  # an all-reduce
        row = {'epoch': epoch, **({'lr': lr} if lr is not None else {}),
               **score_row(train, test, test_bn), 'seconds': train_seconds + eval_seconds,
               'train_seconds': train_seconds, 'eval_seconds': eval_seconds, **entries}
        self.tracker.log_epoch(self.record.add_epoch(row, skipped))

    @property
    def final(self):
        """(final, best) test accuracy with the running statistics, and (final, best)
        re-estimated (None, None when not measured)."""
        d = self.record.data
        return ((d['final_test_acc'], d['best_test_acc']),
                (d.get('final_test_acc_bn'), d.get('best_test_acc_bn')))

    def finish(self):
        """The run completed: the record's wall time and ``finished``, the tracker closed, the
        final scores printed."""
        seconds = time.time() - self.started
        self.record.finish(seconds)
        self.tracker.close()
        (final, best), (final_bn, best_bn) = self.final
        bn = f'; BN re-estimated: final {final_bn}  best {best_bn}' if final_bn is not None else ''
        self.context.print(f'final test acc {final}  best {best}{bn}  ({seconds:.0f}s)')
