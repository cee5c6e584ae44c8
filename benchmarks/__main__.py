"""``python -m benchmarks [flags]``: the same as ``python bench.py [flags]``."""
from benchmarks.cli import run

if __name__ == '__main__':
    run()
