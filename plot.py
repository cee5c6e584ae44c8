"""Figures of DLDR runs, read from the files the training scripts leave in a ``--save-dir``.

    python plot.py curves save_resnet20            # accuracy / loss per epoch of every run
    python plot.py time save_resnet20              # test accuracy vs cumulative training seconds
    python plot.py spectrum save_resnet20          # explained-variance spectrum of each basis
    python plot.py trajectory save_resnet20        # SGD trajectory on its top-2 principal plane
    python plot.py noise save_noise0 save_noise0.2 # final test accuracy vs label noise
    python plot.py dims save_sweep                 # final test accuracy vs subspace dimension d
    python plot.py all save_resnet20               # every figure that applies

Each command writes one PNG (``<family>.png``) into ``--out`` (default: the first folder) and
prints its path.  Bad input is one ``error:`` line and exit status 2.
"""
import argparse
import os
import re
from collections import defaultdict
from types import MappingProxyType

import numpy as np

import distributed
import flags
import metrics
import subspace_run
import tracking
import utils
from errors import UserError

FAMILIES = ('curves', 'time', 'spectrum', 'trajectory', 'noise', 'dims')


class NoData(UserError):
    """The folders hold runs, but none that this figure needs (``all`` skips the figure)."""


# ---------------------------------------------------------------------------------------------
# Reading runs.
# ---------------------------------------------------------------------------------------------

def load_runs(folder):
    """Every ``metrics_*.json`` of ``folder`` as :class:`metrics.Metrics` (``folder`` as given),
    SGD first, then by method, basis kind, d and seed."""
    if not os.path.isdir(folder):
        raise UserError(f'no such folder: {folder}')
    paths = metrics.paths(folder)
    if not paths:
        raise UserError(f'no runs in {folder} (no metrics_*.json)')
    runs = [metrics.load(path) for path in paths]
    for run in runs:
        run['folder'] = folder
    return sorted(runs, key=lambda r: (r['method'] != 'sgd', r['method'], r.kind, r.subspace_dim or 0,
                                       str(r.seed), r['tag']))


def load_all(folders):
    return [run for folder in folders for run in load_runs(folder)]


def paper_kind(run):
    """Whether a subspace run used the paper's basis (DLDR; files without a kind: DLDR too)."""
    k = run.kind
    return k is None or (k in subspace_run.KINDS and subspace_run.KINDS[k].paper)


def kind_name(run):
    return 'DLDR' if paper_kind(run) else run.kind


def method_label(run):
    """'SGD', 'P-SGD d=40', 'P-BFGS random d=40' (the basis kind unless DLDR)."""
    name = metrics.METHOD_NAMES.get(run['method'], run['method'])
    if run['method'] == 'sgd':
        return name
    return f'{name}{"" if paper_kind(run) else " " + run.kind} d={run.subspace_dim}'


def run_label(run, folder_prefix=False):
    label = method_label(run)
    if run['method'] != 'sgd':
        start, end = run.snapshot_range
        label += f', snapshots {start}..{end - 1}'
        kind = subspace_run.KINDS.get(run.kind)
        if kind is not None and kind.seeded:
            label += f', seed {run.seed}'
    return f'{os.path.basename(os.path.normpath(run["folder"]))}: {label}' if folder_prefix else label


def column(run, key, fallback=None):
    """The per-epoch values of ``key`` (NaN where absent or null)."""
    rows = run['epochs']
    values = [r.get(key, r.get(fallback) if fallback else None) for r in rows]
    return np.array([np.nan if v is None else float(v) for v in values])


def setting(runs):
    """'resnet20 on CIFAR10, 20% label noise' from the first run's args."""
    a = runs[0]['args']
    text = f'{a.get("arch", "?")} on {a.get("datasets", "?")}'
    if a.get('smalldatasets'):
        text += f' ({100 * a["smalldatasets"]:g}% subset)'
    if a.get('corrupt'):
        text += f', {100 * a["corrupt"]:g}% label noise'
    return text


# ---------------------------------------------------------------------------------------------
# Computations (no plotting), exposed for tests.
# ---------------------------------------------------------------------------------------------

def project_trajectory(snapshots, extra=(), chunk=1 << 20):
    """Centred PCA of a trajectory, streamed over chunks of coordinates.

    ``snapshots`` (t of them) and ``extra`` are flat vectors supporting ``len`` and slicing
    (tensors, arrays, :class:`utils.FlatSnapshot`).  Accumulates the t×t Gram matrix G of the
    centred snapshots and the products of the centred ``extra`` points with them; with
    G = V Λ Vᵀ the snapshots' coordinates on the top-2 principal directions u_i = W v_i / √λ_i
    are √λ_i v_i, and a point e lands at (e - mean)ᵀ u_i.  Signs: the last snapshot lies at
    coordinates >= the first.  Returns (t×2 coordinates, len(extra)×2 coordinates, the fraction of
    the trajectory's variance on each of the two directions).
    """
    t, m = len(snapshots), len(extra)
    if t < 3:
        raise NoData(f'a trajectory of {t} snapshots has no principal plane (need >= 3)')
    n = len(snapshots[0])
    step = max(1, chunk // (t + m))
    gram, cross = np.zeros((t, t)), np.zeros((m, t))
    for a in range(0, n, step):
        b = min(a + step, n)
        x = np.stack([np.asarray(s[a:b], dtype=np.float64) for s in snapshots])
        mean = x.mean(axis=0)
        x -= mean
        gram += x @ x.T
        if m:
            cross += (np.stack([np.asarray(e[a:b], dtype=np.float64) for e in extra]) - mean) @ x.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    eigenvalues, eigenvectors = np.clip(eigenvalues[::-1], 0, None), eigenvectors[:, ::-1]
    sigma = np.sqrt(eigenvalues[:2])
    signs = np.where(eigenvectors[-1, :2] < eigenvectors[0, :2], -1.0, 1.0)
    v = eigenvectors[:, :2] * signs
    coords = v * sigma
    extra_coords = cross @ v / np.where(sigma > 0, sigma, 1.0)
    total = eigenvalues.sum()
    return coords, extra_coords.reshape(m, 2), eigenvalues[:2] / (total if total > 0 else 1.0)


def dims_groups(runs, spread='minmax'):
    """Final test accuracy against d, per (method, basis kind, snapshot range).

    Returns {label: [(d, mean, low, high, n_runs), ...] sorted by d}; ``low``/``high`` are the
    min/max over seeds (``spread='minmax'``) or mean ∓ the standard error (``'sem'``).
    """
    acc = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run['method'] == 'sgd' or run.get('final_test_acc') is None or run.subspace_dim is None:
            continue
        name = metrics.METHOD_NAMES.get(run['method'], run['method'])
        label = f'{name} ({run.basis_text})'  # TWA over d, a range per d: one label
        acc[label][int(run.subspace_dim)].append(float(run['final_test_acc']))
    groups = {}
    for label, by_d in acc.items():
        rows = []
        for d in sorted(by_d):
            y = np.array(by_d[d])
            if spread == 'sem':
                err = y.std(ddof=1) / np.sqrt(len(y)) if len(y) > 1 else 0.0
                low, high = y.mean() - err, y.mean() + err
            else:
                low, high = y.min(), y.max()
            rows.append((d, float(y.mean()), float(low), float(high), len(y)))
        groups[label] = rows
    return groups


def trajectory_model(runs, state):
    """The model of the runs' ``--arch``, with class and channel counts read from ``state``."""
    import models
    args = next((r for r in runs if r['method'] == 'sgd'), runs[0])['args']
    dataset = args.get('datasets', 'CIFAR10')
    num_classes = {'CIFAR100': 100}.get(dataset, 10)
    in_channels = 1 if dataset == 'MNIST' else 3
    matrices = [v for k, v in state.items() if k.endswith('weight') and v.dim() == 2]
    convs = [v for k, v in state.items() if k.endswith('weight') and v.dim() == 4]
    num_classes = matrices[-1].shape[0] if matrices else num_classes
    in_channels = convs[0].shape[1] if convs else in_channels
    try:
        return models.get_model(args.get('arch', 'resnet20'), num_classes, in_channels,
                                family=utils.dataset_family(dataset))
    except ValueError as e:
        raise UserError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Figures: each takes the parsed flags and returns the path written (NoData when nothing fits).
# ---------------------------------------------------------------------------------------------

def figure(*args, **kwargs):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def save(fig, opts, name):
    import matplotlib.pyplot as plt
    path = os.path.join(opts.out, name)
    try:
        fig.savefig(path, dpi=opts.dpi, bbox_inches='tight')
    except OSError as e:
        raise UserError(f'cannot write {path}: {e.strerror or e}') from None
    finally:
        plt.close(fig)
    print(path, flush=True)
    opts.saved.append(path)
    return path


def plot_curves(opts):
    runs = load_all(opts.dirs)
    prefix = len(opts.dirs) > 1
    fig, axes = figure(2, 2, figsize=(12, 8), sharex=True)
    for run in runs:
        epochs = column(run, 'epoch')
        style = dict(marker='o' if len(epochs) <= 30 else None, markersize=3,
                     linestyle='--' if run['method'] == 'sgd' else '-')
        for i, key in enumerate(('acc', 'loss')):
            for j, split in enumerate(('train', 'test')):
                axes[i, j].plot(epochs, column(run, f'{split}_{key}'), label=run_label(run, prefix), **style)
    for j, split in enumerate(('train', 'test')):
        axes[0, j].set(title=f'{split} accuracy', ylabel='accuracy (%)')
        axes[1, j].set(title=f'{split} loss', ylabel='cross-entropy loss', xlabel='epoch')
        for i in range(2):
            axes[i, j].grid(alpha=0.3)
            axes[i, j].xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=min(3, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.01 - 0.025 * ((len(labels) + 2) // 3)))
    fig.suptitle(f'Training curves: {setting(runs)} (subspace runs: epochs of subspace training)')
    fig.tight_layout()
    return save(fig, opts, 'curves.png')


def plot_time(opts):
    runs = load_all(opts.dirs)
    fig, ax = figure(figsize=(8, 5.5))
    for run in runs:
        seconds = np.nancumsum(column(run, 'train_seconds', 'seconds'))
        ax.plot(seconds, column(run, 'test_acc'), marker='o', markersize=3,
                linestyle='--' if run['method'] == 'sgd' else '-',
                label=run_label(run, len(opts.dirs) > 1))
    measured = 'train_seconds' if all('train_seconds' in r for run in runs for r in run['epochs']) \
        else 'epoch seconds'
    ax.set(xlabel=f'cumulative training time (s; {measured}, basis extraction excluded)',
           ylabel='test accuracy (%)', title=f'Test accuracy vs training time: {setting(runs)}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, opts, 'time.png')


def plot_spectrum(opts):
    runs = load_all(opts.dirs)
    bases = {}
    for run in runs:
        basis = run.get('basis')
        if not isinstance(basis, dict) or not basis.get('explained_variance_ratio'):
            continue
        start, end = run.snapshot_range
        key = (run['folder'], start, end, run.kind, run.seed if not paper_kind(run) else None)
        if key not in bases or len(basis['explained_variance_ratio']) > len(bases[key][1]):
            label = f'{kind_name(run)} basis of snapshots {start}..{end - 1}'
            label += f', seed {run.seed}' if key[-1] is not None else ''
            bases[key] = (label, basis['explained_variance_ratio'])
    if not bases:
        raise NoData(f'no subspace run with a basis in {", ".join(opts.dirs)}')
    fig, (left, right) = figure(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(bases)
    for i, (label, ratio) in enumerate(bases.values()):
        ratio = np.asarray(ratio, dtype=float)
        k = np.arange(1, len(ratio) + 1)
        left.bar(k + (i - (len(bases) - 1) / 2) * width, 100 * ratio, width=width, label=label)
        right.plot(k, 100 * np.cumsum(ratio), marker='o', markersize=3, label=label)
    if opts.log:
        from matplotlib.ticker import LogFormatter
        left.set_yscale('log')
        left.yaxis.set_major_formatter(LogFormatter())
        left.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1, 0.4)))
    left.set(xlabel='principal component i', ylabel='explained variance (% of trajectory variance)',
             title='per component' + (' (log scale)' if opts.log else ''))
    right.set(xlabel='number of components d', ylabel='cumulative explained variance (%)',
              title='cumulative', ylim=(0, 101))
    for ax, where in ((left, 'upper right'), (right, 'lower right')):
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small', loc=where)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f'Explained-variance spectrum of the subspace bases: {setting(runs)}')
    fig.tight_layout()
    return save(fig, opts, 'spectrum.png')


def plot_trajectory(opts):
    folder = opts.dirs[0]
    runs = load_runs(folder)
    numbered = sorted(int(m.group(1)) for p in os.listdir(folder)
                      if (m := re.fullmatch(r'(\d+)\.pt', p)))
    if opts.snapshots:
        start, end = opts.snapshots
    else:
        dldr_runs = [r for r in runs if r.kind and paper_kind(r)] or [r for r in runs if r.kind]
        start, end = dldr_runs[0].snapshot_range if dldr_runs else (0, numbered[-1] + 1 if numbered else 0)
    if end - start < 3 or not all(i in numbered for i in range(start, end)):
        raise NoData(f'trajectory needs snapshots {start}.pt .. {end - 1}.pt (at least 3) in {folder}; '
                     f'found {len(numbered)} numbered snapshots')
    state = utils.strip_module_prefix(utils.load_file(utils.snapshot_path(folder, start), 'snapshot'))
    model = trajectory_model(runs, state)
    trajectory = utils.open_trajectory(folder, start, end, model)
    later = [i for i in numbered if i >= end]
    ends = [r for r in runs if r['method'] != 'sgd' and os.path.isfile(os.path.join(folder, r['tag'] + '.pt'))]
    extra = [utils.FlatSnapshot(utils.snapshot_path(folder, i), model) for i in later]
    extra += [utils.FlatSnapshot(os.path.join(folder, r['tag'] + '.pt'), model) for r in ends]
    coords, extra_coords, frac = project_trajectory(trajectory, extra)

    fig, ax = figure(figsize=(8, 6.5))
    ax.plot(coords[:, 0], coords[:, 1], '-o', color='tab:blue', markersize=4,
            label=f'SGD snapshots {start}..{end - 1} (basis)')
    every, span = max(1, int(np.ceil(len(coords) / 12))), np.ptp(coords, axis=0).max()
    shown = []  # label every few snapshots, the last one first, none too close to another label
    for i in range(len(coords) - 1, -1, -1):
        if (i % every == 0 or i == len(coords) - 1) and all(
                np.linalg.norm(coords[i] - coords[j]) > 0.03 * span for j in shown):
            shown.append(i)
            ax.annotate(str(start + i), coords[i], textcoords='offset points', xytext=(5, 5),
                        fontsize=8, color='tab:blue')
    if later:
        pts = np.vstack([coords[-1:], extra_coords[:len(later)]])
        ax.plot(pts[:, 0], pts[:, 1], ':', marker='.', color='grey',
                label=f'later SGD snapshots {later[0]}..{later[-1]} (projected)')
        ax.annotate(str(later[-1]), pts[-1], textcoords='offset points', xytext=(5, 5), fontsize=8,
                    color='grey')
    for j, (run, (x, y)) in enumerate(zip(ends, extra_coords[len(later):])):
        s = run.snapshot_range[0]
        color = f'C{j % 9 + 1}'  # C0 is the trajectory
        ax.plot([x], [y], ('*', 'D', 's', '^', 'v', 'P', 'X')[j % 7], color=color, markersize=11,
                label=f'final {run_label(run)}')
        if start <= s < end:
            ax.annotate('', (x, y), xytext=coords[s - start],
                        arrowprops=dict(arrowstyle='->', color=color, alpha=0.6, ls='--'))
    ax.set(xlabel=f'PC 1 (parameter-space distance, {100 * frac[0]:.1f}% of trajectory variance)',
           ylabel=f'PC 2 (parameter-space distance, {100 * frac[1]:.1f}% of trajectory variance)',
           title=f'SGD trajectory on its top-2 principal plane (origin: mean snapshot)\n{setting(runs)}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, opts, 'trajectory.png')


def _error_lines(ax, groups, xscale=1.0):
    for label, rows in groups.items():
        x, y, lo, hi, n = (np.array(c, dtype=float) for c in zip(*rows))
        ax.errorbar(x * xscale, y, yerr=[y - lo, hi - y] if (n > 1).any() else None,
                    marker='o', capsize=3, label=label)


def plot_noise(opts):
    runs = load_all(opts.dirs)
    acc = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.get('final_test_acc') is not None:
            acc[method_label(run)][float(run['args'].get('corrupt') or 0.0)].append(run['final_test_acc'])
    levels = {c for by_c in acc.values() for c in by_c}
    if len(levels) < 2:
        raise NoData(f'one label-noise level only ({", ".join(f"{c:g}" for c in levels) or "none"})')
    groups = {label: [(c, np.mean(a), min(a), max(a), len(a)) for c, a in sorted(by_c.items())]
              for label, by_c in acc.items()}
    fig, ax = figure(figsize=(8, 5.5))
    _error_lines(ax, groups, xscale=100.0)
    ax.set(xlabel='label noise (% of training labels corrupted)', ylabel='final test accuracy (%)',
           title='Final test accuracy vs label noise (bars: min–max over runs)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, opts, 'noise.png')


def plot_dims(opts):
    runs = load_all(opts.dirs)
    groups = dims_groups(runs, opts.spread)
    if not any(len(rows) > 1 for rows in groups.values()):
        raise NoData('no sweep over d (every method/basis has a single n_components)')
    fig, ax = figure(figsize=(8, 5.5))
    _error_lines(ax, groups)
    sgd = [r['final_test_acc'] for r in runs if r['method'] == 'sgd' and r.get('final_test_acc') is not None]
    if sgd:
        ax.axhline(np.mean(sgd), color='black', linestyle='--', linewidth=1,
                   label=f'SGD, all parameters (final, mean of {len(sgd)})' if len(sgd) > 1 else
                   'SGD, all parameters (final)')
    ds = [row[0] for rows in groups.values() for row in rows]
    if max(ds) >= 10 * min(ds):
        from matplotlib.ticker import NullFormatter
        ax.set_xscale('log')
        ax.set_xticks(sorted(set(ds)), [str(d) for d in sorted(set(ds))])
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xticks(sorted(set(ds)))
    spread = 'min–max' if opts.spread == 'minmax' else 'standard error'
    several = any(n > 1 for rows in groups.values() for *_, n in rows)
    ax.set(xlabel='subspace dimension d (n_components)', ylabel='final test accuracy (%)',
           title=f'Final test accuracy vs subspace dimension: {setting(runs)}'
                 + (f'\n(mean over seeds, bars: {spread})' if several else ' (one seed)'))
    ax.grid(alpha=0.3, which='both')
    # below the axes: the lines of a kinds study fill the whole plot
    ax.legend(fontsize='small', loc='upper center', bbox_to_anchor=(0.5, -0.12), ncol=2)
    return save(fig, opts, 'dims.png')


def plot_budget(opts):
    """Test accuracy against measured wall-clock minutes, one colour per pipeline of the budget
    study (``run.sh budget``), one curve per seed; a subspace pipeline's curve continues the SGD
    curve it starts from (SGD up to epoch K, then its own evaluations)."""
    import pipelines
    folder = opts.dirs[0]
    per_seed = [pipelines.seed_pipelines(sub) for sub in pipelines.seeds(folder)]
    per_seed = [p for p in per_seed if p]
    if not per_seed:
        raise UserError(f'no finished budget runs in {folder} (sgd_s*/metrics_sgd.json)')
    fig, ax = figure(figsize=(9, 5.5))
    colours = {}
    for i, found in enumerate(per_seed):
        for name, timeline in found.items():
            colour = colours.setdefault(name, f'C{len(colours)}')
            minutes = [p[0] / 60 for p in timeline.points]
            ax.plot(minutes, [p[2] for p in timeline.points], color=colour, alpha=1.0 if i == 0 else 0.45,
                    linestyle='--' if name.startswith('SGD') else '-', marker='o', markersize=2.5,
                    label=name if i == 0 else None)
            ax.plot(minutes[-1:], [timeline.final], color=colour, marker='*', markersize=9)
    ax.set(xlabel='wall-clock minutes (measured: set-up, compilation, basis and evaluations included)',
           ylabel='test accuracy (%, BatchNorm running statistics)',
           title=f'Accuracy vs wall-clock: {len(per_seed)} seed(s), star = end of the pipeline')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small', loc='lower right')
    return save(fig, opts, 'budget.png')


def plot_all(opts):
    for family in FAMILIES:
        try:
            PLOTTERS[family](opts)
        except NoData as e:
            print(f'skipped {family}: {e}', flush=True)


PLOTTERS = MappingProxyType({'curves': plot_curves, 'time': plot_time, 'spectrum': plot_spectrum,
                             'trajectory': plot_trajectory, 'noise': plot_noise, 'dims': plot_dims,
                             'budget': plot_budget, 'all': plot_all})


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--out', help='folder for the PNG files (default: the first input folder)')
    common.add_argument('--dpi', type=flags.positive_int, default=120, help='resolution (default 120)')
    tracking.add_tracking_args(common, steps=False)  # the figures as images (default --log-dir: DIR/logs)
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='family', required=True, metavar='FIGURE')
    helps = {'curves': 'train/test accuracy and loss per epoch of every run (curves.png)',
             'time': 'test accuracy vs cumulative training seconds (time.png)',
             'spectrum': 'explained variance per component and cumulative, per basis (spectrum.png)',
             'trajectory': 'SGD trajectory and subspace endpoints on the top-2 PCA plane (trajectory.png)',
             'noise': 'final test accuracy vs label noise, over several save-dirs (noise.png)',
             'dims': 'final test accuracy vs subspace dimension d (dims.png)',
             'budget': 'test accuracy vs wall-clock of the pipelines of run.sh budget (budget.png)',
             'all': 'every figure that applies to the folder'}
    for name, text in helps.items():
        s = sub.add_parser(name, parents=[common], help=text, description=text)
        several = name in ('curves', 'time', 'spectrum', 'noise', 'dims')
        s.add_argument('dirs', nargs='+' if several else 1, metavar='DIR', help='a --save-dir of the training scripts')
        if name in ('spectrum', 'all'):
            s.add_argument('--log', action='store_true', help='log scale for the per-component bars')
        if name in ('trajectory', 'all'):
            s.add_argument('--snapshots', nargs=2, type=int, metavar=('START', 'END'),
                           help='snapshots START..END-1 (default: those of the first DLDR basis, '
                                'else all numbered snapshots)')
        if name in ('dims', 'all'):
            s.add_argument('--spread', choices=('minmax', 'sem'), default='minmax',
                           help='error bars over seeds: min–max (default) or standard error')
    opts = p.parse_args(argv)
    for key, default in (('log', False), ('snapshots', None), ('spread', 'minmax')):
        opts.__dict__.setdefault(key, default)
    return opts


def main(argv=None):
    opts = parse_args(argv)
    for folder in opts.dirs:
        if opts.family != 'budget':  # (a budget folder holds its runs one level down)
            load_runs(folder)  # check every folder before writing anything
    opts.out = opts.out or opts.dirs[0]
    try:
        os.makedirs(opts.out, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create --out {opts.out}: {e.strerror}') from None
    opts.saved = []
    PLOTTERS[opts.family](opts)
    if opts.logger:
        opts.save_dir = opts.dirs[0]  # (default --log-dir: beside the runs' own logs)
        tracker = tracking.make_tracker(opts, name='figures')
        tracker.log_images({f'figures/{os.path.splitext(os.path.basename(p))[0]}': p for p in opts.saved})
        tracker.close()


if __name__ == '__main__':
    distributed.run_cli(main)
