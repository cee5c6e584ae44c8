"""The one reader of the metrics files the training scripts write (``metrics_<tag>.json``,
written by :class:`run.RunRecord`): plot.py, sweep.py, run.sh's demo table and the tests read
runs through here.

    python metrics.py table runs/demo     # the table of every run in a folder (run.sh demo)

A file has ``args`` (the flags), ``method`` (sgd, psgd, pbfgs), ``epochs`` (one row per epoch:
epoch, train/test loss and accuracy, seconds, ...), ``final_test_acc``, ``best_test_acc``,
``n_parameters``, ``environment`` (torch, python, device_type, device); a subspace run also ``basis`` (kind, n_components, snapshots, seed, start, ...);
a sampling run ``snapshots`` (snapshot number -> epoch, step, iteration).  A completed run says
``"finished": true``; files of before that key count as finished when they hold the run's
``seconds`` (written only at the end).
"""
import glob
import json
import os
import sys
from types import MappingProxyType

from errors import UserError

METHOD_NAMES = MappingProxyType({'sgd': 'SGD', 'psgd': 'P-SGD', 'pbfgs': 'P-BFGS'})
"""The methods' names in tables and figures (read-only: plot.py and tables.py share it)."""
KIND_NAMES = MappingProxyType({'dldr': 'DLDR', 'twa': 'TWA', 'random': 'random', 'fastfood': 'Fastfood',
                               'redrawn': 'random, re-drawn every step'})
"""The subspace kinds' names in tables and figures, in the order of tables.py kinds."""
SPANNING_KINDS = ('dldr', 'twa')
"""The subspace kinds whose basis spans the snapshots (the others only start from one)."""


class Metrics(dict):
    """A metrics file as its dict (``run['epochs']``, ...) plus typed accessors of what readers
    derive from it, and ``path``, ``folder``, ``tag`` (the file name's ``metrics_<tag>.json``)."""

    @property
    def method(self):
        return self['method']

    @property
    def finished(self):
        return bool(self.get('finished', 'seconds' in self))

    @property
    def final_test_acc(self):
        return self.get('final_test_acc')

    @property
    def kind(self):
        """The subspace kind of a subspace run (files without one: dldr); None for SGD."""
        basis = self.get('basis')
        return (basis.get('kind') or 'dldr') if isinstance(basis, dict) else None

    @property
    def subspace_dim(self):
        """The subspace dimension d of a subspace run (None for SGD)."""
        if self.method == 'sgd':
            return None
        return (self.get('basis') or {}).get('n_components', self['args'].get('n_components'))

    @property
    def n_trained(self):
        """How many numbers the run trained: d for a subspace run, every parameter for SGD."""
        d = self.subspace_dim
        return d if d is not None else self.get('n_parameters')

    @property
    def seed(self):
        args = self['args']
        return args.get('subspace_seed', args.get('randomseed'))

    @property
    def snapshot_range(self):
        """(start, end) of the trajectory a subspace run's basis came from, end exclusive."""
        snaps = (self.get('basis') or {}).get('snapshots')
        if snaps and len(snaps) == 2:
            return int(snaps[0]), int(snaps[1])
        return self['args'].get('params_start'), self['args'].get('params_end')

    @property
    def snapshots_text(self):
        """The snapshots a DLDR or TWA basis spans, for labels: 'snapshots 0..30', or 'the last d
        snapshots up to 30' where it spans exactly d of them (TWA over d in bash run.sh kinds), so
        that the runs of such a sweep share one label.  '' for the other kinds."""
        if self.kind not in SPANNING_KINDS:
            return ''
        (first, end), d = self.snapshot_range, self.subspace_dim
        return f'the last d snapshots up to {end - 1}' if end - first == d else f'snapshots {first}..{end - 1}'

    @property
    def basis_text(self):
        """A subspace run's basis for labels: its kind, the snapshots it spans
        (:attr:`snapshots_text`) and where training started, as 'DLDR, snapshots 0..30, from
        snapshot 0', 'TWA, the last d snapshots up to 30, from their mean', 'random, from
        snapshot 3'."""
        start = (self.get('basis') or {}).get('start', self.snapshot_range[0])
        where = 'from their mean' if start == 'mean' else f'from snapshot {start}'
        return ', '.join(filter(None, (KIND_NAMES.get(self.kind, self.kind), self.snapshots_text, where)))


def load(path):
    """The metrics file at ``path`` as :class:`Metrics` (a one-line UserError when it is not one)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f'corrupt metrics file {path}: {e.msg} (line {e.lineno})') from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read metrics file {path}: {e}') from None
    if not (isinstance(data, dict) and isinstance(data.get('args'), dict)
            and isinstance(data.get('epochs'), list)):
        raise UserError(f'{path} is not a metrics file of the training scripts '
                        f'(no "args" / "epochs")')
    tag = os.path.basename(path)[len('metrics_'):-len('.json')]
    run = Metrics(data)
    run.update(path=path, folder=os.path.dirname(path), tag=tag)
    run.setdefault('method', tag.split('_')[0])
    return run


def paths(folder):
    """The metrics files of ``folder``, by name."""
    return sorted(glob.glob(os.path.join(folder, 'metrics_*.json')))


def finished(path):
    """Whether ``path`` holds a completed run (False when absent)."""
    return os.path.isfile(path) and load(path).finished


def table(folder):
    """The results table of every run in ``folder`` (oldest file first): method, dimension,
    epochs, final and best test accuracy, final accuracy minus SGD's, seconds."""
    runs = [load(p) for p in sorted(paths(folder), key=os.path.getmtime)]
    rows = [(METHOD_NAMES.get(r.method, r.method.upper()), r.n_trained, len(r['epochs']),
             r.final_test_acc, r.get('best_test_acc'), r.get('seconds', 0)) for r in runs]
    sgd_final = next((r[3] for r in rows if r[0] == 'SGD'), None)
    lines = ['', f"{'method':8} {'dimension':>10} {'epochs':>6} {'final acc':>9} {'best acc':>9} "
                 f"{'vs SGD':>7} {'seconds':>8}"]
    for r in rows:
        gap = f'{r[3] - sgd_final:+7.2f}' if sgd_final is not None else f"{'-':>7}"
        lines.append(f'{r[0]:8} {r[1]:>10} {r[2]:>6} {r[3]:>9.2f} {r[4]:>9.2f} {gap} {r[5]:>8.0f}')
    lines.append('(vs SGD: final accuracy minus the SGD run\'s final accuracy, in points)')
    return '\n'.join(lines)


def main(argv=None):
    import flags  # (the training scripts' one-line errors; imports torch)
    p = flags.Parser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')
    t = sub.add_parser('table', help='the results table of every run in a folder')
    t.add_argument('folder', metavar='DIR', help='a --save-dir of the training scripts')
    f = sub.add_parser('finished', help='exit status 0 when the run of a metrics file has finished, '
                                        '1 when it is absent or unfinished (run.sh skips finished steps)')
    f.add_argument('path', metavar='FILE', help='a metrics_*.json')
    s = sub.add_parser('snapshots', help='the number of snapshots a sampling run wrote (0..N-1: '
                                         'run.sh passes N as --params_end)')
    s.add_argument('path', metavar='FILE', help='a metrics_sgd.json')
    s.add_argument('--until-epoch', type=int, default=None, metavar='K',
                   help='only those taken up to the end of epoch K (0..N-1 then end there)')
    q = sub.add_parser('sgd-epochs-like', help='how many epochs of an SGD run (the mean of its '
                                               'rows) take as long as the whole of another run '
                                               '(its last row\'s elapsed), at least 1')
    q.add_argument('run', metavar='FILE', help='the run whose wall-clock to match')
    q.add_argument('sgd', metavar='SGD_FILE', help='a metrics_sgd.json')
    args = p.parse_args(argv)
    if args.command == 'sgd-epochs-like':
        run, sgd = load(args.run), load(args.sgd)
        epoch_seconds = [r['seconds'] for r in sgd['epochs']]
        print(max(1, round(run['epochs'][-1]['elapsed'] / (sum(epoch_seconds) / len(epoch_seconds)))))
        return
    if args.command == 'finished':
        sys.exit(0 if finished(args.path) else 1)
    if args.command == 'snapshots':
        if not os.path.isfile(args.path):
            raise UserError(f'no such file: {args.path}')
        snapshots = load(args.path).get('snapshots', [])
        if args.until_epoch is not None:
            snapshots = [s for s in snapshots if s['epoch'] <= args.until_epoch]
        print(len(snapshots))
        return
    if not os.path.isdir(args.folder):
        raise UserError(f'no such folder: {args.folder}')
    print(table(args.folder))


if __name__ == '__main__':
    import distributed
    distributed.run_cli(main)
