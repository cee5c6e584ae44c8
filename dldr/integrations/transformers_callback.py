"""DLDR in a Hugging Face ``transformers.Trainer``: a ``TrainerCallback``."""
from transformers import TrainerCallback

from .phases import TwoPhase


class DLDRTrainerCallback(TrainerCallback):
    """Record the trajectory for ``switch_step`` optimizer steps with the Trainer's own optimizer,
    then continue in its DLDR subspace with P-SGD (:class:`~dldr.integrations.phases.TwoPhase`).

    The P-SGD step runs in ``on_pre_optimizer_step`` (after gradient accumulation and clipping;
    under DDP on the averaged gradient) and drops the gradients, so the Trainer's optimizer step
    and its weight decay change nothing; its learning-rate schedule goes on, unused.  fp16 mixed
    precision (a GradScaler) is refused; bf16 works.

    Args:
        n_components: d, the subspace dimension.
        switch_step: the optimizer step after which training continues in the subspace.
        record_every: snapshot every this many steps (default 1).
        lr: P-SGD learning rate (default 1.0).
        momentum: P-SGD momentum (default 0.9).
        placement: a :class:`dldr.Placement` for the basis (default: CPU).
        folder: write the snapshots as ``<folder>/k.pt`` instead of keeping them in memory.

    Attributes:
        phases: the :class:`TwoPhase` (``phases.basis``, ``phases.optimizer`` after the switch).

    Example::

        trainer = Trainer(model, args, train_dataset=data,
                          callbacks=[DLDRTrainerCallback(n_components=10, switch_step=100)])
        trainer.train()
    """

    def __init__(self, n_components: int, switch_step: int, record_every: int = 1, lr: float = 1.0,
                 momentum: float = 0.9, placement=None, folder=None):
        self.phases = TwoPhase(n_components, switch_step, record_every, lr, momentum, placement, folder)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, 'fp16', False):
            raise ValueError('DLDRTrainerCallback: fp16 (a GradScaler) is not supported; use bf16')
        self.phases.begin(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.phases.before_host_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.phases.after_step(state.global_step)
