"""tables.py: the paper's tables from metrics files, checked against statistics computed here."""
import json
import statistics

import pytest

import tables


def write_run(path, method, final, *, args=None, basis=None, n_parameters=75290, epochs=None,
              finished=True, best=None, extra=None):
    rows = epochs or [{'epoch': 1, 'train_acc': 50.0, 'test_acc': final}]
    data = {'args': {'batch_size': 128, **(args or {})}, 'method': method, 'epochs': rows,
            'final_test_acc': final, 'best_test_acc': best if best is not None else final,
            'n_parameters': n_parameters, **(extra or {})}
    if basis:
        data['basis'] = basis
    if finished:
        data['seconds'] = 120.0
        data['finished'] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_resnet8_table_means_stds_and_the_papers_column(tmp_path):
    sgd, dldr = {1: 84.1, 2: 83.5}, {1: 85.0, 2: 84.2}
    for s in (1, 2):
        write_run(tmp_path / f'sgd_s{s}/metrics_sgd.json', 'sgd', sgd[s])
        write_run(tmp_path / f'sgd_s{s}/metrics_psgd_d15_0-31.json', 'psgd', dldr[s],
                  basis={'kind': 'dldr', 'n_components': 15})
    write_run(tmp_path / 'sgd_s1/metrics_psgd_random_s1_d7529_0-31.json', 'psgd', 40.0,
              basis={'kind': 'random', 'n_components': 7529})
    # an unfinished run is not counted
    write_run(tmp_path / 'sgd_s1/metrics_psgd_redrawn_s1_d7529_0-31.json', 'psgd', 10.0,
              basis={'kind': 'redrawn', 'n_components': 7529}, finished=False)
    lines = tables.resnet8_table(str(tmp_path))
    row = {line.split(' | ')[0].lstrip('| '): line for line in lines[2:]}
    expected = f'{statistics.mean(sgd.values()):.2f} ± {statistics.stdev(sgd.values()):.2f} (2)'
    assert expected == '83.80 ± 0.42 (2)' and expected in row['SGD'] and '83.84 ± 0.34' in row['SGD']
    assert '84.60 ± 0.57 (2)' in row['DLDR P-SGD'] and '| 15 |' in row['DLDR P-SGD']
    assert '40.00 (1)' in row['random subspace, fixed (Li et al. 2018)'] and '7,529' in \
        row['random subspace, fixed (Li et al. 2018)']
    assert row['random bases re-drawn every step (Gressmann et al. 2020)'].count(' - ') >= 4
    assert '70.26 ± 0.02' in row['random bases re-drawn every step (Gressmann et al. 2020)']


def test_noise_table_best_final_and_subspace_runs(tmp_path):
    rows = [{'epoch': e, 'train_acc': t, 'test_acc': a} for e, t, a in [(1, 40, 60.0), (2, 70, 55.5)]]
    write_run(tmp_path / 'c0.2/metrics_sgd.json', 'sgd', 55.5, args={'corrupt': 0.2}, epochs=rows, best=60.0)
    write_run(tmp_path / 'c0.2/metrics_pbfgs_d15_0-16.json', 'pbfgs', 61.0, args={'corrupt': 0.2},
              basis={'kind': 'dldr', 'n_components': 15, 'snapshots': [0, 16]})
    write_run(tmp_path / 'c0.2/metrics_psgd_d15_0-16.json', 'psgd', 62.5, args={'corrupt': 0.2},
              basis={'kind': 'dldr', 'n_components': 15, 'snapshots': [0, 16]})
    lines = tables.noise_table(str(tmp_path))
    # a run older than --noise-model: the always-wrong model; no n_train here, so no share
    assert lines[2] == '| 20% | wrong | - | 60.00 (1) | 55.50 (1) | 61.00 (1) | 62.50 (1) | 70.00 (1) | 0..15 |'
    sgd = json.loads((tmp_path / 'c0.2/metrics_sgd.json').read_text())
    sgd.update(n_train=20_000, n_corrupted=4_000)
    (tmp_path / 'c0.2/metrics_sgd.json').write_text(json.dumps(sgd))
    assert tables.noise_table(str(tmp_path))[2].startswith('| 20% | wrong | 20.0% | 60.00 (1) |')
    sgd['args']['noise_model'], sgd['wrong_label_fraction'] = 'uniform', 0.1794
    (tmp_path / 'c0.2/metrics_sgd.json').write_text(json.dumps(sgd))
    assert tables.noise_table(str(tmp_path))[2].startswith('| 20% | uniform | 17.9% | 60.00 (1) |')


def test_gpu_headline_table_splits_sgd_at_the_basis_and_continues(tmp_path):
    """SGD accuracy at the last snapshot of the P-BFGS basis and at the end of the continued run,
    P-BFGS beside the paper's 91.72 / 91.55, minutes per phase from the epoch times."""
    def sgd_rows(n, acc):
        return [{'epoch': e, 'train_acc': 50.0, 'test_acc': acc(e), 'seconds': 6.0}
                for e in range(1, n + 1)]
    basis = {'kind': 'dldr', 'n_components': 40, 'snapshots': [0, 81], 'seconds': 30.0}
    for s, shift in ((1, 0.0), (2, 1.0)):
        acc = {80: 85.0 + shift, 150: 91.0 + shift}
        write_run(tmp_path / f'sgd_s{s}/metrics_sgd.json', 'sgd', 91.0 + shift, args={'epochs': 150},
                  epochs=sgd_rows(150, lambda e: acc.get(e, 10.0)))
        write_run(tmp_path / f'sgd_s{s}/metrics_pbfgs_d40_0-81.json', 'pbfgs', 91.5 + shift,
                  args={'batch_size': 1024}, basis=basis,
                  epochs=[{'epoch': e, 'test_acc': 90.0} for e in range(1, 21)])
    lines = tables.gpu_headline_table(str(tmp_path))
    assert lines[2] == ('| SGD to epoch 80 (lr 0.1 still constant: snapshots 0..80) | 80 | '
                        '85.50 ± 0.71 (2) | - | 8.0 |')
    # P-BFGS: 120 s of training + 30 s of basis
    assert lines[3] == ('| DLDR P-BFGS, 40-D, batch 1024, from snapshots 0..80 | 20 | '
                        '92.00 ± 0.71 (2) | 91.72 | 2.5 |')
    assert lines[4].startswith('| SGD to epoch 150 (continued from epoch 80') and \
        lines[4].endswith('| 150 | 91.50 ± 0.71 (2) | 91.55 | 7.0 |')
    # before the continuation: SGD has run 80 epochs of --epochs 80, no P-BFGS yet
    for s in (1, 2):
        write_run(tmp_path / f'sgd_s{s}/metrics_sgd.json', 'sgd', 85.0, args={'epochs': 80},
                  epochs=sgd_rows(80, lambda e: 85.0))
        (tmp_path / f'sgd_s{s}/metrics_pbfgs_d40_0-81.json').unlink()
    lines = tables.gpu_headline_table(str(tmp_path))
    assert '| 80 | 85.00 ± 0.00 (2) | - | 8.0 |' in lines[2]
    assert '| - | - | 91.72 | - |' in lines[3] and '| - | - | 91.55 | - |' in lines[4]


def test_pbfgs_batch_table_weights_epochs_by_their_steps(tmp_path):
    epochs = [{'epoch': 1, 'test_acc': 70.0, 'steps': 10, 'failed_searches': 1, 'nonfinite_skips': 0,
               'curvature_skips': 2, 'mean_step_size': 0.5, 'mean_trials': 2.0,
               'own_batch_loss_after_step': 1.0, 'loss_before_step': 1.2},
              {'epoch': 2, 'test_acc': 72.0, 'steps': 30, 'failed_searches': 0, 'nonfinite_skips': 0,
               'curvature_skips': 1, 'mean_step_size': 1.0, 'mean_trials': 1.0,
               'own_batch_loss_after_step': 0.8, 'loss_before_step': 0.9, 'gradient_captured': 0.002,
               'gradient_signal': 0.21}]
    write_run(tmp_path / 'sgd_s1/pbfgs_b256/metrics_pbfgs_d15_0-31.json', 'pbfgs', 72.0,
              args={'batch_size': 256, 'curvature_pairs': 'consecutive'}, epochs=epochs,
              basis={'kind': 'dldr', 'n_components': 15})
    line = tables.pbfgs_batch_table(str(tmp_path))[2]
    # trials per step (2*10 + 1*30)/40; accepted step (0.5*9 + 1.0*30)/39; the last epoch's losses
    assert line.startswith('| 256 | consecutive | 15 | 2 | 40 | 72.00 | 1.25 | 1 | 3 | ')
    # the gradient captured over the run: epoch 1 did not record it, so the sum is NaN ('-')
    assert f'| {(0.5 * 9 + 30) / 39:.3g} | 0.800 | 0.900 | - | 0.21 |' in line


def pbfgs_epoch(epoch, steps, trials, test_acc, train_acc=50.0, test_acc_bn=None):
    row = {'epoch': epoch, 'train_acc': train_acc, 'test_acc': test_acc, 'steps': steps, 'trials': trials,
           'mean_trials': trials / steps, 'failed_searches': 0, 'nonfinite_skips': 0, 'mean_step_size': 1.0}
    return row if test_acc_bn is None else {**row, 'test_acc_bn': test_acc_bn}


def test_demo_table_both_statistics_the_gap_to_sgd_and_the_trials(tmp_path):
    """SGD, P-SGD, P-BFGS in that order (whatever the files' names); final and best accuracy with
    the running statistics, the re-estimated one with its batches, epoch 1 both ways, the
    basis's explained variance, P-BFGS's trials per step over the run."""
    basis = {'kind': 'dldr', 'n_components': 10, 'snapshots': [0, 11],
             'explained_variance_ratio': [0.8, 0.12, 0.06, 0.015, 0.005]}
    write_run(tmp_path / 'metrics_sgd.json', 'sgd', 88.0, best=89.0, n_parameters=269_722,
              epochs=[{'epoch': 1, 'test_acc': 50.0}, {'epoch': 2, 'test_acc': 88.0, 'process_seconds': 61.4}])
    write_run(tmp_path / 'metrics_psgd_d10_0-11.json', 'psgd', 87.5, basis=basis,
              epochs=[{'epoch': 1, 'test_acc': 60.0, 'test_acc_bn': 70.0}, {'epoch': 2, 'test_acc': 87.5}],
              extra={'final_test_acc_bn': 88.25, 'bn_update_batches': 16})
    write_run(tmp_path / 'metrics_pbfgs_d10_0-11.json', 'pbfgs', 89.0, args={'batch_size': 256}, basis=basis,
              epochs=[pbfgs_epoch(1, 20, 40, 24.0, test_acc_bn=85.95), pbfgs_epoch(2, 20, 30, 89.0)],
              extra={'final_test_acc_bn': 89.5, 'bn_update_batches': 8})
    lines = tables.demo_table(str(tmp_path))
    assert len(lines) == 5 and lines[0].startswith('| method | dimension | epochs | final test acc |')
    # seconds: the run's (120); CPU seconds: its last row's process_seconds (none recorded: -)
    assert lines[2] == '| SGD | 269,722 | 2 | 88.00 | - | 89.00 |  | 50.00 |  |  |  | 120 | 61 |'
    # 87.5 - 88.0; the first component explains 0.8, four reach 0.8 + 0.12 + 0.06 + 0.015 = 0.995
    assert lines[3] == ('| P-SGD | 10 | 2 | 87.50 | 88.25 (16 × 128) | 87.50 | -0.50 | 60.00 / 70.00 | 0.800 | 4 '
                        '|  | 120 | - |')
    # trials per step (40 + 30) / (20 + 20) = 1.75
    assert lines[4] == ('| P-BFGS | 10 | 2 | 89.00 | 89.50 (8 × 256) | 89.00 | +1.00 | 24.00 / 85.95 | 0.800 | 4 '
                        '| 1.75 | 120 | - |')


def evaluate_log(path, running, reestimated=None, batches=None, note=''):
    """The stdout of ``train_pbfgs.py -e`` as subspace_run.py prints it."""
    text = note + f'runs/x/pbfgs_d8_0-9.pt: test loss 0.5000 acc {running:.2f}% top5 99.00% (BatchNorm running statistics)\n'
    if reestimated is not None:
        text += (f'runs/x/pbfgs_d8_0-9.pt: test loss 0.3000 acc {reestimated:.2f}% top5 99.50% (BatchNorm '
                 f'statistics re-estimated on {batches} training batches)\n')
    path.write_text(text)


def test_pbfgs_bn_table_running_statistics_and_the_evaluations_beside_each_run(tmp_path):
    """SGD first, then P-BFGS by batch size, largest first; steps summed over the epochs; the
    re-estimated accuracies from the -e logs in the run's own folder, N as the run reports it."""
    basis = {'kind': 'dldr', 'n_components': 8, 'snapshots': [0, 9]}
    write_run(tmp_path / 'metrics_sgd.json', 'sgd', 90.85, n_parameters=269_722,
              epochs=[{'epoch': 1, 'train_acc': 60.0, 'test_acc': 70.0}, {'epoch': 2, 'train_acc': 92.0, 'test_acc': 90.85}])
    write_run(tmp_path / 'metrics_pbfgs_d8_0-9.json', 'pbfgs', 81.05, args={'batch_size': 1024, 'train_start': 0},
              basis=basis, epochs=[pbfgs_epoch(1, 10, 20, 30.0, 80.0), pbfgs_epoch(2, 10, 12, 81.05, 90.08)])
    write_run(tmp_path / 'b256/metrics_pbfgs_d8_0-9.json', 'pbfgs', 91.45, args={'batch_size': 256},
              basis=basis, epochs=[pbfgs_epoch(1, 40, 50, 91.45, 91.81)])
    evaluate_log(tmp_path / 'evaluate_b256_n0.log', 81.05)
    evaluate_log(tmp_path / 'evaluate_b256_n1.log', 81.05, 90.0, 1)
    # more batches asked for than an epoch has: the run uses all of them and says how many
    evaluate_log(tmp_path / 'evaluate_b256_n40.log', 81.05, 90.6, 39,
                 note='--bn-update 40: an epoch has 39 training batches; BatchNorm statistics are '
                      're-estimated on all 39\n')
    (tmp_path / 'evaluate_notes.log').write_text('not an evaluation\n')
    lines = tables.pbfgs_bn_table(str(tmp_path))
    assert lines[2:] == [
        '| SGD (the trajectory) | 128 | 2 | - | 92.00 | 90.85 | - |',
        '| P-BFGS, d = 8 from snapshots 0..8, from snapshot 0 | 1024 | 2 | 20 | 90.08 | 81.05 | '
        'B = 256: N = 1: 90.00, 39: 90.60 |',
        '| P-BFGS, d = 8 from snapshots 0..8, from snapshot 0 | 256 | 1 | 40 | 91.81 | 91.45 | - |']
    # the logs are records: collect copies them, not other logs
    assert tables.is_record('evaluate_b256_n40.log') and not tables.is_record('evaluate_notes.log')


def test_bn_images_table_a_row_per_seed_a_column_per_image_count(tmp_path):
    """Columns: N batches × 128 images in increasing order (2,048 marked the default), then the
    running statistics (the line every -e log prints, whatever N); a cell the seed did not
    measure is '-'; the logs of other batch sizes and without a seed are not this table's."""
    folder = tmp_path / 'sgd_s1' / 'pbfgs_b1024'
    folder.mkdir(parents=True)
    evaluate_log(folder / 'evaluate_b128_n1_s1.log', 77.87, 77.20, 1)
    evaluate_log(folder / 'evaluate_b128_n16_s1.log', 77.87, 78.00, 16)
    evaluate_log(folder / 'evaluate_b128_n0_s1.log', 77.87)
    evaluate_log(folder / 'evaluate_b128_n1_s2.log', 77.50, 77.37, 1)
    evaluate_log(folder / 'evaluate_b256_n1_s2.log', 70.0, 70.0, 1)
    evaluate_log(folder / 'evaluate_b128_n2.log', 70.0, 70.0, 2)
    lines = tables.bn_images_table(str(tmp_path))
    assert lines == ['| images | 128 | 2,048 (default) | off (running statistics) |',
                     '| --- | ---: | ---: | ---: |',
                     '| seed 1 | 77.20 | 78.00 | 77.87 |',
                     '| seed 2 | 77.37 | - | 77.50 |']
    assert tables.is_record('evaluate_b128_n16_s2.log')


def test_torchrun_table_one_row_per_folder_whole_sequences_first(tmp_path):
    """A row per sub-folder: the world size from the records, 'whole sequence' where the folder
    holds its SGD run, else the subspace phase on the trajectory its basis came from; each
    subspace method's running and re-estimated accuracy."""
    def sequence(sub, world, sgd, psgd, pbfgs, origin=None):
        extra = {'world_size': world}
        if sgd is not None:
            write_run(tmp_path / sub / 'metrics_sgd.json', 'sgd', sgd, extra=extra,
                      epochs=[{'epoch': e, 'test_acc': sgd} for e in range(1, 7)])
        basis = {'kind': 'dldr', 'n_components': 6, 'snapshots': [0, 7],
                 'folder': f'/elsewhere/runs/torchrun/{origin or sub}'}
        for method, (running, bn), batch in (('psgd', psgd, 128), ('pbfgs', pbfgs, 256)):
            write_run(tmp_path / sub / f'metrics_{method}_d6_0-7.json', method, running, basis=basis,
                      args={'batch_size': batch}, extra={**extra, 'final_test_acc_bn': bn},
                      epochs=[{'epoch': e, 'test_acc': running} for e in range(1, 4)])
    sequence('two_on_one', 2, None, (85.3, 85.4), (86.95, 87.0), origin='one')
    sequence('two', 2, 85.65, (83.1, 83.2), (85.55, None))
    sequence('one', 1, 86.85, (85.35, 85.45), (87.05, 87.15))
    lines = tables.torchrun_table(str(tmp_path))
    assert lines[0] == ('| run | SGD (6 epochs, batch 128) | P-SGD (d = 6, 3 epochs, batch 128) | P-SGD, re-estimated | '
                        'P-BFGS (d = 6, 3 epochs, batch 256) | P-BFGS, re-estimated |')
    assert lines[2:] == ['| 1 process, whole sequence | 86.85 | 85.35 | 85.45 | 87.05 | 87.15 |',
                         '| 2 ranks, whole sequence | 85.65 | 83.10 | 83.20 | 85.55 | - |',
                         '| 2 ranks, subspace phase on the trajectory of one (1 process) | - | 85.30 | 85.40 | '
                         '86.95 | 87.00 |']


def test_cli_writes_the_table_and_refuses_a_missing_folder(tmp_path, capsys):
    write_run(tmp_path / 'sgd_s1/metrics_sgd.json', 'sgd', 80.0)
    tables.main(['resnet8', str(tmp_path)])
    assert '80.00 (1)' in (tmp_path / 'resnet8.md').read_text()
    with pytest.raises(Exception, match='no such folder'):
        tables.main(['resnet8', str(tmp_path / 'nothing')])


def subspace_run(path, final, kind, d, snapshots, start, *, bn=None, seed=None, epochs=3):
    """A finished P-SGD record of bash run.sh kinds: ``epochs`` rows, its basis, and the
    re-estimated accuracy where given."""
    write_run(path, 'psgd', final, args={'subspace_seed': seed} if seed else None,
              basis={'kind': kind, 'n_components': d, 'snapshots': snapshots, 'start': start},
              epochs=[{'epoch': e, 'test_acc': final} for e in range(1, epochs + 1)],
              extra={} if bn is None else {'final_test_acc_bn': bn})


def test_kinds_table_a_row_per_kind_and_start_a_column_per_d_and_the_threshold(tmp_path):
    """SGD in the column of all its parameters; cells running / re-estimated (the latter only
    where every seed measured it), mean ± std over seeds; the threshold d: the smallest d at
    which every run reaches 0.9 × SGD's final accuracy."""
    write_run(tmp_path / 'sgd/metrics_sgd.json', 'sgd', 70.0, n_parameters=269_722,
              epochs=[{'epoch': 1, 'test_acc': 50.0}, {'epoch': 2, 'test_acc': 70.0}])
    subspace_run(tmp_path / 'dldr/metrics_psgd_d5_0-31.json', 60.0, 'dldr', 5, [0, 31], 0, bn=64.0)
    subspace_run(tmp_path / 'dldr/metrics_psgd_d10_0-31.json', 64.0, 'dldr', 10, [0, 31], 0, bn=65.0)
    for s, (at10, at40, bn) in {1: (62.0, 63.5, 60.0), 2: (64.0, 65.0, None)}.items():
        subspace_run(tmp_path / f'random/metrics_psgd_random_s{s}_d10_0-31.json', at10, 'random', 10, [0, 31], 0,
                     seed=s, bn=bn)
        subspace_run(tmp_path / f'random/metrics_psgd_random_s{s}_d40_0-31.json', at40, 'random', 40, [0, 31], 0,
                     seed=s, bn=bn)
    # burn-in: d = 5 reaches the target exactly, d = 10 does not: the threshold is still 5
    subspace_run(tmp_path / 'burnin/metrics_psgd_random_s1_d5_0-31_from3.json', 63.0, 'random', 5, [0, 31], 3,
                 seed=1)
    subspace_run(tmp_path / 'burnin/metrics_psgd_random_s1_d10_0-31_from3.json', 62.9, 'random', 10, [0, 31], 3,
                 seed=1)
    subspace_run(tmp_path / 'fastfood/metrics_psgd_fastfood_s1_d40_0-31.json', 12.0, 'fastfood', 40, [0, 31], 0,
                 seed=1)
    for d, acc in ((5, 76.2), (10, 76.5)):  # TWA: the last d snapshots, from their mean
        subspace_run(tmp_path / f'twa/metrics_psgd_twa_d{d}_{31 - d}-31.json', acc, 'twa', d, [31 - d, 31], 'mean')
    write_run(tmp_path / 'fastfood/metrics_psgd_fastfood_s1_d500_0-31.json', 'psgd', 90.0, finished=False,
              basis={'kind': 'fastfood', 'n_components': 500, 'snapshots': [0, 31], 'start': 0})
    lines = tables.kinds_table(str(tmp_path))
    target = 0.9 * 70.0  # 63.00
    assert lines[0] == ('| subspace, start (final test acc: running statistics / re-estimated) | epochs | d = 5 | '
                        '10 | 40 | all 269,722 parameters (SGD) | smallest d with ≥ 90 % of SGD\'s final acc '
                        f'(0.9 × 70.00 = {target:.2f}) |')
    # random d = 10: 62 and 64, mean 63.00, std √2; not both reach 63.00, so its threshold is 40
    mean_std = f'{statistics.mean([62.0, 64.0]):.2f} ± {statistics.stdev([62.0, 64.0]):.2f}'
    assert mean_std == '63.00 ± 1.41'
    assert lines[2:] == [
        '| SGD, the trajectory | 2 |  |  |  | 70.00 |  |',
        '| DLDR, snapshots 0..30, from snapshot 0 | 3 | 60.00 / 64.00 | 64.00 / 65.00 |  |  | 10 |',
        '| TWA, the last d snapshots up to 30, from their mean | 3 | 76.20 | 76.50 |  |  | 5 |',
        f'| random, from snapshot 0 | 3 |  | {mean_std} | 64.25 ± 1.06 |  | 40 |',
        '| random, from snapshot 3 | 3 | 63.00 | 62.90 |  |  | 5 |',
        '| Fastfood, from snapshot 0 | 3 |  |  | 12.00 |  | > 40 |']
    (tmp_path / 'sgd/metrics_sgd.json').unlink()  # no SGD run: no target, no threshold
    lines = tables.kinds_table(str(tmp_path))
    assert 'smallest d with ≥ 90 % of SGD\'s final acc |' in lines[0] and 'all n parameters' in lines[0]
    assert all(line.endswith('|  | - |') for line in lines[2:])


def pbfgs_diagnostics(epoch, steps, failed, alpha, own, nxt, captured, signal, **extra):
    """An epoch's row of train_pbfgs.py with its counters as sums (``PBFGS.reset_stats``)."""
    accepted = steps - failed
    return {'epoch': epoch, 'train_acc': 10.0, 'train_loss': 2.476, 'test_acc': 9.83, 'steps': steps,
            'trials': 1.5 * steps, 'failed_searches': failed, 'nonfinite_skips': 0, 'curvature_skips': 0,
            'step_size_sum': alpha * accepted, 'accepted_loss_sum': own * accepted, 'loss_sum': nxt * steps,
            'captured_sum': None if captured is None else captured * steps, 'gradient_signal': signal, **extra}


def test_imagefolder_tables_label_each_run_from_its_record_and_read_the_pbfgs_diagnostics(tmp_path):
    """The runs in the recipe's sub-folders, in its order (an absent one left out); P-BFGS's
    diagnostics of an epoch (the consecutive-pairs run's first, then every run's last) from its
    counters: mean accepted α over the accepted steps,
    the losses, gradient_captured, gradient_signal; '-' where the JSON holds null."""
    write_run(tmp_path / 'sgd/metrics_sgd.json', 'sgd', 22.42, args={'snapshot_every': 10},
              epochs=[{'epoch': 4, 'train_acc': 19.6, 'train_loss': 2.182, 'test_acc': 22.42, 'test_acc5': 75.69}],
              extra={'snapshots': [{'snapshot': k} for k in range(17)]})
    write_run(tmp_path / 'finetune/metrics_sgd.json', 'sgd', 22.86, args={'pretrained': 'runs/imagefolder/sgd/16.pt',
                                                                         'lr': 0.005},
              epochs=[{'epoch': 1, 'train_acc': 20.0, 'test_acc': 22.86, 'test_acc5': 76.37}])
    basis = {'kind': 'dldr', 'n_components': 8, 'snapshots': [0, 17], 'step': 2, 'used': list(range(0, 17, 2)),
             'start': 0}
    write_run(tmp_path / 'psgd/metrics_psgd_d8_0-17_step2.json', 'psgd', 14.94, args={'lr': 1.0}, basis=basis,
              epochs=[{'epoch': 2, 'train_acc': 12.04, 'train_loss': 4.269, 'test_acc': 14.94}],
              extra={'final_test_acc_bn': 15.25})
    # 20 steps, 1 failed search: mean α over the 19 accepted steps; the consistency 0.05 keeps its zero
    write_run(tmp_path / 'pbfgs_consecutive/metrics_pbfgs_d8_0-17_step2.json', 'pbfgs', 9.83,
              args={'batch_size': 256, 'curvature_pairs': 'consecutive'}, basis=basis,
              epochs=[pbfgs_diagnostics(1, 20, 0, 0.3, 2.5, 2.6, 0.01, 0.2),
                      pbfgs_diagnostics(2, 20, 1, 0.85, 2.47, 2.477, 0.0065, 0.05)],
              extra={'final_test_acc_bn': 9.9})
    # a basis sharded over ranks: no gradient_captured (null); a row of before the sums: means only
    old = {'epoch': 1, 'train_acc': 16.7, 'train_loss': 2.438, 'test_acc': 15.44, 'steps': 20, 'failed_searches': 0,
           'nonfinite_skips': 0, 'mean_trials': 2.2, 'mean_step_size': 0.76, 'own_batch_loss_after_step': 2.403,
           'loss_before_step': 2.433, 'gradient_captured': None, 'gradient_signal': 0.05}
    write_run(tmp_path / 'pbfgs_diag_from8/metrics_pbfgs_d8_8-17.json', 'pbfgs', 15.44, args={'batch_size': 256},
              basis={'kind': 'dldr', 'n_components': 8, 'snapshots': [8, 17], 'step': 1,
                     'used': list(range(8, 17)), 'start': 8}, epochs=[old])
    pbfgs = 'P-BFGS, d = 8 of snapshots 0, 2, …, 16, from snapshot 0, batch 256, consecutive pairs'
    assert tables.imagefolder_table(str(tmp_path))[2:] == [
        '| SGD, a snapshot every 10 iterations: 0..16 (the trajectory) | 1 | 22.42 | - | 75.69 |',
        '| P-SGD, d = 8 of snapshots 0, 2, …, 16, from snapshot 0, lr 1 | 1 | 14.94 | 15.25 | - |',
        f'| {pbfgs} | 2 | 9.83 | 9.90 | - |',
        '| SGD fine-tuning from `16.pt`, lr 0.005 | 1 | 22.86 | - | 76.37 |']
    lines = tables.imagefolder_diagnosis_table(str(tmp_path))
    assert lines[0].endswith('| mean accepted α | own-batch loss after the step / next batch\'s before | '
                             'gradient in subspace | consistency of g̃ |')
    assert lines[2:] == [
        '| SGD, a snapshot every 10 iterations: 0..16 (the trajectory) | 1 | 22.42 | - | 19.60 | 2.182 '
        '|  |  |  |  |  |  |',
        # the 2-epoch run after its first epoch (the 1-epoch run the doc shows): that row's own
        # accuracies (no re-estimated one in it), then the run's final ones after its last
        f'| {pbfgs} | 1 | 9.83 | - | 10.00 | 2.476 | 20 | 1.50 | 0.30 | 2.500 / 2.600 | 0.010 | 0.20 |',
        f'| {pbfgs} | 2 | 9.83 | 9.90 | 10.00 | 2.476 | 20 | 1.50 | 0.85 | 2.470 / 2.477 | 0.0065 | 0.050 |',
        '| P-BFGS, d = 8 of snapshots 8..16, from snapshot 8, batch 256, consecutive pairs | 1 | 15.44 | - | 16.70 '
        '| 2.438 | 20 | 2.20 | 0.76 | 2.403 / 2.433 | - | 0.050 |']


def test_basis_dtype_table_bytes_and_the_difference_from_float32(tmp_path):
    """A row per --basis-dtype: P's bytes (d × n × the type's size, + d float32 scales for int8),
    each method's running / re-estimated accuracy and its difference from float32's."""
    accs = {('float32', 'psgd'): (88.2, 87.85), ('bf16', 'psgd'): (88.2, 87.9), ('int8', 'psgd'): (88.05, 87.85),
            ('float32', 'pbfgs'): (88.2, 88.9), ('bf16', 'pbfgs'): (88.25, 88.85), ('int8', 'pbfgs'): (88.2, 88.9)}
    write_run(tmp_path / 'sgd/metrics_sgd.json', 'sgd', 88.55, n_parameters=1000)
    for (dtype, method), (running, bn) in accs.items():
        rows = [{'epoch': e, 'test_acc': running} for e in range(1, 5 if method == 'psgd' else 4)]
        write_run(tmp_path / f'{dtype}/metrics_{method}_d10_0-11.json', method, running, n_parameters=1000,
                  args={'basis_dtype': dtype, 'batch_size': 128 if method == 'psgd' else 256}, epochs=rows,
                  basis={'kind': 'dldr', 'n_components': 10}, extra={'final_test_acc_bn': bn})
    lines = tables.basis_dtype_table(str(tmp_path))
    assert lines[0] == ('| `--basis-dtype` | P bytes | P-SGD (4 epochs, batch 128): final test acc, running / '
                        're-estimated (− float32) | P-BFGS (3 epochs, batch 256): final test acc, running / '
                        're-estimated (− float32) |')
    assert lines[2:] == ['| float32 | 40,000 | 88.20 / 87.85 | 88.20 / 88.90 |',
                         '| bf16 | 20,000 | 88.20 / 87.90 (+0.00 / +0.05) | 88.25 / 88.85 (+0.05 / -0.05) |',
                         '| int8 | 10,040 | 88.05 / 87.85 (-0.15 / +0.00) | 88.20 / 88.90 (+0.00 / +0.00) |']
