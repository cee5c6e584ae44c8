#!/usr/bin/env python3
"""``python bench.py [flags]``: the benchmarks of the package benchmarks/ (docs/BENCHMARKS.md);
``--help`` lists the flags."""
from benchmarks.cli import run

if __name__ == '__main__':
    run()
