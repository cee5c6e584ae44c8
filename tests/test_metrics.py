"""The run record (run.RunRecord) and its one reader (metrics.py): what a finished file says,
files of the previous version, the demo table, and that no record method communicates."""
import json
import platform
from argparse import Namespace

import pytest
import torch

import dldr
import distributed
import metrics
import run
import seeds
import sweep
import utils


class CountingComm(dldr.Comm):
    """A 1-process Comm that fails on any collective: record methods must not communicate."""

    def all_reduce_(self, tensor, op='mean'):
        raise AssertionError('a record method ran a collective')

    def all_gather_(self, out, tensor):
        raise AssertionError('a record method ran a collective')


def record(path):
    context = distributed.Context(torch.device('cpu'), comm=CountingComm())
    args = Namespace(batch_size=8, randomseed=1, n_components=3)
    return run.RunRecord(path, args, context, method='psgd', n_parameters=10,
                         basis={'kind': 'random', 'n_components': 3, 'snapshots': [0, 4]})


def test_record_methods_and_finished_flag(tmp_path):
    path = tmp_path / 'metrics_psgd_random_s1_d3_0-4.json'
    r = record(str(path))
    r.add_epoch({'epoch': 1, 'test_acc': 10.0}, skipped_images=2)
    assert not metrics.finished(str(path)) and sweep.finished(str(path)) is None
    r.add_epoch({'epoch': 2, 'test_acc': 5.0})
    env = json.loads(path.read_text())['environment']  # what ran it
    assert env['torch'] == torch.__version__ and env['python'] == platform.python_version() and env['device']
    r.finish(3.5)
    m = metrics.load(str(path))
    assert m['finished'] is True and m.finished and metrics.finished(str(path))
    assert (m.final_test_acc, m['best_test_acc'], m['seconds']) == (5.0, 10.0, 3.5)
    assert (m.method, m.kind, m.subspace_dim, m.seed, m.snapshot_range, m['tag']) == (
        'psgd', 'random', 3, 1, (0, 4), 'psgd_random_s1_d3_0-4')
    assert sweep.finished(str(path)) == 5.0


def test_files_of_the_previous_version_finish_by_seconds(tmp_path):
    old = {'args': {}, 'epochs': [{'test_acc': 1.0}], 'final_test_acc': 1.0}
    path = tmp_path / 'metrics_sgd.json'
    path.write_text(json.dumps(old))
    assert not metrics.finished(str(path))
    path.write_text(json.dumps({**old, 'seconds': 2.0}))
    assert metrics.finished(str(path)) and sweep.finished(str(path)) == 1.0
    assert not metrics.finished(str(tmp_path / 'absent.json'))
    path.write_text('{"args": ')
    with pytest.raises(utils.UserError, match='corrupt metrics file'):
        metrics.load(str(path))


def test_sgd_record_resume_and_snapshots(tmp_path):
    r = record(str(tmp_path / 'metrics_sgd.json'))
    r.resume([{'epoch': 1, 'test_acc': 3.0}, {'epoch': 2, 'test_acc': 2.0}],
             [{'snapshot': 0, 'epoch': 0, 'step': 0, 'iteration': 0}])
    assert (r.data['final_test_acc'], r.data['best_test_acc']) == (2.0, 3.0)
    assert r.add_snapshot(1, 4, 4) == 1 and r.snapshots[-1] == {'snapshot': 1, 'epoch': 1, 'step': 4,
                                                                 'iteration': 4}


def test_seeds_are_the_numbers_trajectories_were_written_with():
    assert seeds.seed('bn_order', 1, epoch=2) == 1 + 7919 * 3
    assert seeds.seed('rank_epoch', 1, rank=2, epoch=3) == 1 + 2000 + 3
    assert seeds.seed('rank_dropout', 1, rank=1) == 1001
    assert (seeds.seed('subset', 1), seeds.seed('label_noise', 1)) == (1_000_004, 2_000_004)
    assert seeds.seed('workers', 5, rank=1) == 5 * 1009 + 1
    assert seeds.seed('redrawn', 3, draw=4) == dldr.draw_seed(3, 4)
    with pytest.raises(ValueError, match='unknown random stream'):
        seeds.seed('dropout', 1)
