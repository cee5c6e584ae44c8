"""Every random stream of a run and the seed it starts from, derived from ``--randomseed``.

=================  ======================================  =====================================
stream             seed                                    drives
=================  ======================================  =====================================
``init``           s                                       the global torch RNG of every process
                                                           (initialisation; rank 0's dropout)
``data``           s                                       the training loader's generator:
                                                           each epoch's order, crops and flips
``workers``        data seed * 1009 + rank                 ImageFolder DataLoader workers (the
                                                           decoding-side augmentation)
``bn_order``       s + 7919 * (epoch + 1)                  the batches BatchNorm is re-estimated
                                                           on before evaluating after ``epoch``
``bn_mean_start``  s                                       the batches BatchNorm is re-estimated
                                                           on at a ``--train-start mean`` start
``rank_dropout``   s + 1000 * rank                         a subspace run's rank > 0 dropout
``rank_epoch``     s + 1000 * rank + epoch                 train_sgd.py's rank > 0 dropout in
                                                           ``epoch``
``subset``         s + 1_000_003                           the ``--smalldatasets`` subset
``label_noise``    s + 2_000_003                           the ``--corrupt`` labels
``subspace``       s (unless ``--subspace-seed``)          the random / fastfood bases
``redrawn``        ``dldr.draw_seed(subspace seed, k)``    draw k of ``--subspace redrawn``
=================  ======================================  =====================================

Why they differ:

* Exact resume.  A resumed run must draw what the uninterrupted one drew.  The ``data`` generator
  and the global RNG are saved in the checkpoint; the streams that are not saved are a function of
  the epoch alone (``bn_order``, ``rank_epoch``) or have their own generator (``workers``: a new
  worker pool must not consume the ``data`` generator's numbers, or the next epoch's order would
  change).  BatchNorm re-estimation reads batches from its own generator so training's order is
  untouched whether or not ``--bn-update`` is on.
* Independent ranks.  Every rank starts from the same ``init`` (the same weights) and the same
  ``data`` state (the same global batches, each rank its share); dropout must then differ per rank
  (``rank_dropout`` / ``rank_epoch``: rank r is 1000 r away, room for 1000 epochs before rank r's
  epoch stream meets rank r+1's), and so must the ImageFolder workers (``workers``).
* Unrelated choices.  Subset, label noise and BN order are offset (by primes) from ``s`` so that
  they do not repeat the ``data`` stream's numbers, yet every script derives the same subset and the
  same noisy labels from the same ``--randomseed``.

The numbers are the ones every earlier trajectory was written with: changing one changes runs.
That is why four streams (``init``, ``data``, ``bn_mean_start``, ``subspace``) share the bare seed
``s``: ``init`` must equal the reference scripts' ``torch.manual_seed(seed)`` (the same initial
weights), and offsetting the other three now would change every run made so far.
"""
import numpy as np
import torch

import dldr

STREAMS = ('init', 'data', 'workers', 'bn_order', 'bn_mean_start', 'rank_dropout', 'rank_epoch',
           'subset', 'label_noise', 'subspace', 'redrawn')


def seed(stream, base, *, rank=0, epoch=0, draw=0):
    """The seed of ``stream`` (see the table above) for the run seed ``base`` (``--randomseed``;
    for ``workers`` the data generator's seed, for ``redrawn`` the subspace seed)."""
    if stream in ('init', 'data', 'bn_mean_start', 'subspace'):
        return base
    if stream == 'workers':
        return base * 1009 + rank
    if stream == 'bn_order':
        return base + 7919 * (epoch + 1)
    if stream == 'rank_dropout':
        return base + 1000 * rank
    if stream == 'rank_epoch':
        return base + 1000 * rank + epoch
    if stream == 'subset':
        return base + 1_000_003
    if stream == 'label_noise':
        return base + 2_000_003
    if stream == 'redrawn':
        return dldr.draw_seed(base, draw)
    raise ValueError(f'unknown random stream {stream!r}; known: {", ".join(STREAMS)}')


def generator(stream, base, **kwargs):
    """A CPU ``torch.Generator`` seeded for ``stream``."""
    return torch.Generator().manual_seed(seed(stream, base, **kwargs))


def seed_process(base):
    """Seed this process's global RNGs (torch and numpy) from the ``init`` stream; the kernels
    (deterministic or cuDNN's autotuned) are :func:`distributed.choose_kernels`'s choice."""
    torch.manual_seed(seed('init', base))
    np.random.seed(seed('init', base) % 2**32)
