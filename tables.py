"""The paper's tables from finished runs, our numbers beside the paper's.

    python tables.py resnet8 runs/resnet8          # ResNet8 / CIFAR-10: SGD, random, DLDR (bash run.sh resnet8)
    python tables.py noise runs/noise              # label noise: SGD best and final, P-BFGS, P-SGD (bash run.sh noise)
    python tables.py pbfgs-batch runs/resnet8      # P-BFGS at batch 128 / 256 / 1024 (bash run.sh pbfgs-batch)
    python tables.py bn-images runs/resnet8        # --bn-update: how many images BatchNorm needs (bash run.sh pbfgs-batch)
    python tables.py vit runs/vit                  # a trained ViT fine-tuned in a subspace (bash run.sh vit)
    python tables.py budget runs/budget            # SGD's accuracy from fewer SGD epochs, timed (bash run.sh budget)
    python tables.py improve runs/budget           # a trained model improved (bash run.sh budget)
    python tables.py gpu-headline runs/gpu_headline  # ResNet20: SGD 80, P-BFGS, SGD 150 (bash run.sh gpu-headline)
    python tables.py demo runs/demo                # the demo: SGD, P-SGD, P-BFGS on synthetic data (bash run.sh demo)
    python tables.py pbfgs-bn runs/pbfgs_bn        # P-BFGS at batch 1024 / 256, BatchNorm statistics (bash run.sh pbfgs-bn)
    python tables.py torchrun runs/torchrun        # one process against 2 ranks under torchrun (bash run.sh torchrun)
    python tables.py kinds runs/kinds              # P-SGD in each subspace kind over d (bash run.sh kinds)
    python tables.py imagefolder runs/imagefolder  # SGD, P-SGD, P-BFGS on an ImageFolder (bash run.sh imagefolder)
    python tables.py imagefolder-diagnosis runs/imagefolder  # why P-BFGS is stuck there (bash run.sh imagefolder)
    python tables.py basis-dtype runs/basis_dtype  # P stored in float32 / bf16 / int8 (bash run.sh basis-dtype)

Each reads the metrics JSON files the training scripts wrote under the folder (one sub-folder per
SGD trajectory: ``sgd_s<seed>`` for resnet8 and gpu-headline, ``c<level>`` for noise; kinds and
imagefolder: the trajectory in ``sgd`` and a sub-folder per kind or run beside it), prints a
markdown table and writes it to ``<folder>/<table>.md``.  Means are over the runs found, ``±`` the sample
standard deviation (as the paper reports its trials); a row of one run shows no ``±``.

The tables in the docs are generated from committed records (provenance):

    python tables.py collect runs/budget docs/runs/budget   # after a recipe: copy its records
    python tables.py docs                                   # regenerate every marked table
    python tables.py docs --check                           # exit 1 where the docs differ

``collect`` copies only the records of a recipe's folder (every ``metrics_*.json``, and
``label_noise.json`` / ``sweep.json`` / the ``-e`` logs ``evaluate_b<B>_n<N>.log``; no
checkpoint), keeping the relative paths, so
``docs/runs/<folder>/`` mirrors the folder the recipe wrote.  In README.md and docs/*.md a table
generated from them sits between two markers,

    <!-- table: budget docs/runs/budget -->
    ...
    <!-- /table -->

(the table's name, its records folder relative to the repository), and ``docs`` rewrites the text
between them; a folder that holds no records yet gives a one-line placeholder saying how to make
them.
"""
import argparse
import glob
import os
import re
import shutil
import statistics
import sys

import torch

import distributed
import flags
import metrics
import pipelines
import sweep
import utils
from dldr import BASIS_DTYPES, PBFGS
from errors import UserError

# ResNet8 on CIFAR-10 (the paper's comparison with random subspaces; lr 0.1, batch 128, momentum
# 0.9, 3 trials): method -> (dimension, mean, std) as printed in the paper.
PAPER_RESNET8 = {
    'SGD': (78_330, 83.84, 0.34),
    'random subspace, fixed (Li et al. 2018)': (7_982, 58.35, 0.04),
    'random bases re-drawn every step (Gressmann et al. 2020)': (7_982, 70.26, 0.02),
    'Fastfood subspace, fixed (Li et al. 2018)': None,
    'DLDR P-SGD': (15, 85.18, 0.20),
}
KIND_ROWS = {'random': 'random subspace, fixed (Li et al. 2018)',
             'redrawn': 'random bases re-drawn every step (Gressmann et al. 2020)',
             'fastfood': 'Fastfood subspace, fixed (Li et al. 2018)',
             'dldr': 'DLDR P-SGD'}


def finished_runs(folder):
    """The finished runs of ``folder`` (:class:`metrics.Metrics`)."""
    runs = [metrics.load(path) for path in metrics.paths(folder)]
    return [r for r in runs if r.finished and r.final_test_acc is not None]


def mean_std(values):
    """'83.12 ± 0.40 (2)' over ``values`` (runs); '-' when there are none."""
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.2f} (1)'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})'


def resnet8_table(folder):
    """Rows of the ResNet8 table from ``folder``/sgd_s*/ (SGD and its subspace runs)."""
    acc, dims, epochs, minutes = {}, {}, {}, {}
    for sub in sorted(glob.glob(os.path.join(folder, 'sgd_s*'))):
        for run in finished_runs(sub):
            if run['method'] == 'sgd':
                row, d = 'SGD', run['n_parameters']
            elif run['method'] == 'psgd':
                row, d = KIND_ROWS.get(run.kind), run.subspace_dim
            else:
                continue
            acc.setdefault(row, []).append(run['final_test_acc'])
            dims[row], epochs[row] = d, len(run['epochs'])
            minutes.setdefault(row, []).append(run_minutes(run))
    lines = ['| method | dimension (ours) | epochs | final test acc, ours (runs) | minutes per run | '
             'dimension (paper) | paper |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for row, paper in PAPER_RESNET8.items():
        ours = acc.get(row, [])
        paper_text = (f'{paper[0]:,} | {paper[1]:.2f} ± {paper[2]:.2f}' if paper else '- | -')
        lines.append(f'| {row} | {dims.get(row, "-"):,} | {epochs.get(row, "-")} | {mean_std(ours)} | '
                     f'{statistics.mean(minutes[row]):.1f} | {paper_text} |' if ours else
                     f'| {row} | - | - | - | - | {paper_text} |')
    return lines


def noise_model(run):
    """(``--noise-model``, realised share of wrong labels or None) of a run; runs older than the
    flag ran the 'wrong' model, where every redrawn label is wrong."""
    model = run['args'].get('noise_model', 'wrong')
    wrong = run.get('wrong_label_fraction')
    if wrong is None and model == 'wrong' and run.get('n_train'):
        wrong = run.get('n_corrupted', 0) / run['n_train']
    return model, wrong


def noise_table(folder):
    """Rows of the label-noise table from ``folder``/c<level>/."""
    lines = ['| label noise | noise model | wrong labels | SGD best | SGD final | P-BFGS | P-SGD | '
             'SGD train acc, final | subspace from snapshots |',
             '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |']
    for sub in sorted(glob.glob(os.path.join(folder, 'c*'))):
        runs = finished_runs(sub)
        sgd = [r for r in runs if r['method'] == 'sgd']
        if not sgd:
            continue
        level = sgd[0]['args']['corrupt']
        cells = {m: [r['final_test_acc'] for r in runs if r['method'] == m] for m in ('pbfgs', 'psgd')}
        spans = sorted({f'{r["basis"]["snapshots"][0]}..{r["basis"]["snapshots"][1] - 1}'
                        for r in runs if r['method'] != 'sgd'})
        model, wrong = noise_model(sgd[0])
        lines.append(f'| {100 * level:g}% | {model} | {"-" if wrong is None else f"{100 * wrong:.1f}%"} | '
                     f'{mean_std([r["best_test_acc"] for r in sgd])} | '
                     f'{mean_std([r["final_test_acc"] for r in sgd])} | {mean_std(cells["pbfgs"])} | '
                     f'{mean_std(cells["psgd"])} | {mean_std([r["epochs"][-1]["train_acc"] for r in sgd])} | '
                     f'{", ".join(spans) or "-"} |')
    return lines


def pbfgs_counters(row):
    """P-BFGS's counters of an epoch's row (``PBFGS.reset_stats``); rows written before the
    sums were kept hold only their means, from which the sums follow.  A sum the row lacks, or
    holds as null (the JSON's non-finite value: a diverged loss, or ``captured_sum`` with a
    basis sharded over ranks), is NaN."""
    steps, failed, skipped = row['steps'], row['failed_searches'], row['nonfinite_skips']
    accepted, evaluated = max(steps - failed - skipped, 1), max(steps - skipped, 1)

    def total(key, mean, count):
        value = row[key] if key in row else (None if row.get(mean) is None else row[mean] * count)
        return float('nan') if value is None else value
    return {'steps': steps, 'trials': total('trials', 'mean_trials', steps),
            'failed_searches': failed, 'nonfinite_skips': skipped,
            'curvature_skips': row.get('curvature_skips', 0),
            'step_size_sum': total('step_size_sum', 'mean_step_size', accepted),
            'accepted_loss_sum': total('accepted_loss_sum', 'own_batch_loss_after_step', accepted),
            'loss_sum': total('loss_sum', 'loss_before_step', evaluated),
            'captured_sum': total('captured_sum', 'gradient_captured', evaluated)}


def pbfgs_batch_table(folder):
    """Rows of the P-BFGS batch-size table: every finished P-BFGS run under ``folder``/sgd_s*/,
    its counters summed over the epochs (:func:`pbfgs_counters`, :meth:`PBFGS.summarise`), the
    losses and the consistency of the subspace gradients (``gradient_signal``) of its last epoch."""
    lines = ['| batch | curvature pairs | d | epochs | steps | final test acc | trials / step | '
             'failed searches | skipped pairs (yᵀs ≤ 0) | mean accepted step | loss after step, own batch | '
             'loss before next step | gradient in subspace | consistency of g̃ (last epoch) | minutes |',
             '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    rows = []
    for sub in sorted(glob.glob(os.path.join(folder, 'sgd_s*', 'pbfgs_*'))):
        for run in finished_runs(sub):
            if run['method'] != 'pbfgs':
                continue
            ep = run['epochs']
            total = {k: sum(c[k] for c in map(pbfgs_counters, ep)) for k in pbfgs_counters(ep[0])}
            summary, last = PBFGS.summarise(total), PBFGS.summarise(pbfgs_counters(ep[-1]))
            # the losses of the last epoch: where the runs differ
            rows.append((run['args']['batch_size'], run['args'].get('curvature_pairs', 'consecutive'),
                         run['basis']['n_components'], len(ep), total['steps'], run['final_test_acc'],
                         summary['mean_trials'], total['failed_searches'], total['curvature_skips'],
                         summary['mean_step_size'], last['own_batch_loss_after_step'],
                         last['loss_before_step'], summary['gradient_captured'],
                         ep[-1].get('gradient_signal'), run_minutes(run)))
    for b, pairs, d, e, steps, acc, trials, failed, skips, step, own, nxt, captured, signal, minutes in sorted(rows):
        lines.append(f'| {b} | {pairs} | {d} | {e} | {steps} | {acc:.2f} | {trials:.2f} | {failed} | '
                     f'{skips} | {step:.3g} | {number_text(own, ".3f")} | {number_text(nxt, ".3f")} | '
                     f'{number_text(captured, "#.2g")} | {number_text(signal, "#.2g")} | {minutes:.1f} |')
    return lines


def vit_table(folder):
    """Rows of the ViT table: the trained model (``folder``/train), SGD fine-tuning from it
    (``folder``/finetune) and the subspace runs in the span of the fine-tuning snapshots."""
    lines = ['| stage | trainable dimension | epochs | final test acc | best test acc | minutes |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    for sub, stage in (('train', 'trained from scratch'), ('finetune', 'then fine-tuned')):
        order = {'sgd': 0, 'pbfgs': 1, 'psgd': 2}
        for run in sorted(finished_runs(os.path.join(folder, sub)), key=lambda r: order[r['method']]):
            if run['method'] == 'sgd':
                name = f'{stage}: {run["args"]["optimizer"]}, lr {run["args"]["lr"]:g}'
            else:
                b = run['basis']
                name = (f'then {metrics.METHOD_NAMES[run["method"]]} in the {b["kind"]} subspace of fine-tuning '
                        f'snapshots {b["snapshots"][0]}..{b["snapshots"][1] - 1}, from snapshot '
                        f'{run["args"]["params_start"]}')
            lines.append(f'| {name} | {run.n_trained:,} | {len(run["epochs"])} | '
                         f'{run["final_test_acc"]:.2f} | {run["best_test_acc"]:.2f} | '
                         f'{run["seconds"] / 60:.1f} |')
    return lines


def _stats(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pm(values, fmt='.2f', signed=False):
    """'83.12 ± 0.40' over ``values``; one value alone without ``±``."""
    mean, std = _stats(values)
    sign = '+' if signed else ''
    return f'{mean:{sign}{fmt}}' + (f' ± {std:{fmt}}' if std is not None else '')


def budget_table(folder):
    """Rows of the budget table from ``folder``/sgd_s*/: every pipeline's SGD and subspace epochs,
    measured wall-clock and CPU minutes, final and best test accuracy (running BatchNorm
    statistics), and the gap to SGD-E's final accuracy (mean ± std over the seeds, paired)."""
    per_seed = [pipelines.seed_pipelines(sub) for sub in pipelines.seeds(folder)]
    per_seed = [p for p in per_seed if p]
    lines = ['| pipeline | SGD epochs | subspace epochs | wall-clock min | CPU min | final test acc | '
             'best test acc | final − SGD-E (points) | seeds |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    if not per_seed:
        return lines + ['| (no finished runs yet) | | | | | | | | |']
    sgd_name = next(iter(per_seed[0]))
    names = list(dict.fromkeys(n for p in per_seed for n in p))
    for name in names:
        found = [(p[name], p[sgd_name]) for p in per_seed if name in p and sgd_name in p]
        lines_ = [t for t, _ in found]
        gap = [t.final - s.final for t, s in found]
        lines.append(
            f'| {name} | {lines_[0].sgd_epochs} | {lines_[0].phase_epochs} | '
            f'{_pm([t.seconds / 60 for t in lines_], ".1f")} | {_pm([t.cpu_seconds / 60 for t in lines_], ".1f")} | '
            f'{_pm([t.final for t in lines_])} | {_pm([t.best for t in lines_])} | '
            f'{"" if name == sgd_name else _pm(gap, signed=True)} | {len(found)} |')
    lines += ['| *paper, ResNet20 (GPU): SGD 150 epochs* | 150 | | | | 91.55 | | | |',
              '| *paper: DLDR P-BFGS 40-D from the first 80 epochs* | 80 | 20 | | | 91.72 | | +0.17 | |',
              '| *TWA paper: TWA from the first 100 of 200 epochs* | 100 | 10 | | | as SGD-200 | | '
              '">40 % of the training time saved" | |']
    return lines


def improve_table(folder):
    """Rows of the improvement table from ``folder``/sgd_s*/improve: each way of spending extra
    time on the trained SGD-E model, its extra wall-clock, final test accuracy, and its gain over
    the trained model and over the endpoint of the SGD continuation whose snapshots span the
    subspace (paired per seed; mean ± std)."""
    found = [pipelines.improve_pipelines(sub) for sub in pipelines.seeds(folder)]
    found = [(p, trained) for p, trained in found if p and trained is not None]
    lines = ['| from the trained model | extra wall-clock min | final test acc | gain over the trained '
             'model | gain over the span\'s SGD endpoint | seeds |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    if not found:
        return lines + ['| (no finished runs yet) | | | | | |']
    trained = [t for _, t in found]
    lines.append(f'| the trained model (SGD-E) | 0 | {_pm(trained)} | | | {len(trained)} |')
    names = list(dict.fromkeys(n for p, _ in found for n in p))
    for name in names:
        rows = [(p[name], t, next((v for k, v in p.items() if k.startswith('SGD continued') and
                                   'endpoint' in k), None)) for p, t in found if name in p]
        gain = [tl.final - t for tl, t, _ in rows]
        over_end = [tl.final - end.final for tl, _, end in rows if end is not None]
        within = (' (within noise)' if len(gain) > 1 and abs(statistics.mean(gain)) <=
                  (statistics.stdev(gain) or 0) else '')
        lines.append(f'| {name} | {_pm([tl.seconds / 60 for tl, _, _ in rows], ".1f")} | '
                     f'{_pm([tl.final for tl, _, _ in rows])} | {_pm(gain, signed=True)}{within} | '
                     f'{_pm(over_end, signed=True) if over_end and "endpoint" not in name else ""} | {len(rows)} |')
    return lines


# The paper's headline row (ResNet20 / CIFAR-10): 40-D P-BFGS from snapshots 0..80 (20 epochs,
# batch 1024) and SGD for 150 epochs, final test accuracy (%).
PAPER_HEADLINE = {'pbfgs': 91.72, 'sgd_full': 91.55}


def epoch_row(run, epoch):
    """The row of ``epoch`` (counted from 1) of a run, or None."""
    return next((r for r in run['epochs'] if r['epoch'] == epoch), None)


def minutes(rows):
    return sum(r['seconds'] for r in rows) / 60


def run_minutes(run):
    """A run's minutes: its epochs (``seconds``) and, for a subspace run, building its basis."""
    return (run['seconds'] + (run.get('basis') or {}).get('seconds', 0)) / 60


def gpu_headline_table(folder):
    """Rows of the headline table (bash run.sh gpu-headline) from ``folder``/sgd_s*/: SGD up to
    the last snapshot of the P-BFGS basis (epoch 80), P-BFGS from it, SGD to its last epoch
    (150).  Accuracy: ``test_acc`` / ``final_test_acc``, evaluated with the running BatchNorm
    statistics that training left (the reference's metric).  Minutes per run: SGD from its
    epochs' times (training and evaluation), P-BFGS from its run time and its basis's; the seeds
    ran side by side, so each run's minutes include the sharing of the device."""
    sgd_split, pbfgs, sgd_full = [], [], []
    t_split, t_pbfgs, t_full = [], [], []
    split = full = d = pbfgs_epochs = batch = None
    reached = []  # the SGD epochs reported in the first row
    for sub in sorted(glob.glob(os.path.join(folder, 'sgd_s*'))):
        path = os.path.join(sub, 'metrics_sgd.json')
        if not os.path.isfile(path):
            continue
        sgd = metrics.load(path)
        subspace = [r for r in finished_runs(sub) if r['method'] == 'pbfgs']
        for run in subspace:
            split = run['basis']['snapshots'][1] - 1  # the snapshots are one per epoch
            d, batch = run['basis']['n_components'], run['args']['batch_size']
            pbfgs_epochs = len(run['epochs'])
            pbfgs.append(run['final_test_acc'])
            t_pbfgs.append(run_minutes(run))
        at = split or len(sgd['epochs'])  # no P-BFGS yet: as far as SGD has got
        reached.append(at)
        row = epoch_row(sgd, at)
        if row is not None:
            sgd_split.append(row['test_acc'])
            t_split.append(minutes(sgd['epochs'][:at]))
        last = sgd['args']['epochs']
        if sgd.finished and last > at and len(sgd['epochs']) == last:
            full = last
            sgd_full.append(sgd['final_test_acc'])
            t_full.append(minutes(sgd['epochs'][at:]))
    mean = lambda values: f'{statistics.mean(values):.1f}' if values else '-'  # noqa: E731
    lines = ['| run | epochs | final test acc, ours (runs) | paper | minutes per run |',
             '| --- | ---: | ---: | ---: | ---: |']
    split_text = split or (max(reached) if reached else '-')
    lines.append(f'| SGD to epoch {split_text} (lr 0.1 still constant: snapshots 0..{split_text}) | '
                 f'{split_text} | {mean_std(sgd_split)} | - | {mean(t_split)} |')
    lines.append(f'| DLDR P-BFGS, {d or "-"}-D, batch {batch or "-"}, from snapshots 0..{split_text} | '
                 f'{pbfgs_epochs or "-"} | {mean_std(pbfgs)} | {PAPER_HEADLINE["pbfgs"]:.2f} | '
                 f'{mean(t_pbfgs)} |')
    lines.append(f'| SGD to epoch {full or "-"} (continued from epoch {split_text}; minutes of the '
                 f'continuation) | {full or "-"} | {mean_std(sgd_full)} | {PAPER_HEADLINE["sgd_full"]:.2f} | '
                 f'{mean(t_full)} |')
    return lines


METHOD_ORDER = {'sgd': 0, 'psgd': 1, 'pbfgs': 2}


def acc_text(value):
    """An accuracy as the tables print it; '-' where the run did not measure it."""
    return number_text(value, '.2f')


def mean_trials(run):
    """P-BFGS's line-search trials per step over a whole run (epochs weighted by their steps)."""
    rows = [pbfgs_counters(r) for r in run['epochs']]
    return PBFGS.summarise({k: sum(c[k] for c in rows) for k in rows[0]})['mean_trials']


def demo_table(folder):
    """Rows of the demo table (bash run.sh demo) from the runs in ``folder``: SGD, P-SGD, P-BFGS.
    ``final_test_acc`` and ``best_test_acc`` are measured with the BatchNorm running statistics
    that training left (the reference's metric); ``final_test_acc_bn`` with the statistics
    re-estimated on ``bn_update_batches`` training batches (the subspace runs' ``--bn-update``);
    epoch 1's test accuracy both ways; the share of the trajectory's variance that the basis's
    first component explains, and how many components explain 99 %; P-BFGS's line-search
    trials per step over the run; the run's wall-clock and CPU seconds (``seconds``, its last
    row's ``process_seconds``)."""
    runs = sorted(finished_runs(folder), key=lambda r: METHOD_ORDER.get(r['method'], len(METHOD_ORDER)))
    sgd = next((r['final_test_acc'] for r in runs if r['method'] == 'sgd'), None)
    lines = ['| method | dimension | epochs | final test acc | final test acc, statistics re-estimated '
             '(batches × size) | best test acc | final − SGD final (points) | epoch 1 test acc, running / '
             're-estimated | variance explained by the first component | components for 99 % of it | '
             'trials per step | seconds | CPU seconds |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for run in runs:
        name, first = metrics.METHOD_NAMES.get(run['method'], run['method']), run['epochs'][0]
        bn = run.get('final_test_acc_bn')
        bn_text = '-' if bn is None else f'{bn:.2f} ({run["bn_update_batches"]} × {run["args"]["batch_size"]})'
        gap = '' if run['method'] == 'sgd' or sgd is None else f'{run["final_test_acc"] - sgd:+.2f}'
        first_text = acc_text(first['test_acc']) + (f' / {acc_text(first["test_acc_bn"])}'
                                                    if first.get('test_acc_bn') is not None else '')
        ratios = (run.get('basis') or {}).get('explained_variance_ratio') or []
        cumulative = [sum(ratios[:k + 1]) for k in range(len(ratios))]
        variance = (f'{ratios[0]:.3f} | {next((k + 1 for k, c in enumerate(cumulative) if c >= 0.99), "-")}'
                    if ratios else ' | ')
        trials = f'{mean_trials(run):.2f}' if run['method'] == 'pbfgs' else ''
        cpu = run['epochs'][-1].get('process_seconds')
        lines.append(f'| {name} | {run.n_trained:,} | {len(run["epochs"])} | {acc_text(run["final_test_acc"])} | '
                     f'{bn_text} | {acc_text(run["best_test_acc"])} | {gap} | {first_text} | {variance} | '
                     f'{trials} | {run["seconds"]:.0f} | {"-" if cpu is None else f"{cpu:.0f}"} |')
    return lines


EVALUATE_LOG = re.compile(r'^evaluate_b(?P<batch>\d+)_n\d+(?:_s(?P<seed>\d+))?\.log$')
EVALUATE_LINE = re.compile(r': test loss \S+ acc +(?P<acc>[\d.]+)%.*\((?:BatchNorm running statistics|'
                           r'BatchNorm statistics re-estimated on (?P<n>\d+) training batch(?:es)?)\)\s*$')


def evaluations(folder, running=False):
    """{(batch size, N): test acc} of the ``-e`` logs in ``folder`` (``evaluate_b<B>_n<N>.log``,
    the stdout of ``train_pbfgs.py -e --batch-size B --bn-update N``): the saved model with its
    statistics re-estimated on N training batches of B, N as the run reports it; with
    ``running``, also N = 0: the running statistics (the reference's metric).  Logs of several
    data-order seeds (``..._s<seed>.log``) key by (batch size, N, seed)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, 'evaluate_b*_n*.log'))):
        m = EVALUATE_LOG.match(os.path.basename(path))
        if not m:
            continue
        for line in open(path, encoding='utf-8'):
            e = EVALUATE_LINE.search(line)
            if e and (running or e['n'] is not None):
                key = (int(m['batch']), int(e['n'] or 0))
                found[key + ((int(m['seed']),) if m['seed'] else ())] = float(e['acc'])
    return found


def bn_images_table(folder):
    """Rows of the ``--bn-update`` size table (bash run.sh pbfgs-batch): the batch-1024 P-BFGS
    model of seed 1's trajectory (``folder``/sgd_s1/pbfgs_b1024) evaluated with its statistics
    re-estimated on N training batches of 128, a row per data-order seed, a column per number of
    images (N × 128), the last column the running statistics (the reference's metric)."""
    found = evaluations(os.path.join(folder, 'sgd_s1', 'pbfgs_b1024'), running=True)
    found = {k: v for k, v in found.items() if len(k) == 3 and k[0] == 128}  # the recipe's batch
    images = sorted({b * n for b, n, _ in found if n})
    lines = ['| images | ' + ' | '.join(f'{i:,}' + (' (default)' * (i == flags.BN_UPDATE_IMAGES))
                                        for i in images) + ' | off (running statistics) |',
             '| --- |' + ' ---: |' * (len(images) + 1)]
    for seed in sorted({s for _, _, s in found}):
        by_images = {b * n: acc for (b, n, s), acc in found.items() if s == seed}
        cells = [acc_text(by_images.get(i)) for i in images + [0]]
        lines.append(f'| seed {seed} | ' + ' | '.join(cells) + ' |')
    return lines


def run_folders(folder):
    """``folder`` and its sub-folders that hold metrics files, in order."""
    return sorted({os.path.dirname(p) for p in glob.glob(os.path.join(folder, '**', 'metrics_*.json'),
                                                         recursive=True)})


def pbfgs_bn_table(folder):
    """Rows of the BatchNorm-statistics table (bash run.sh pbfgs-bn) from ``folder``: the SGD
    trajectory, then every P-BFGS run under ``folder`` by batch size (largest first), with its
    steps, the training accuracy of its last epoch, ``final_test_acc`` (the running BatchNorm
    statistics, the reference's metric) and the test accuracy of its saved model with the
    statistics re-estimated on N training batches of B, from the ``-e`` logs beside it
    (:func:`evaluations`)."""
    lines = ['| run | batch | epochs | steps | training acc, last epoch | test acc, running statistics | '
             'test acc, statistics re-estimated on N batches of B (`-e --bn-update N`) |',
             '| --- | ---: | ---: | ---: | ---: | ---: | --- |']
    runs = [r for sub in run_folders(folder) for r in finished_runs(sub)]
    for run in sorted(runs, key=lambda r: (METHOD_ORDER.get(r['method'], 3), -r['args']['batch_size'])):
        ep, batch = run['epochs'], run['args']['batch_size']
        if run['method'] == 'sgd':
            name, steps, reestimated = 'SGD (the trajectory)', '-', ''
        elif run['method'] == 'pbfgs':
            d, (start, end) = run.subspace_dim, run.snapshot_range
            name = f'P-BFGS, d = {d} from snapshots {start}..{end - 1}, from snapshot {run["args"].get("train_start", 0)}'
            steps = sum(r['steps'] for r in ep)
            found = evaluations(run["folder"])
            reestimated = '; '.join(
                f'B = {b}: ' + ', '.join(f'{"N = " * (i == 0)}{n}: {found[(b, n)]:.2f}'
                                         for i, n in enumerate(sorted(n for bb, n in found if bb == b)))
                for b in sorted({b for b, _ in found}))
        else:
            continue
        lines.append(f'| {name} | {batch} | {len(ep)} | {steps} | {ep[-1]["train_acc"]:.2f} | '
                     f'{acc_text(run["final_test_acc"])} | {reestimated or "-"} |')
    return lines


def torchrun_table(folder):
    """Rows of the one-process / torchrun table (bash run.sh torchrun), one per sub-folder of
    ``folder`` holding runs (``one``, ``two``, ``two_on_one``): the world size, whether the folder
    holds the whole sequence or only a subspace phase on another folder's trajectory, and each
    method's ``final_test_acc`` (the running BatchNorm statistics, averaged over the ranks before
    evaluation) and, for the subspace runs, ``final_test_acc_bn`` (re-estimated on
    ``bn_update_batches`` training batches)."""
    found = {}
    for sub in sorted(glob.glob(os.path.join(folder, '*', ''))):
        runs = {r['method']: r for r in finished_runs(sub)}
        if runs:
            found[os.path.basename(os.path.dirname(sub))] = runs
    first = {m: next((runs[m] for runs in found.values() if m in runs), None) for m in METHOD_ORDER}
    head = {'sgd': 'SGD', 'psgd': 'P-SGD', 'pbfgs': 'P-BFGS'}
    for m, run in first.items():
        if run is not None:
            head[m] += (f' ({len(run["epochs"])} epochs, batch {run["args"]["batch_size"]})' if m == 'sgd' else
                        f' (d = {run.subspace_dim}, {len(run["epochs"])} epochs, batch {run["args"]["batch_size"]})')
    lines = [f'| run | {head["sgd"]} | {head["psgd"]} | {head["psgd"].split(" (")[0]}, re-estimated | '
             f'{head["pbfgs"]} | {head["pbfgs"].split(" (")[0]}, re-estimated |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']

    def world(runs):
        n = max(r.get('world_size', 1) for r in runs.values())
        return '1 process' if n == 1 else f'{n} ranks'

    rows = []
    for name, runs in found.items():
        if 'sgd' in runs:
            label = f'{world(runs)}, whole sequence'
        else:
            basis = next(r['basis'] for r in runs.values() if r.get('basis'))
            origin = os.path.basename(os.path.normpath(basis.get('folder', '')))
            label = (f'{world(runs)}, subspace phase on the trajectory of {origin}'
                     + (f' ({world(found[origin])})' if origin in found else ''))
        cells = [acc_text(runs['sgd']['final_test_acc']) if 'sgd' in runs else '-']
        for m in ('psgd', 'pbfgs'):
            cells += ([acc_text(runs[m]['final_test_acc']), acc_text(runs[m].get('final_test_acc_bn'))]
                      if m in runs else ['-', '-'])
        rows.append(('sgd' not in runs, max(r.get('world_size', 1) for r in runs.values()),
                     f'| {label} | ' + ' | '.join(cells) + ' |'))
    return lines + [row for *_, row in sorted(rows)]


def kinds_row(run):
    """(the kinds table's row of a subspace run, its place in the table): the run's
    :attr:`metrics.Metrics.basis_text`, ordered by kind (:data:`metrics.KIND_NAMES`), then by
    start."""
    kinds = list(metrics.KIND_NAMES)
    start = (run.get('basis') or {}).get('start', run.snapshot_range[0])
    order = kinds.index(run.kind) if run.kind in kinds else len(kinds)
    return run.basis_text, (order, -1 if start == 'mean' else start)


def acc_pair(runs):
    """'74.00 / 74.40': the runs' final test accuracy with the running BatchNorm statistics, then
    re-estimated where every run measured it; mean ± std over several runs (seeds)."""
    bn = [r.get('final_test_acc_bn') for r in runs]
    return _pm([r['final_test_acc'] for r in runs]) + ('' if None in bn else f' / {_pm(bn)}')


def kinds_table(folder):
    """Rows of the subspace-kinds table (bash run.sh kinds) from every run under ``folder``: the
    SGD trajectory, then a row per subspace kind and start (:func:`kinds_row`) with a column per
    d.  A cell is :func:`acc_pair`: ``final_test_acc`` (the running statistics, the reference's
    metric) / ``final_test_acc_bn``; SGD's is in the column of all its parameters.  The last
    column is the row's threshold training dimension as sweep.py computes it
    (:func:`sweep.summarise`): the smallest d at which every run reaches 90 % of SGD's
    ``final_test_acc`` ('> D' where none of its d up to D does; '-' without an SGD run)."""
    runs = [r for sub in run_folders(folder) for r in finished_runs(sub)]
    sgd = next((r for r in runs if r['method'] == 'sgd'), None)
    rows, order = {}, {}
    for run in runs:
        if run['method'] != 'sgd':
            label, order[label] = kinds_row(run)
            rows.setdefault(label, {}).setdefault(run.subspace_dim, []).append(run)
    dims = sorted({d for by_d in rows.values() for d in by_d})
    goal, thresholds = f'{100 * sweep.TARGET:g} % of SGD\'s final acc', {}
    if sgd:
        target = sweep.TARGET * sgd['final_test_acc']
        goal += f' ({sweep.TARGET:g} × {sgd["final_test_acc"]:.2f} = {target:.2f})'
        thresholds = sweep.summarise([(label, d, r.seed, r['final_test_acc']) for label, by_d in rows.items()
                                      for d, found in by_d.items() for r in found], target)['thresholds']
    n = f'{sgd["n_parameters"]:,}' if sgd else 'n'
    lines = ['| subspace, start (final test acc: running statistics / re-estimated) | epochs | '
             + ''.join(f'{"d = " * (i == 0)}{d:,} | ' for i, d in enumerate(dims))
             + f'all {n} parameters (SGD) | smallest d with ≥ {goal} |',
             '| --- | ---: | ' + '---: | ' * len(dims) + '---: | ---: |']
    if sgd:
        cells = [str(len(sgd['epochs']))] + [''] * len(dims) + [acc_text(sgd['final_test_acc']), '']
        lines.append('| SGD, the trajectory | ' + ' | '.join(cells) + ' |')
    for label in sorted(rows, key=order.get):
        by_d = rows[label]
        threshold = ('-' if not sgd else f'> {max(by_d):,}' if thresholds[label] is None else
                     f'{thresholds[label]:,}')
        cells = ([', '.join(sorted({str(len(r['epochs'])) for found in by_d.values() for r in found}))]
                 + [acc_pair(by_d[d]) if d in by_d else '' for d in dims] + ['', threshold])
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return lines


# The runs of bash run.sh imagefolder, by sub-folder: the rows of its two tables, in order.
IMAGEFOLDER_RUNS = ('sgd', 'psgd', 'pbfgs_consecutive', 'finetune')
# (sub-folder, epoch) of the diagnosis table's rows, None: the run's last epoch.  P-BFGS from
# snapshot 0 after 1 epoch is the first epoch of the 2-epoch run (same seed, no schedule).
DIAGNOSIS_ROWS = (('sgd', None), ('pbfgs_consecutive', 1), ('pbfgs_consecutive', None),
                  ('pbfgs_same-batch', None), ('pbfgs_diag_from8', None), ('psgd_from0', None))


def imagefolder_label(run):
    """What a run of bash run.sh imagefolder is, said from its record: SGD's snapshots or the
    checkpoint it was fine-tuned from; a subspace run's method, d, the snapshots its basis used,
    its start, and batch and curvature pairs (P-BFGS) or lr (P-SGD)."""
    a = run['args']
    if run['method'] == 'sgd' and a.get('pretrained'):
        return f'SGD fine-tuning from `{os.path.basename(a["pretrained"])}`, lr {a["lr"]:g}'
    if run['method'] == 'sgd':
        n = a.get('snapshot_every')
        every = 'epoch' if not n else 'iteration' if n == 1 else f'{n} iterations'
        return f'SGD, a snapshot every {every}: 0..{len(run["snapshots"]) - 1} (the trajectory)'
    basis = run['basis']
    used = basis.get('used') or list(range(*run.snapshot_range))
    span = (f'{used[0]}..{used[-1]}' if len(used) < 3 or used[1] - used[0] == 1 else
            f'{used[0]}, {used[1]}, …, {used[-1]}')
    how = (f'batch {a["batch_size"]}, {a.get("curvature_pairs", "consecutive")} pairs'
           if run['method'] == 'pbfgs' else f'lr {a["lr"]:g}')
    return (f'{metrics.METHOD_NAMES[run["method"]]}, d = {run.subspace_dim} of snapshots {span}, '
            f'from snapshot {basis.get("start", used[0])}, {how}')


def imagefolder_runs(folder, subs):
    """[(run, :func:`imagefolder_label`)] of the finished runs in the sub-folders ``subs`` of
    ``folder``, in that order."""
    return [(run, imagefolder_label(run)) for sub in subs for run in finished_runs(os.path.join(folder, sub))]


def imagefolder_table(folder):
    """Rows of the ImageFolder table (bash run.sh imagefolder): the SGD trajectory, P-SGD and
    P-BFGS in the subspace of its snapshots, SGD fine-tuning from its last snapshot; each run's
    ``final_test_acc`` (top-1 with the running BatchNorm statistics, the reference's metric), the
    re-estimated ``final_test_acc_bn`` where measured, and its last epoch's top-5 (running
    statistics)."""
    lines = ['| run | epochs | top-1, running statistics | top-1, re-estimated | top-5 |',
             '| --- | ---: | ---: | ---: | ---: |']
    for run, label in imagefolder_runs(folder, IMAGEFOLDER_RUNS):
        lines.append(f'| {label} | {len(run["epochs"])} | {acc_text(run["final_test_acc"])} | '
                     f'{acc_text(run.get("final_test_acc_bn"))} | {acc_text(run["epochs"][-1].get("test_acc5"))} |')
    return lines


def number_text(value, fmt):
    """``value`` as ``fmt``; '-' where it is missing or NaN."""
    return '-' if value is None or value != value else f'{value:{fmt}}'


def imagefolder_diagnosis_table(folder):
    """Rows of the P-BFGS diagnosis on the ImageFolder trajectory (bash run.sh imagefolder), each
    run at the end of an epoch (:data:`DIAGNOSIS_ROWS`): test accuracy (running statistics, and
    re-estimated where measured), the training accuracy and loss (train mode, on the batches
    themselves), and for P-BFGS (:meth:`PBFGS.summarise` of :func:`pbfgs_counters`) the epoch's
    steps, trials per step, mean accepted step size α, the loss of an accepted step on its own
    mini-batch against the loss the next mini-batch finds before its step, the fraction of the
    gradient the subspace holds (``gradient_captured``) and the consistency of the subspace
    gradients over the epoch (``gradient_signal``: 1 when they agree, about 1/steps for pure
    noise)."""
    lines = ['| run | epochs | test acc, running statistics | test acc, re-estimated | '
             'train acc | train loss | steps | trials / step | mean accepted α | own-batch loss after the step / '
             'next batch\'s before | gradient in subspace | consistency of g̃ |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |']
    for sub, epoch in DIAGNOSIS_ROWS:
        for run, label in imagefolder_runs(folder, (sub,)):
            rows = run['epochs']
            if epoch is not None and epoch >= len(rows):
                continue  # the run is not longer than that: its last epoch is its own row
            trained = len(rows) if epoch is None else epoch
            row = rows[trained - 1]
            tested = ((run['final_test_acc'], run.get('final_test_acc_bn')) if row is rows[-1]
                      else (row['test_acc'], row.get('test_acc_bn')))
            cells = [str(trained), *map(acc_text, tested), acc_text(row.get('train_acc')),
                     number_text(row.get('train_loss'), '.3f')]
            if run['method'] == 'pbfgs':
                counters = pbfgs_counters(row)
                means = PBFGS.summarise(counters)
                cells += [str(counters['steps']), number_text(means['mean_trials'], '.2f'),
                          number_text(means['mean_step_size'], '.2f'),
                          f'{number_text(means["own_batch_loss_after_step"], ".3f")} / '
                          f'{number_text(means["loss_before_step"], ".3f")}',
                          number_text(means['gradient_captured'], '#.2g'),
                          number_text(row.get('gradient_signal'), '#.2g')]
            else:
                cells += [''] * 6
            lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return lines


def basis_bytes(run):
    """P's bytes in a run's ``--basis-dtype``: d × n entries, plus d float32 row scales for the
    scaled types (fp16, int8)."""
    dtype = BASIS_DTYPES[run['args'].get('basis_dtype') or 'float32']
    d, n = run.subspace_dim, run['n_parameters']
    return d * n * torch.empty((), dtype=dtype).element_size() + (4 * d if dtype in (torch.float16, torch.int8) else 0)


def basis_dtype_table(folder):
    """Rows of the basis-dtype table (bash run.sh basis-dtype): P-SGD and P-BFGS in one
    trajectory's subspace with P stored in each ``--basis-dtype`` (a sub-folder per type), one
    row per type: P's bytes (:func:`basis_bytes`) and each method's ``final_test_acc`` (the
    running statistics) / ``final_test_acc_bn``, with the difference from float32's in points."""
    runs = {}
    for sub in run_folders(folder):
        for run in finished_runs(sub):
            if run['method'] != 'sgd':
                runs[run['args'].get('basis_dtype') or 'float32', run['method']] = run
    methods = [m for m in ('psgd', 'pbfgs') if any(k[1] == m for k in runs)]
    header = ''.join(f' {metrics.METHOD_NAMES[m]} ({_epochs_batch(runs, m)}): final test acc, running / '
                     f're-estimated (− float32) |' for m in methods)
    lines = ['| `--basis-dtype` | P bytes |' + header, '| --- | ---: |' + ' ---: |' * len(methods)]
    for dtype in (t for t in BASIS_DTYPES if any(k[0] == t for k in runs)):
        cells = []
        for m in methods:
            run, base = runs.get((dtype, m)), runs.get(('float32', m))
            if run is None:
                cells.append('')
                continue
            pair = (run['final_test_acc'], run.get('final_test_acc_bn'))
            text = ' / '.join(acc_text(v) for v in pair)
            if base is not None and dtype != 'float32':
                diffs = [a - b if None not in (a, b) else None
                         for a, b in zip(pair, (base['final_test_acc'], base.get('final_test_acc_bn')))]
                text += ' (' + ' / '.join('-' if x is None else f'{x:+.2f}' for x in diffs) + ')'
            cells.append(text)
        size = next(basis_bytes(runs[dtype, m]) for m in methods if (dtype, m) in runs)
        lines.append(f'| {dtype} | {size:,} | ' + ' | '.join(cells) + ' |')
    return lines


def _epochs_batch(runs, method):
    """'4 epochs, batch 128' of the ``method`` runs (the first found)."""
    run = next(r for k, r in runs.items() if k[1] == method)
    return f'{len(run["epochs"])} epochs, batch {run["args"]["batch_size"]}'


TABLES = {'resnet8': resnet8_table, 'noise': noise_table, 'pbfgs-batch': pbfgs_batch_table,
          'vit': vit_table, 'budget': budget_table, 'improve': improve_table,
          'gpu-headline': gpu_headline_table, 'demo': demo_table, 'pbfgs-bn': pbfgs_bn_table,
          'torchrun': torchrun_table, 'bn-images': bn_images_table, 'kinds': kinds_table,
          'imagefolder': imagefolder_table, 'imagefolder-diagnosis': imagefolder_diagnosis_table,
          'basis-dtype': basis_dtype_table}
# table -> (the run.sh recipe that makes its runs, the folder the recipe writes them into)
RECIPES = {'resnet8': ('resnet8', 'runs/resnet8'), 'noise': ('noise', 'runs/noise'),
           'pbfgs-batch': ('pbfgs-batch', 'runs/resnet8'), 'vit': ('vit', 'runs/vit'),
           'budget': ('budget', 'runs/budget'), 'improve': ('budget', 'runs/budget'),
           'gpu-headline': ('gpu-headline', 'runs/gpu_headline'), 'demo': ('demo', 'runs/demo'),
           'pbfgs-bn': ('pbfgs-bn', 'runs/pbfgs_bn'), 'torchrun': ('torchrun', 'runs/torchrun'),
           'bn-images': ('pbfgs-batch', 'runs/resnet8'),
           'kinds': ('kinds', 'runs/kinds'), 'imagefolder': ('imagefolder', 'runs/imagefolder'),
           'imagefolder-diagnosis': ('imagefolder', 'runs/imagefolder'),
           'basis-dtype': ('basis-dtype', 'runs/basis_dtype')}

# ---------------------------------------------------------------------------------------------
# Provenance: the records of the docs' tables (docs/runs/<folder>/) and the tables between markers.
# ---------------------------------------------------------------------------------------------
RECORD_NAMES = ('label_noise.json', 'sweep.json')  # besides every metrics_*.json and -e log
MARKER = re.compile(r'^<!-- table: (?P<table>\S+) (?P<folder>\S+) -->\s*$')
MARKER_START = '<!-- table:'
MARKER_END = '<!-- /table -->'
ROOT = os.path.dirname(os.path.abspath(__file__))


def is_record(name):
    """Whether a file of a recipe's folder is a record the docs keep (not a checkpoint): a metrics
    file, ``label_noise.json`` / ``sweep.json``, or the stdout of an ``-e`` evaluation
    (``evaluate_b<B>_n<N>.log``, :func:`evaluations`)."""
    return ((name.startswith('metrics_') and name.endswith('.json')) or name in RECORD_NAMES
            or EVALUATE_LOG.match(name) is not None)


def record_paths(folder):
    """The records under ``folder``, as paths relative to it, in order (none if it is absent)."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.relpath(os.path.join(top, n), folder) for n in sorted(files) if is_record(n)]
    return found


def has_metrics(folder):
    """Whether ``folder`` holds at least one metrics file, at any depth."""
    return any(os.path.basename(p).startswith('metrics_') for p in record_paths(folder))


def collect(runs_dir, dest):
    """Copy the records of ``runs_dir`` (a folder a run.sh recipe wrote) into ``dest``, keeping
    their relative paths; returns those paths.  Existing records of the same path are replaced;
    others in ``dest`` are left as they are."""
    if not os.path.isdir(runs_dir):
        raise UserError(f'no such folder: {runs_dir}')
    src, out = os.path.realpath(runs_dir), os.path.realpath(dest)
    paths = [p for p in record_paths(runs_dir)  # never the destination itself, if it lies inside
             if not os.path.realpath(os.path.join(runs_dir, p)).startswith(out + os.sep)]
    if src == out:
        raise UserError(f'{runs_dir}: the records are already there (give another destination)')
    if not paths:
        raise UserError(f'no records under {runs_dir} (metrics_*.json, {", ".join(RECORD_NAMES)}): '
                              f'has its recipe run?')
    for rel in paths:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(runs_dir, rel), target)
    return paths


def table_text(table, folder, shown=None):
    """The generated text of a marked table: the table from the records under ``folder`` (shown as
    ``shown``), or a placeholder line when there are none."""
    shown = shown or folder
    recipe, runs = RECIPES[table]
    note = f'*Generated by `python tables.py docs` from the records in `{shown}`.*'
    if not has_metrics(folder):
        return [f'*No records yet: `{shown}` holds no metrics files, so this table is empty. Make them '
                f'with `bash run.sh {recipe}`, then `python tables.py collect {runs} {shown}` and '
                f'`python tables.py docs`.*']
    return [note, ''] + TABLES[table](folder)


def doc_files(root):
    """README.md and docs/*.md under ``root``: the files whose marked tables are generated."""
    return [p for p in [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs', '*.md')))
            if os.path.isfile(p)]


def marked_tables(path):
    """(the lines of a doc file, [(table, folder, index of the first line after its marker,
    index of its end marker)])."""
    lines = open(path, encoding='utf-8').read().split('\n')
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(MARKER_START):
            m = MARKER.match(line)
            if not m:
                raise UserError(f'{path}:{i + 1}: a table marker reads '
                                      f'"<!-- table: NAME FOLDER -->", not {line.strip()!r}')
            if m['table'] not in TABLES:
                raise UserError(f'{path}:{i + 1}: no table {m["table"]!r} (tables: {", ".join(TABLES)})')
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == MARKER_END
                        or lines[j].startswith(MARKER_START)), None)
            if end is None or lines[end].startswith(MARKER_START):
                raise UserError(f'{path}:{i + 1}: table {m["table"]} has no {MARKER_END} line')
            found.append((m['table'], m['folder'], i + 1, end))
            i = end
        i += 1
    return lines, found


def render_docs(root):
    """{path: (old text, new text, [(table, folder) that differ])} of every doc file under ``root``
    with marked tables."""
    out = {}
    for path in doc_files(root):
        lines, found = marked_tables(path)
        if not found:
            continue
        new, last, differ = [], 0, []
        for table, folder, start, end in found:
            try:
                body = table_text(table, os.path.join(root, folder), shown=folder)
            except (KeyError, IndexError, TypeError, ValueError, StopIteration, ZeroDivisionError) as e:
                raise UserError(f'{os.path.relpath(path, root)}: table {table}: the records in '
                                      f'{folder} do not make it ({type(e).__name__}: {e})')
            block = [''] + body + ['']
            if lines[start:end] != block:
                differ.append((table, folder))
            new += lines[last:start] + block
            last = end
        new += lines[last:]
        out[path] = ('\n'.join(lines), '\n'.join(new), differ)
    return out


def docs(root=ROOT, check=False):
    """Regenerate the marked tables of README.md and docs/*.md under ``root`` (``check``: only
    compare); returns the number of tables that differ(ed)."""
    n = 0
    for path, (old, new, differ) in render_docs(root).items():
        rel = os.path.relpath(path, root)
        for table, folder in differ:
            n += 1
            if check:
                print(f'error: {rel}: table {table} differs from its records in {folder} '
                      f'(python tables.py docs rewrites it)', file=sys.stderr)
            else:
                print(f'{rel}: table {table} rewritten from {folder}')
        if not check and new != old:
            utils.atomic_write(path, lambda f: f.write(new.encode()))
    for path in doc_files(root):
        for table, folder, _, _ in marked_tables(path)[1]:
            if not has_metrics(os.path.join(root, folder)):
                print(f'note: {os.path.relpath(path, root)}: table {table} has no records in {folder} '
                      f'(bash run.sh {RECIPES[table][0]}, then python tables.py collect '
                      f'{RECIPES[table][1]} {folder})', file=sys.stderr)
    return n


def parse_args(argv=None):
    p = flags.Parser(description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('table', choices=TABLES, help='which table')
    p.add_argument('folder', help='the folder the run.sh recipe wrote (runs/resnet8, runs/noise)')
    return p.parse_args(argv)


def parse_collect(argv):
    p = flags.Parser(prog='tables.py collect', description='copy the records (metrics_*.json, '
                     'label_noise.json, sweep.json, evaluate_b<B>_n<N>.log; no checkpoint) of a '
                     'recipe\'s folder into '
                     'docs/runs/<folder>/, keeping their relative paths')
    p.add_argument('runs_dir', help='the folder the run.sh recipe wrote, e.g. runs/budget')
    p.add_argument('dest', help='the records folder, e.g. docs/runs/budget')
    return p.parse_args(argv)


def parse_docs(argv):
    p = flags.Parser(prog='tables.py docs', description='regenerate the tables between '
                     '"<!-- table: NAME FOLDER -->" and "<!-- /table -->" in README.md and docs/*.md '
                     'from the records in FOLDER')
    p.add_argument('--check', action='store_true',
                   help='rewrite nothing: exit 1, one error line per table, where the text differs')
    p.add_argument('--root', default=ROOT, help='the repository (default: the one of tables.py)')
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['collect']:
        args = parse_collect(argv[1:])
        paths = collect(args.runs_dir, args.dest)
        unfinished = [p for p in paths if os.path.basename(p).startswith('metrics_')
                      and not metrics.load(os.path.join(args.dest, p)).finished]
        print(f'{len(paths)} records copied from {args.runs_dir} to {args.dest}')
        if unfinished:
            print(f'note: {len(unfinished)} of them not finished (the tables leave them out): '
                  f'{", ".join(unfinished)}', file=sys.stderr)
        return
    if argv[:1] == ['docs']:
        args = parse_docs(argv[1:])
        differ = docs(args.root, check=args.check)
        if args.check and differ:
            sys.exit(1)
        if not differ:
            print('every marked table matches its records')
        return
    args = parse_args(argv)
    recipe, runs = RECIPES[args.table]
    if not os.path.isdir(args.folder):
        raise UserError(f'no such folder: {args.folder} (bash run.sh {recipe} writes the runs of '
                              f'this table into {runs})')
    if not has_metrics(args.folder):
        print(f'note: no metrics files under {args.folder} (bash run.sh {recipe} writes them into '
              f'{runs})', file=sys.stderr)
    text = '\n'.join(TABLES[args.table](args.folder)) + '\n'
    print(text, end='')
    path = os.path.join(args.folder, f'{args.table}.md')
    utils.atomic_write(path, lambda f: f.write(text.encode()))
    print(f'table: {path}')


if __name__ == '__main__':
    distributed.run_cli(main)
