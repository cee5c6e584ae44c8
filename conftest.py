"""pytest's root: makes the repository's modules importable by the tests (pytest puts the folder
of a root conftest.py on sys.path) and holds the fixtures several test files share.  Helpers that
are not fixtures live in tests/helpers.py."""
import pytest


@pytest.fixture(scope='session')
def sgd_run(tmp_path_factory, small_synthetic):
    """(folder, {'stdout', 'stderr'}) of the SGD_ARGS trajectory, trained once per session,
    in-process on ``small_synthetic`` (do not write into it: copy it)."""
    import helpers  # tests/ is on sys.path once a test module is collected
    return helpers.shared_sgd_run(tmp_path_factory, small_synthetic)


@pytest.fixture(scope='session')
def synthetic():
    """``utils.make_synthetic()`` (the data of ``--datasets synthetic``), generated once per
    session: a run in a fresh interpreter spends ~3 s generating it."""
    import utils
    return utils.make_synthetic()


@pytest.fixture(scope='session')
def small_synthetic(synthetic):
    """The same training images and labels, and the first ``helpers.SMALL_TEST`` test images (a
    run evaluates the whole test set after every epoch: most of an in-process run's time with
    the 2000 of the default)."""
    import helpers
    return helpers.cut_test_set(synthetic, helpers.SMALL_TEST)


@pytest.fixture(scope='session')
def small_synthetic_file(small_synthetic, tmp_path_factory):
    """``small_synthetic`` saved for runs in a fresh interpreter (tests/fixtures/run_script.py
    ``--synthetic FILE``)."""
    import helpers
    return helpers.save_dataset(small_synthetic, tmp_path_factory.getbasetemp() / 'small_synthetic.pt')


@pytest.fixture
def cli(capsys, monkeypatch, small_synthetic):
    """``script.main(argv)`` in-process (helpers.InProcessCLI) on ``small_synthetic``, one intra-op
    thread; the global RNGs and switches main() sets are given back afterwards."""
    import helpers
    with helpers.in_process_state(monkeypatch, small_synthetic):
        yield helpers.InProcessCLI(capsys)


@pytest.fixture(scope='session', autouse=True)
def one_intra_op_thread():
    """The whole session on one intra-op thread, as every child process (helpers.CHILD_ENV): on 2
    shared cores, two OpenMP threads spin against each other and against the children (a resnet18
    training step at load 5: 0.23 s on one thread, 1.7 s on two)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def gloo_ranks():
    """test_distributed.all_runs on 2 gloo ranks (scaffold.spawn_local: 2 fresh processes), for
    test_distributed.py's method-level checks and test_package.py's DDP check: one spawn."""
    import test_distributed
    from scaffold import spawn_local
    return spawn_local(test_distributed.all_runs, 2)
