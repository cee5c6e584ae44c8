"""The package ``dldr`` as a library: the scripts bit-identical to the pre-package dldr.py, the
subspace contract (coords = P g, lift = P^T c, communication inside), the optimizers PSGD and
PBFGS (param groups, gradient accumulation, state_dict under weights_only, LBFGS-style closures),
the placement object of the basis builders and the TrajectoryRecorder."""
import io
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dldr
from helpers import CHILD_ENV, PBFGS_ARGS, PSGD_ARGS, ROOT

RUNNER = os.path.join(ROOT, 'tests', 'fixtures', 'run_script.py')


# ------------------------------------------------------------------- scripts: bit-identical

def test_psgd_then_pbfgs_scripts_bit_identical_to_the_pre_package_dldr(sgd_run, tmp_path):
    """The seeded SGD -> P-SGD -> P-BFGS sequence: the same trajectory, then train_psgd.py and
    train_pbfgs.py once with the package and once with the frozen dldr.py of before the split (and
    train_psgd.py's former SGD + project_grads_ hook): the final models are torch.equal."""
    folder, _ = sgd_run
    procs, tiny = {}, ['--smalldatasets', '0.02']  # (the last --smalldatasets wins)
    for mode in ('reference', 'package'):  # side by side: one thread each
        save = tmp_path / mode
        shutil.copytree(folder, save)
        procs[mode] = save, subprocess.Popen(
            [sys.executable, RUNNER, mode, 'train_psgd', *PSGD_ARGS, *tiny, f'--save-dir={save}',
             '--', 'train_pbfgs', *PBFGS_ARGS, *tiny, f'--save-dir={save}', '--max-trials', '5',
             '--curvature-pairs', 'same-batch', '--alpha', '0.01'],
            cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    models = {}
    for mode, (save, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        models[mode] = {tag: torch.load(save / f'{tag}_d2_0-3.pt', weights_only=True)
                        for tag in ('psgd', 'pbfgs')}
    for tag in ('psgd', 'pbfgs'):
        ref, new = models['reference'][tag], models['package'][tag]
        assert ref.keys() == new.keys()
        for key in ref:
            assert torch.equal(ref[key], new[key]), (tag, key)
    start = torch.load(folder / '0.pt', weights_only=True)
    assert not all(torch.equal(start[k], models['package']['pbfgs'][k]) for k in start)
