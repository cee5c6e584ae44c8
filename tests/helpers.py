"""What several test files share: the small reference command lines, running a script in a
fresh interpreter or in-process, the shared SGD trajectory, the synthetic data generated once,
and the checks of a user error."""
import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small sizes: 500 training images, a few mini-batches per epoch, no progress lines.
SMALL = ['--smalldatasets', '0.05', '-p', '0']
# The reference SGD command (+ small sizes, --deterministic for bit-exact resumes).
SGD_ARGS = ['--datasets', 'synthetic', '--lr', '0.1', '--corrupt', '0.2', '--arch=resnet8',
            '--epochs=2', '--deterministic', *SMALL]
PSGD_ARGS = ['--epochs', '1', '--datasets', 'synthetic', '--lr', '1', '--corrupt', '0.2',
             '--params_start', '0', '--params_end', '3', '--batch-size', '128', '--n_components', '2',
             '--arch=resnet8', *SMALL]
PBFGS_ARGS = ['--epochs', '1', '--datasets', 'synthetic', '--corrupt', '0.2', '--params_start', '0',
              '--params_end', '3', '--batch-size', '256', '--n_components', '2', '--arch=resnet8', *SMALL]


# One intra-op thread per child: on 2 cores two children can then run side by side, and an
# oversubscribed OpenMP pool spins (2-thread runs cost twice the CPU time here).  The same in
# every child, so runs that must agree bit for bit use the same kernels.
CHILD_ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}


def start(script, *args, **kwargs):
    """``subprocess.Popen`` of ``script`` (a file in the repository root) in a fresh interpreter."""
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, env=CHILD_ENV,
                            **kwargs)


def run(script, *args, timeout=300):
    """Run ``script`` with ``args`` to completion; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


RUNNER = os.path.join(ROOT, 'tests', 'fixtures', 'run_script.py')


def run_with_data(data_file, script, *args, timeout=300, env=None, mode='package'):
    """``run``, in a fresh interpreter through tests/fixtures/run_script.py (what the script's
    ``__main__`` does: ``distributed.run_cli(main)``), with ``--datasets synthetic`` read from
    ``data_file`` (:func:`save_dataset`) instead of generated: for runs that need a process of
    their own (an environment, a kill) but not the ~3 s of generating the data."""
    return subprocess.run([sys.executable, RUNNER, mode, '--synthetic', str(data_file),
                           script.removesuffix('.py'), *map(str, args)], cwd=ROOT,
                          env=CHILD_ENV if env is None else env, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------- the synthetic data

# The test images an in-process run evaluates on (the first of make_synthetic's 2000): a run
# evaluates the whole test set after every epoch, and no test depends on the accuracy's precision.
SMALL_TEST = 200


def cut_test_set(data, n):
    """``data`` with its first ``n`` test images only (the training set unchanged)."""
    return dataclasses.replace(data, test_x=data.test_x[:n].clone(), test_y=data.test_y[:n].clone())


def save_dataset(data, path):
    """A utils.Dataset as a plain dict of tensors and numbers (loadable with weights_only)."""
    torch.save({f.name: getattr(data, f.name) for f in dataclasses.fields(data)}, path)
    return path


def load_dataset(path):
    import utils
    return utils.Dataset(**torch.load(path, weights_only=True))


def synthetic_factory(data):
    """A stand-in for ``utils.make_synthetic`` returning a private copy of ``data`` (load_data
    subsets and relabels its copy in place)."""
    def make_synthetic(*args, **kwargs):
        assert not args and not kwargs, 'load_data calls make_synthetic() with its defaults'
        return dataclasses.replace(data, **{k: getattr(data, k).clone() for k in
                                            ('train_x', 'train_y', 'test_x', 'test_y')})
    return make_synthetic


def patch_synthetic(monkeypatch, data):
    """``--datasets synthetic`` gives ``data``: ``make_synthetic`` replaced where ``load_data``
    looks it up (utils, or the module of a utils package that defines load_data)."""
    import utils
    make = synthetic_factory(data)
    monkeypatch.setattr(utils, 'make_synthetic', make)
    home = sys.modules[utils.load_data.__module__]
    if home is not utils:
        monkeypatch.setattr(home, 'make_synthetic', make)


@contextlib.contextmanager
def in_process_state(monkeypatch, data, threads=1):
    """Runs of ``main()`` in this process on ``data`` with ``threads`` intra-op threads (as
    CHILD_ENV: cheaper on 2 shared cores); main() seeds the global RNGs and may switch on
    deterministic algorithms: they are given back afterwards.  ``data`` None: no synthetic data."""
    if data is not None:
        patch_synthetic(monkeypatch, data)
    torch_rng, numpy_rng = torch.get_rng_state(), np.random.get_state()
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.set_rng_state(torch_rng)
        np.random.set_state(numpy_rng)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark


class InProcessCLI:
    """``script.main(argv)`` under ``distributed.run_cli`` (what the scripts' ``__main__`` does)
    with the captured stdout/stderr: the ``cli`` fixture (conftest.py)."""

    def __init__(self, capsys):
        self.capsys = capsys

    def fail(self, script, *argv):
        """Run a command that must stop: returns (exit code, stdout, stderr)."""
        import pytest
        module = importlib.import_module(script)
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            distributed.run_cli(lambda: module.main([str(a) for a in argv]))
        out, err = self.capsys.readouterr()
        return info.value.code, out, err

    def ok(self, script, *argv):
        """Run a command that must succeed: returns its stdout."""
        module = importlib.import_module(script)
        self.capsys.readouterr()
        module.main([str(a) for a in argv])
        return self.capsys.readouterr().out


def run_in_process(data, script, *args):
    """``run`` (a CompletedProcess-like result: returncode, stdout, stderr) of ``script.main(args)``
    in this process under ``distributed.run_cli``, on ``data`` for ``--datasets synthetic`` (see
    :func:`in_process_state`): for fixtures wider than a test, which capsys does not reach."""
    import io
    import types

    import pytest
    module = importlib.import_module(script.removesuffix('.py'))
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, in_process_state(mp, data), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            distributed.run_cli(lambda: module.main([str(a) for a in args]))
            code = 0
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def shared_sgd_run(tmp_path_factory, data):
    """The SGD_ARGS trajectory in the session's base temp dir, computed by the first caller:
    ``train_sgd.main`` in-process (:func:`run_in_process`) on ``data``.

    The session fixture ``sgd_run`` (conftest.py) returns it; the first test that asks trains,
    the others reuse the folder.  Callers must not write into it (copy it).
    """
    key = hashlib.sha1(' '.join(SGD_ARGS).encode()).hexdigest()[:10]
    folder = tmp_path_factory.getbasetemp() / f'shared_sgd_{key}'
    done = folder.with_name(folder.name + '.done.json')
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        proc = run_in_process(data, 'train_sgd', *SGD_ARGS, f'--save-dir={folder}')
        assert proc.returncode == 0, proc.stderr
        done.write_text(json.dumps({'stdout': proc.stdout, 'stderr': proc.stderr}))
    return folder, json.loads(done.read_text())


def file_state(folder):
    """{name: sha1 of the bytes} of every file in ``folder``: to show nothing changed."""
    return {name: hashlib.sha1((folder / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(folder)) if (folder / name).is_file()}


def assert_one_line_error(result, *fragments):
    """A user error as the house rules want it: exit status 2, no traceback, stderr one ``error:``
    line holding every fragment.  ``result``: a CompletedProcess, or (exit code, stdout, stderr)
    of an in-process run (:func:`in_process`)."""
    code, err = (result[0], result[2]) if isinstance(result, tuple) else (result.returncode, result.stderr)
    assert code == 2, (code, err)
    assert 'Traceback' not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def in_process(capsys, script, *argv):
    """``script.main(argv)`` under distributed.run_cli: (exit code, stdout, stderr)."""
    module = importlib.import_module(script)
    capsys.readouterr()
    try:
        distributed.run_cli(lambda: module.main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def flat_snapshot(path, model):
    """Trainable parameters of a snapshot file, flattened in named_parameters() order (float64)."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    return np.concatenate([state[name].double().reshape(-1).numpy()
                           for name, p in model.named_parameters() if p.requires_grad])
