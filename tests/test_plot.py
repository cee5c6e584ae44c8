"""plot.py: every figure family writes a valid PNG from hand-made run files (metrics JSON and
resnet8 state_dicts written directly, no training); the trajectory projection matches a numpy
SVD; the d-sweep grouping; one-line errors with exit status 2."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import models
import plot
import utils
from helpers import ROOT, in_process

ARGS = {'arch': 'resnet8', 'datasets': 'synthetic', 'corrupt': 0.0, 'randomseed': 1,
        'smalldatasets': 0.2, 'params_start': 0, 'params_end': 6, 'n_components': 3}


def rows(n, acc0=20.0, with_split_times=True, null_loss_at=None):
    out = []
    for e in range(1, n + 1):
        row = {'epoch': e, 'lr': 0.1, 'train_loss': 2.0 / e, 'train_acc': acc0 + 5 * e,
               'test_loss': 2.2 / e, 'test_acc': acc0 + 4 * e, 'seconds': 3.0}
        if with_split_times:
            row.update(train_seconds=2.5, eval_seconds=0.5)
        if e == null_loss_at:
            row['train_loss'] = None
        out.append(row)
    return out


def write_run(folder, method, args=None, epochs=4, basis_extra=None, tag=None, final=None, **kw):
    """Write metrics_<tag>.json of a run like the training scripts do."""
    a = {**ARGS, **(args or {})}
    rs = rows(epochs, **kw)
    data = {'args': a, 'method': method, 'epochs': rs,
            'final_test_acc': rs[-1]['test_acc'] if final is None else final,
            'best_test_acc': max(r['test_acc'] for r in rs), 'n_parameters': 75290}
    if method != 'sgd':
        d = a['n_components']
        ratio = (0.6 ** np.arange(1, d + 1)) / (0.6 ** np.arange(1, d + 2)).sum()
        data['basis'] = {'snapshots': [a['params_start'], a['params_end']], 'folder': str(folder),
                         'n_components': d, 'explained_variance_ratio': ratio.tolist(),
                         'cumulative_explained_variance': np.cumsum(ratio).tolist(),
                         'singular_values': list(range(d, 0, -1)), 'seconds': 0.1,
                         **(basis_extra or {})}
        tag = tag or f'{method}_d{d}_{a["params_start"]}-{a["params_end"]}'
    utils.save_json(data, os.path.join(folder, f'metrics_{tag or "sgd"}.json'))
    return tag


def perturbed(model, gen, directions, coeffs):
    """state_dict of ``model`` with trainable parameters moved by sum_k coeffs[k] * directions[k]."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for (name, _), *dirs in zip(model.named_parameters(), *directions):
        state[name] += sum(c * d for c, d in zip(coeffs, dirs)) + 1e-3 * torch.randn(
            state[name].shape, generator=gen)
    return state


@pytest.fixture(scope='module')
def rundir(tmp_path_factory):
    """SGD snapshots 0..7 (basis range 0..5), SGD metrics, P-SGD / P-BFGS / random-basis runs
    with their final models; snapshot 2 has the reference's ``module.`` prefix."""
    folder = tmp_path_factory.mktemp('run')
    torch.manual_seed(0)
    model = models.get_model('resnet8', num_classes=10, in_channels=3)
    gen = torch.Generator().manual_seed(1)
    directions = [[torch.randn(p.shape, generator=gen) * 0.05 for p in model.parameters()]
                  for _ in range(2)]
    for i in range(8):
        state = perturbed(model, gen, directions, (float(i), np.sin(i)))
        if i == 2:
            state = {f'module.{k}': v for k, v in state.items()}
        torch.save(state, folder / f'{i}.pt')
    write_run(folder, 'sgd', {'n_components': None}, epochs=7, null_loss_at=3)
    for method, coeffs, extra in (('psgd', (6.0, -1.0), {}), ('pbfgs', (5.0, 2.0), None)):
        tag = write_run(folder, method, acc0=25, basis_extra=extra, with_split_times=extra is not None)
        torch.save(perturbed(model, gen, directions, coeffs), folder / f'{tag}.pt')
    write_run(folder, 'psgd', {'subspace_seed': 3}, basis_extra={'kind': 'random', 'seed': 3},
              tag='psgd_random_s3_d3_0-6')  # no final model: it is just not drawn
    return folder


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    """Label-noise folders (0, 0.2, 0.4) and a d sweep with three seeds per random-basis point."""
    base = tmp_path_factory.mktemp('sweep')
    noise_dirs = []
    for c in (0.0, 0.2, 0.4):
        folder = base / f'noise{c}'
        folder.mkdir()
        write_run(folder, 'sgd', {'corrupt': c}, acc0=40 - 50 * c)
        write_run(folder, 'pbfgs', {'corrupt': c}, acc0=45 - 30 * c)
        noise_dirs.append(str(folder))
    dims = base / 'dims'
    dims.mkdir()
    write_run(dims, 'sgd', final=80.0)
    for d in (2, 5, 10, 40):
        write_run(dims, 'psgd', {'n_components': d, 'params_end': 81}, final=50.0 + d)
        for s in (1, 2, 3):
            write_run(dims, 'psgd', {'n_components': d, 'params_end': 81, 'subspace_seed': s},
                      basis_extra={'kind': 'random', 'seed': s}, final=10.0 + d + s,
                      tag=f'psgd_random_s{s}_d{d}_0-81')
    for d in (2, 5):  # TWA in the last d snapshots: a range per d
        write_run(dims, 'psgd', {'n_components': d, 'params_start': 81 - d, 'params_end': 81},
                  basis_extra={'kind': 'twa', 'start': 'mean'}, final=70.0 + d, tag=f'psgd_twa_d{d}_{81 - d}-81')
    return noise_dirs, str(dims)


def check_png(path, size=None):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == 'PNG' and im.mode in ('RGB', 'RGBA')
        assert im.size[0] > 100 and im.size[1] > 100
    assert os.path.getsize(path) > 1000


@pytest.mark.parametrize('family', ['curves', 'time', 'spectrum', 'trajectory'])
def test_single_folder_figures(rundir, tmp_path, capsys, family):
    plot.main([family, str(rundir), '--out', str(tmp_path), '--dpi', '60'])
    path = os.path.join(tmp_path, f'{family}.png')
    assert capsys.readouterr().out.split() == [path]
    check_png(path)


def test_noise_and_dims_figures(sweep, tmp_path, capsys):
    noise_dirs, dims = sweep
    plot.main(['noise', *noise_dirs, '--out', str(tmp_path), '--dpi', '60'])
    plot.main(['dims', dims, '--out', str(tmp_path), '--dpi', '60', '--spread', 'sem'])
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / 'noise.png'), str(tmp_path / 'dims.png')]
    for path in out:
        check_png(path)


def test_all_writes_what_applies_and_skips_the_rest(rundir, tmp_path, capsys):
    plot.main(['all', str(rundir), '--out', str(tmp_path / 'figs'), '--dpi', '50', '--log'])
    lines = capsys.readouterr().out.splitlines()
    written = [f'{f}.png' for f in ('curves', 'time', 'spectrum', 'trajectory')]
    assert lines[:4] == [str(tmp_path / 'figs' / name) for name in written]
    assert [line.split(':')[0] for line in lines[4:]] == ['skipped noise', 'skipped dims']
    assert sorted(os.listdir(tmp_path / 'figs')) == sorted(written)


def test_projection_matches_numpy_svd(rundir):
    model = models.get_model('resnet8', num_classes=10, in_channels=3)
    snaps = utils.open_trajectory(str(rundir), 0, 6, model)
    ends = [utils.FlatSnapshot(str(rundir / f'{tag}.pt'), model) for tag in ('psgd_d3_0-6', '6')]
    x = np.stack([s[0:len(s)].double().numpy() for s in snaps])
    e = np.stack([s[0:len(s)].double().numpy() for s in ends])
    mean = x.mean(axis=0)
    u, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    expected, expected_ends = u[:, :2] * sv[:2], (e - mean) @ vt[:2].T
    for chunk in (1 << 20, 1000):  # one pass and many chunks
        coords, end_coords, frac = plot.project_trajectory(snaps, ends, chunk=chunk)
        signs = np.sign(np.sum(coords * expected, axis=0))
        np.testing.assert_allclose(coords * signs, expected, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(end_coords * signs, expected_ends, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(frac, sv[:2] ** 2 / (sv ** 2).sum(), rtol=1e-8)
        assert (coords[-1] >= coords[0]).all()  # the documented sign convention
    plain, _, _ = plot.project_trajectory(list(x))  # arrays work as well as snapshot files
    np.testing.assert_allclose(plain, coords, rtol=1e-6, atol=1e-8)


def test_dims_grouping(sweep):
    runs = plot.load_runs(sweep[1])
    groups = plot.dims_groups(runs)
    dldr, random = 'P-SGD (DLDR, snapshots 0..80, from snapshot 0)', 'P-SGD (random, from snapshot 0)'
    twa = 'P-SGD (TWA, the last d snapshots up to 80, from their mean)'  # one line, not a point per d
    assert set(groups) == {dldr, random, twa}
    assert groups[twa] == [(d, 70.0 + d, 70.0 + d, 70.0 + d, 1) for d in (2, 5)]
    assert groups[dldr] == [
        (d, 50.0 + d, 50.0 + d, 50.0 + d, 1) for d in (2, 5, 10, 40)]
    # random basis: seeds 1, 2, 3 give 11+d, 12+d, 13+d
    assert groups[random] == [
        (d, 12.0 + d, 11.0 + d, 13.0 + d, 3) for d in (2, 5, 10, 40)]
    sem = plot.dims_groups(runs, 'sem')[random]
    for (d, mean, low, high, n) in sem:
        assert (mean, n) == (12.0 + d, 3)
        np.testing.assert_allclose([mean - low, high - mean], [1 / np.sqrt(3)] * 2)


def test_labels_come_from_the_json(rundir):
    labels = [plot.run_label(r) for r in plot.load_runs(str(rundir))]
    assert labels == ['SGD', 'P-BFGS d=3, snapshots 0..5', 'P-SGD d=3, snapshots 0..5',
                      'P-SGD random d=3, snapshots 0..5, seed 3']


def test_corrupt_json_is_named(tmp_path):
    (tmp_path / 'metrics_sgd.json').write_text('{"args": {')
    with pytest.raises(utils.UserError, match='corrupt metrics file .*metrics_sgd.json'):
        plot.load_runs(str(tmp_path))
    with pytest.raises(plot.NoData):  # a figure with nothing to draw is refused, not empty
        write_run(tmp_path, 'sgd')
        plot.main(['spectrum', str(tmp_path)])


@pytest.mark.parametrize('case', ['empty', 'missing'])
def test_bad_folder_is_one_error_line(tmp_path, case, capsys):
    folder = tmp_path / 'nothing'
    if case == 'empty':
        folder.mkdir()
        (folder / '0.pt').write_bytes(b'')
    if case == 'missing':  # a real process: its exit status and streams
        proc = subprocess.run([sys.executable, os.path.join(ROOT, 'plot.py'), 'curves', str(folder)],
                              capture_output=True, text=True, timeout=120)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:  # main(argv) in-process, under distributed.run_cli as plot.py's __main__
        code, out, err = in_process(capsys, 'plot', 'curves', folder)
    assert code == 2
    assert err.startswith('error: ') and len(err.strip().splitlines()) == 1
    assert 'Traceback' not in err and out == ''
    assert str(folder) in err
