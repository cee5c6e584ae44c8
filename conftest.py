"""pytest's root: makes the repository's modules importable by the tests (pytest puts the folder
of a root conftest.py on sys.path) and holds the fixtures several test files share.  Helpers that
are not fixtures live in tests/helpers.py."""
import pytest


@pytest.fixture(scope='session')
def sgd_run(tmp_path_factory):
    """(folder, {'stdout', 'stderr'}) of the SGD_ARGS trajectory, trained once per session (do not
    write into it: copy it)."""
    import helpers  # tests/ is on sys.path once a test module is collected
    return helpers.shared_sgd_run(tmp_path_factory)
