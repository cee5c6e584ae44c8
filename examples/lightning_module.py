"""DLDR in Lightning: a small MLP trains 30 steps with Adam while its trajectory is recorded, then
30 steps of P-SGD in the 8-dimensional DLDR subspace.

    pip install -r requirements-integrations.txt
    python examples/lightning_module.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: dldr

import lightning
import torch
import torch.nn.functional as F

from dldr.integrations.lightning_callback import DLDRLightningCallback


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-4)


def main(switch_step=30, steps=60, d=8, extra_callbacks=()):
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :4] * torch.arange(1, 5)).argmax(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True)
    module = Classifier()
    dldr_callback = DLDRLightningCallback(n_components=d, switch_step=switch_step, record_every=2,
                                          lr=0.5, momentum=0.9)
    trainer = lightning.Trainer(max_steps=steps, accelerator='cpu', devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[dldr_callback, *extra_callbacks])
    trainer.fit(module, loader)
    losses = module.losses
    print(f'Adam loss {losses[0]:.3f} -> {losses[switch_step - 1]:.3f}; '
          f'P-SGD in {d} dimensions -> {losses[-1]:.3f}')
    return dldr_callback, losses


if __name__ == '__main__':
    main()
