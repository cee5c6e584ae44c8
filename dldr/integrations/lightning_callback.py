"""DLDR in a Lightning ``Trainer``: a ``Callback``."""
from lightning.pytorch.callbacks import Callback

from .phases import TwoPhase


class DLDRLightningCallback(Callback):
    """Record the trajectory for ``switch_step`` optimizer steps with the module's own optimizer,
    then continue in its DLDR subspace with P-SGD (:class:`~dldr.integrations.phases.TwoPhase`).

    The P-SGD step runs in ``on_before_optimizer_step`` (after gradient accumulation, on the
    unscaled gradient; under DDP the averaged one) and drops the gradients, so the configured
    optimizer's step changes nothing.  16-bit mixed precision (a GradScaler) is refused; bf16
    works.  Automatic optimization only.

    Args:
        n_components: d, the subspace dimension.
        switch_step: the optimizer step after which training continues in the subspace.
        record_every: snapshot every this many steps (default 1).
        lr: P-SGD learning rate (default 1.0).
        momentum: P-SGD momentum (default 0.9).
        placement: a :class:`dldr.Placement` for the basis (default: CPU).
        folder: write the snapshots as ``<folder>/k.pt`` instead of keeping them in memory.

    Example::

        trainer = lightning.Trainer(max_steps=200,
                                    callbacks=[DLDRLightningCallback(n_components=10, switch_step=100)])
        trainer.fit(module, loader)
    """

    def __init__(self, n_components: int, switch_step: int, record_every: int = 1, lr: float = 1.0,
                 momentum: float = 0.9, placement=None, folder=None):
        self.phases = TwoPhase(n_components, switch_step, record_every, lr, momentum, placement, folder)

    def on_train_start(self, trainer, pl_module):
        if str(trainer.precision).startswith('16'):
            raise ValueError('DLDRLightningCallback: 16-bit mixed precision (a GradScaler) is not '
                             'supported; use bf16')
        if not pl_module.automatic_optimization:
            raise ValueError('DLDRLightningCallback needs automatic optimization')
        self.phases.begin(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.phases.before_host_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.phases.after_step(trainer.global_step)
