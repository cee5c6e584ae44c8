"""Data and files of the training scripts (being split into modules: utils/data.py for now)."""
from .data import *  # noqa: F401,F403
