"""Label noise (``--corrupt``, ``--noise-model``): which training labels are redrawn, and how."""
import torch


# --noise-model: how --corrupt draws the new labels.  'uniform' is the reference's model (its
# utils.get_datasets: np.random.choice(10) for each of int(c * N) labels), 'wrong' always picks
# another class.
NOISE_MODELS = ('uniform', 'wrong')


def corrupt_labels(labels, fraction, num_classes, seed, model='uniform'):
    """Redraw the labels of ``int(N * fraction)`` training images (the reference's count: int,
    not round), chosen by a seeded random permutation.  ``model='uniform'`` (the reference's):
    each new label is drawn uniformly from all ``num_classes`` classes, so about 1/num_classes of
    them keep their true class; ``'wrong'``: drawn uniformly among the ``num_classes - 1`` others.

    Returns ``(new_labels, indices)`` (the redrawn indices, sorted); the same ``seed`` gives the
    same result in every script.
    """
    if model not in NOISE_MODELS:
        raise ValueError(f'unknown noise model {model!r}; known: {", ".join(NOISE_MODELS)}')
    n = len(labels)
    count = int(n * fraction)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:count].sort().values
    new = labels.clone()
    if model == 'wrong':
        shift = torch.randint(1, num_classes, (count,), generator=g)
        new[idx] = (labels[idx] + shift) % num_classes
    else:
        new[idx] = torch.randint(0, num_classes, (count,), generator=g)
    return new, idx


def noise_record(data, args):
    """The label-noise fields of a run's metrics JSON: ``n_corrupted`` (labels redrawn),
    ``noise_model`` (the ``--noise-model`` that drew them; None without ``--corrupt``) and
    ``wrong_label_fraction`` (the share of the training labels that differ from the true ones)."""
    if data.corrupted is None:
        return {'n_corrupted': 0, 'noise_model': None, 'wrong_label_fraction': 0.0}
    return {'n_corrupted': len(data.corrupted), 'noise_model': args.noise_model,
            'wrong_label_fraction': data.wrong_label_fraction}
