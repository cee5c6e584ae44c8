"""Run plumbing of engine.py without data or disk: the evaluation batch default, the BatchNorm
re-estimation (--bn-update), the epoch meter."""
import argparse

import torch
from torch import nn

import distributed
import engine
import utils


def test_eval_batch_default_per_device_and_flag():
    args = argparse.Namespace(eval_batch_size=None)
    assert utils.eval_batch_size(args, torch.device('cpu')) == 256
    assert utils.eval_batch_size(args, torch.device('cuda', 0)) == 1024
    assert utils.eval_batch_size(argparse.Namespace(eval_batch_size=64), torch.device('cpu')) == 64


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5))


def test_update_bn_averages_batches_restores_train_mode_and_leaves_parameters():
    model = bn_net()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 3, 8, 8, generator=g) * 2 + 1, None) for _ in range(5)]
    params = [p.detach().clone() for p in model.parameters()]
    model.eval()
    engine.update_bn(model, batches, 3, distributed.Context(torch.device('cpu')))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert model[1].momentum == 0.1 and model[5].momentum == 0.1
    # independent: the plain average over the first 3 batches of each batch's statistics
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:3]]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats])
    variances = torch.stack([f.transpose(0, 1).reshape(4, -1).var(1, unbiased=True) for f in feats])
    torch.testing.assert_close(model[1].running_mean, means.mean(0))
    torch.testing.assert_close(model[1].running_var, variances.mean(0))
    assert int(model[1].num_batches_tracked) == 3


def test_update_bn_zero_batches_changes_nothing():
    model = bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.update_bn(model, [(torch.randn(6, 3, 8, 8), None)], 0, distributed.Context(torch.device('cpu')))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_epoch_meter_loss_and_accuracy_against_hand_count():
    meter = engine.EpochMeter(torch.device('cpu'))
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.5, 0.2, 0.1]])
    target = torch.tensor([0, 2, 2, 1])
    meter.update(torch.tensor(0.5), logits[:2], target[:2])
    meter.update(torch.tensor(1.0), logits[2:], target[2:])
    loss, acc = meter.result()[:2]
    assert loss == (0.5 * 2 + 1.0 * 2) / 4 and acc == 50.0  # rows 0 and 2 are right
