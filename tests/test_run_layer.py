"""The run layer: the frozen settings the scripts parse to, the closure every P-BFGS step uses,
and ``engine.train_epoch`` driving a closure optimizer — each against a computation of its own."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dldr
import distributed
import engine
import flags
import train_sgd
from helpers import SGD_ARGS


def test_settings_are_frozen_typed_and_recorded_as_parsed(sgd_run):
    config = train_sgd.parse_args([*SGD_ARGS, '--lr-milestones', '1'])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5
    types = {f.name: f.type for f in dataclasses.fields(config)}
    assert types['lr'] is float and types['epochs'] is int and types['deterministic'] is bool
    assert config.lr_milestones == (1,) and flags.as_dict(config)['lr_milestones'] == [1]
    # the JSON of the run the session trained with SGD_ARGS holds exactly the parsed settings
    folder, _ = sgd_run
    recorded = json.load(open(folder / 'metrics_sgd.json'))['args']
    assert recorded == flags.as_dict(train_sgd.parse_args([*SGD_ARGS, f'--save-dir={folder}']))


def _problem(seed=0, batches=4, n=6):
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))
            for _ in range(batches)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    return model, data


def test_batch_closure_averages_the_gradients_and_counts_its_batches_once():
    model, data = _problem()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    meter = engine.EpochMeter(torch.device('cpu'))
    closure = engine.batch_closure(model, data[:3], optimizer, meter=meter)
    model.train()
    last = closure()
    got = [p.grad.clone() for p in params]
    # independently: the gradient of the mean of the three losses, from a copy of the model
    twin = _problem()[0]
    twin.train()
    losses = [F.cross_entropy(twin(x), y) for x, y in data[:3]]
    want = torch.autograd.grad(sum(losses) / 3, list(twin.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert last.item() == pytest.approx(losses[-1].item())
    closure()  # a second gradient evaluation (same-batch pairs) is not counted again
    assert meter.sums[3].item() == 18
    with torch.no_grad():  # a line-search trial: the last batch's loss, no backward
        trial = closure()
    assert not trial.requires_grad and trial.item() == pytest.approx(F.cross_entropy(model(data[2][0]), data[2][1]).item())


def test_train_epoch_drives_pbfgs_as_a_hand_written_loop():
    """Gradient accumulation over 2 batches (train_pbfgs.py --accumulate 2): the same weights,
    bit for bit, as the loop written out with its own closure."""
    context = distributed.Context(torch.device('cpu'))
    results = []
    for by_engine in (True, False):
        model, data = _problem(seed=3, batches=5)
        n = dldr.flat_params(dldr.trainable_params(model)).numel()
        P = torch.linalg.qr(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)))[0].T.contiguous()
        optimizer = dldr.PBFGS(dldr.trainable_params(model), P, buffers=list(model.buffers()))
        if by_engine:
            scores = engine.train_epoch(model, data, optimizer, context, accumulate=2)
        else:
            model.train()
            for k in range(0, len(data), 2):
                group = data[k:k + 2]

                def closure():
                    x, y = group[-1]
                    if not torch.is_grad_enabled():
                        return F.cross_entropy(model(x), y)
                    optimizer.zero_grad()
                    for xb, yb in group:
                        loss = F.cross_entropy(model(xb), yb)
                        (loss / len(group)).backward()
                    return loss
                optimizer.step(closure)
        assert optimizer.stats['steps'] == 3
        results.append([p.detach().clone() for p in model.parameters()]
                       + [b.clone() for b in model.buffers()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert 0 <= scores.acc <= 100 and scores.loss > 0


def test_train_epoch_drives_torch_lbfgs():
    context = distributed.Context(torch.device('cpu'))
    finals = []
    for by_engine in (True, False):
        model, data = _problem(seed=5, batches=3)
        optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
        if by_engine:
            engine.train_epoch(model, data, optimizer, context)
        else:
            model.train()
            for x, y in data:
                def closure(x=x, y=y):
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    return loss
                optimizer.step(closure)
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(*finals)


def test_pbfgs_summary_matches_the_counters():
    stats = {'steps': 10, 'trials': 14, 'failed_searches': 1, 'nonfinite_skips': 1,
             'step_size_sum': 4.0, 'accepted_loss_sum': 16.0, 'loss_sum': 18.0, 'captured_sum': 2.7,
             'curvature_skips': 0}
    s = dldr.PBFGS.summarise(stats)
    assert s == pytest.approx({'mean_step_size': 0.5, 'mean_trials': 1.4, 'own_batch_loss_after_step': 2.0,
                               'loss_before_step': 2.0, 'gradient_captured': 0.3})
