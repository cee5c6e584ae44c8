"""DLDR in a plain torch loop: record a trajectory, build the basis, train on in the subspace.

    python examples/plain_torch.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: dldr

import torch
import torch.nn.functional as F

import dldr


def main(sgd_steps=30, subspace_steps=60, d=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(512, 20)
    y = (x[:, :4] * torch.arange(1, 5)).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    params = dldr.trainable_params(model)

    def batches(steps):
        for step in range(steps):
            i = torch.randint(0, 512, (64,))
            yield x[i], y[i]

    # 1. an ordinary run, recording the trajectory every 2 steps (in memory; folder=... for files)
    recorder = dldr.TrajectoryRecorder(model, every=2)
    recorder.snapshot()
    sgd = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    for xb, yb in batches(sgd_steps):
        sgd.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        sgd.step()
        recorder.step()
    # 2. the basis: the top-d principal directions of the trajectory
    basis = dldr.dldr_basis(recorder.snapshots, d)
    # 3. on in the subspace: projected SGD (or dldr.PBFGS with a closure)
    optimizer = dldr.optim.PSGD(params, basis.P, lr=0.2, momentum=0.9)
    losses = []
    for xb, yb in batches(subspace_steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f'explained variance of {d} directions: {basis.explained_variance_ratio.sum():.3f}; '
          f'P-SGD loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f} (means of 10 steps)')
    return basis, losses


if __name__ == '__main__':
    main()
