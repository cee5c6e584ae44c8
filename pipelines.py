"""The budget study's pipelines (``bash run.sh budget``) as measured timelines.

A pipeline is a chain of runs, each starting where the one before stopped: SGD up to epoch K,
then a subspace phase or more SGD.  Its timeline is the test accuracy (``test_acc``, BatchNorm's
running statistics: the reference's metric) against the wall-clock seconds and the CPU seconds
measured by the runs themselves (each row's ``elapsed`` and ``process_seconds`` count from its
script's start, set-up, compilation and the basis included), so a pipeline's cost is what the
runs took, not a sum of estimates.

Folder layout of the recipe, per seed: ``sgd_s<seed>/`` the SGD run of E epochs (snapshots,
``metrics_sgd.json``); ``sgd_s<seed>/<phase>/`` a run started from its snapshots (``pbfgs_b1024``,
``pbfgs_b256``, ``psgd``, ``twa``, ``control``: SGD from the epoch-K snapshot at the decayed lr);
``sgd_s<seed>/improve/`` SGD continued from the final model, and ``improve/<phase>/`` the runs
in the span of that continuation (``pbfgs``, ``psgd``, ``twa``, ``swa``).
"""
import glob
import os
from dataclasses import dataclass, field

import metrics

PHASES = {'pbfgs_b1024': 'DLDR P-BFGS, batch 1024', 'pbfgs_b256': 'DLDR P-BFGS, batch 256',
          'psgd': 'DLDR P-SGD', 'twa': 'TWA', 'control': 'SGD, decay moved to K'}
IMPROVE_PHASES = {'swa': 'SWA (mean of the snapshots)', 'pbfgs': 'DLDR P-BFGS', 'psgd': 'DLDR P-SGD',
                  'twa': 'TWA'}


@dataclass
class Timeline:
    """A pipeline's measured points: (wall seconds, CPU seconds, test accuracy) per evaluation."""
    sgd_epochs: int
    phase_epochs: int = 0
    points: list = field(default_factory=list)

    @classmethod
    def of_rows(cls, rows, sgd_epochs):
        return cls(sgd_epochs, 0, [(r['elapsed'], r['process_seconds'], r['test_acc']) for r in rows])

    def then(self, rows, epochs=None, sgd=False):
        """This timeline followed by a run's ``rows`` (their clocks start at this one's end)."""
        wall, cpu = self.points[-1][:2] if self.points else (0.0, 0.0)
        extra = [(wall + r['elapsed'], cpu + r['process_seconds'], r['test_acc']) for r in rows]
        epochs = len(rows) if epochs is None else epochs
        return Timeline(self.sgd_epochs + epochs * sgd, self.phase_epochs + epochs * (not sgd),
                        self.points + extra)

    @property
    def seconds(self):
        return self.points[-1][0]

    @property
    def cpu_seconds(self):
        return self.points[-1][1]

    @property
    def final(self):
        return self.points[-1][2]

    @property
    def best(self):
        return max(p[2] for p in self.points)


def _rows(run):
    return [r for r in run['epochs'] if r.get('elapsed') is not None]


def _load(path):
    return metrics.load(path) if os.path.isfile(path) else None


def _finished(folder, pattern='metrics_*.json'):
    """The finished run of ``folder`` (None when there is none yet)."""
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        run = metrics.load(path)
        if run.finished and _rows(run):
            return run
    return None


def epoch_of_snapshot(sgd, number):
    """The epoch whose end (or inside which) snapshot ``number`` of the SGD run was taken."""
    return next(s['epoch'] for s in sgd['snapshots'] if s['snapshot'] == number)


def start_epoch(run, sgd):
    """The SGD epoch a run started from: the epoch of its basis's last snapshot (subspace runs)
    or of the snapshot it was started from (``--pretrained <k>.pt``)."""
    basis = run.get('basis')
    if basis:
        return epoch_of_snapshot(sgd, basis['snapshots'][1] - 1)
    name = os.path.basename(str(run['args'].get('pretrained')))
    return epoch_of_snapshot(sgd, int(name.split('.')[0]))


def seed_pipelines(folder):
    """{pipeline name: Timeline} of one seed's folder ``sgd_s<seed>``; absent runs are left out."""
    sgd = _load(os.path.join(folder, 'metrics_sgd.json'))
    if sgd is None or not sgd.finished:
        return {}
    rows = _rows(sgd)
    out = {f'SGD, {len(rows)} epochs': Timeline.of_rows(rows, len(rows))}
    for phase, name in PHASES.items():
        run = _finished(os.path.join(folder, phase))
        if run is None:
            continue
        k = start_epoch(run, sgd)
        base = Timeline.of_rows([r for r in rows if r['epoch'] <= k], k)
        out.setdefault(f'SGD stopped at epoch {k}', base)
        out[name] = base.then(_rows(run), sgd=phase == 'control')
    return out


def improve_pipelines(folder):
    """{name: Timeline} of one seed's improvement study (``sgd_s<seed>/improve``), each starting
    at the trained model (timelines count from there), and the trained model's accuracy."""
    cont = _finished(os.path.join(folder, 'improve'), 'metrics_sgd.json')
    if cont is None:
        return {}, None
    rows = _rows(cont)
    start = Timeline(0, 0, [])
    out = {}
    for phase, name in IMPROVE_PHASES.items():
        run = _finished(os.path.join(folder, 'improve', phase))
        if run is None:
            continue
        k = start_epoch(run, cont)
        sampled = start.then([r for r in rows if r['epoch'] <= k], sgd=True)
        out.setdefault(f'SGD continued {k} epochs (the span\'s endpoint)', sampled)
        timeline = sampled.then(_rows(run))
        out[name] = timeline
        # the first epoch of the continuation that took at least the pipeline's time (its span's
        # snapshots included): SGD given the same time, to an epoch's precision
        same = next((r for r in rows if r['elapsed'] >= timeline.seconds), None)
        if same is not None:
            out[f'SGD continued at least as long as {name}'] = start.then(
                [r for r in rows if r['epoch'] <= same['epoch']], sgd=True)
    trained = _load(os.path.join(folder, 'metrics_sgd.json'))
    return out, trained['final_test_acc'] if trained else None


def seeds(folder):
    """The seed folders ``sgd_s*`` of a budget study, in order."""
    return sorted(glob.glob(os.path.join(folder, 'sgd_s*')))
