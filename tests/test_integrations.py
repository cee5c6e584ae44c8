"""The training-loop integrations on the CPU, each through its runnable example (examples/): the
trajectory is recorded in phase 1, then the subspace phase lowers the loss (over the whole training
set) and every update after the switch lies in span(P) to 1e-6.  Skipped where the optional
packages of requirements-integrations.txt are missing (CI installs them)."""
import contextlib
import os
import sys

import pytest
import torch

import dldr
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'examples'))


def out_of_span(P, delta):
    """max |delta - P^T P delta| (float64)."""
    P, delta = P.double(), delta.double()
    return (delta - P.T @ (P @ delta)).abs().max().item()


class Weights:
    """Records the flat weights after every optimizer step (a framework-neutral helper)."""

    def __init__(self, phases):
        self.phases, self.after = phases, []

    def record(self):
        if self.phases.in_subspace:
            self.after.append(dldr.flat_params(self.phases.params))


@contextlib.contextmanager
def recording(module, name, holder):
    """Within the block, ``module.<name>`` (an example's callback class) builds callbacks whose
    phases a :class:`Weights` in ``holder['weights']`` follows."""
    original = getattr(module, name)

    def make(*args, **kwargs):
        cb = original(*args, **kwargs)
        holder['weights'] = Weights(cb.phases)
        return cb

    setattr(module, name, make)
    try:
        yield
    finally:
        setattr(module, name, original)


def check_subspace_phase(phases, weights, full_loss, switch_step, steps, d):
    assert phases.basis.P.shape == (d, phases.start.numel())
    assert len(weights.after) == steps - switch_step + 1  # the switch step's own, then each update
    final = weights.after[-1]
    assert (final - phases.start).abs().max() > 1e-4  # it moved ...
    for w in weights.after[1:]:  # ... and only inside span(P)
        assert out_of_span(phases.basis.P, w - phases.start) < 1e-6
    dldr.set_flat_params_(phases.params, phases.start)
    before = full_loss()
    dldr.set_flat_params_(phases.params, final)
    after = full_loss()
    assert after < before, (before, after)


def test_plain_torch_example_lowers_the_loss_in_the_subspace():
    import plain_torch
    basis, losses = plain_torch.main()
    assert basis.P.shape[0] == 8 and sum(losses[-10:]) < sum(losses[:10])


def test_transformers_trainer_callback():
    pytest.importorskip('transformers')
    pytest.importorskip('accelerate')
    import torch.nn.functional as F
    from transformers import TrainerCallback

    import hf_trainer

    holder = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            holder['model'] = model

        def on_step_end(self, args, state, control, **kwargs):
            holder['weights'].record()

    with recording(hf_trainer, 'DLDRTrainerCallback', holder):
        callback, losses = hf_trainer.main(extra_callbacks=[Probe()])
    model, data = holder['model'], hf_trainer.Tokens()

    @torch.no_grad()
    def full_loss():
        model.eval()
        return F.cross_entropy(model(input_ids=data.ids).logits, data.labels).item()

    check_subspace_phase(callback.phases, holder['weights'], full_loss, 16, 40, 6)


def test_lightning_callback():
    pytest.importorskip('lightning')
    import lightning
    import torch.nn.functional as F

    import lightning_module

    holder = {}

    class Probe(lightning.pytorch.Callback):
        def on_train_start(self, trainer, pl_module):
            holder['module'] = pl_module

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            holder['weights'].record()

    with recording(lightning_module, 'DLDRLightningCallback', holder):
        callback, losses = lightning_module.main(extra_callbacks=[Probe()])
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :4] * torch.arange(1, 5)).argmax(1)
    net = holder['module'].net

    @torch.no_grad()
    def full_loss():
        return F.cross_entropy(net(x), y).item()

    check_subspace_phase(callback.phases, holder['weights'], full_loss, 30, 60, 8)
