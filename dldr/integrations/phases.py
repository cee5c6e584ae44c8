"""The two phases a training-loop integration runs: the host's own optimizer while a trajectory is
recorded, then P-SGD in the DLDR subspace of that trajectory, stepping inside the host's step."""
import torch

from ..basis import Placement, dldr_basis
from ..flat import flat_params, trainable_params
from ..optim import PSGD
from ..recorder import TrajectoryRecorder
from ..subspace import DenseSubspace


class TwoPhase:
    """Phase 1 (steps 1 .. ``switch_step``): the host loop trains with its own optimizer and a
    :class:`~dldr.recorder.TrajectoryRecorder` takes a snapshot at the start and every
    ``record_every`` optimizer steps.  At ``switch_step`` the top-``n_components`` DLDR basis P of
    those snapshots is built (:func:`~dldr.basis.dldr_basis`), and phase 2 continues from the
    current weights with :class:`~dldr.optim.PSGD`: :meth:`before_host_step` (called where the host
    is about to step, with the accumulated, clipped, unscaled gradient) takes the P-SGD step and
    drops the gradients, so the host's optimizer (torch's skip parameters without ``.grad``)
    changes nothing.  Every phase-2 update lies in span(P).

    Args:
        n_components: d, the subspace dimension (< the number of snapshots).
        switch_step: the optimizer step after which phase 2 begins.
        record_every: snapshot every this many optimizer steps in phase 1 (default 1).
        lr: P-SGD learning rate (default 1.0).
        momentum: P-SGD momentum (default 0.9).
        placement: where the basis is computed (:class:`~dldr.basis.Placement`; default: the
            snapshots' device, the CPU).
        folder: write the snapshots as ``<folder>/k.pt`` (train_sgd.py's layout) instead of
            keeping them in memory.
    """

    def __init__(self, n_components: int, switch_step: int, record_every: int = 1, lr: float = 1.0,
                 momentum: float = 0.9, placement: Placement | None = None, folder=None):
        snapshots = switch_step // record_every + 1
        if not 1 <= n_components < snapshots:
            raise ValueError(f'n_components={n_components} must be in 1..{snapshots - 1}: phase 1 '
                             f'records {snapshots} snapshots (switch_step // record_every + 1)')
        self.n_components, self.switch_step, self.record_every = n_components, switch_step, record_every
        self.lr, self.momentum, self.placement, self.folder = lr, momentum, placement, folder
        self.recorder = self.params = self.basis = self.optimizer = self.start = None
        self.last_step = 0

    @property
    def in_subspace(self) -> bool:
        """Whether phase 2 has begun."""
        return self.optimizer is not None

    def begin(self, model: torch.nn.Module) -> None:
        """At the start of training: snapshot 0."""
        self.params = trainable_params(model)
        self.recorder = TrajectoryRecorder(model, every=self.record_every, folder=self.folder)
        self.recorder.snapshot()

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based, counted by the host): record, or switch."""
        if step == self.last_step or self.recorder is None:
            return
        self.last_step = step
        if self.in_subspace:
            return
        self.recorder.step()
        if step >= self.switch_step:
            self.switch()

    def switch(self) -> None:
        """Build the basis from the snapshots and start P-SGD at the current weights."""
        self.basis = dldr_basis(self.recorder.snapshots, self.n_components, self.placement)
        device = self.params[0].device
        self.optimizer = PSGD(self.params, DenseSubspace(self.basis.P.to(device)), lr=self.lr,
                              momentum=self.momentum)
        self.start = flat_params(self.params)
        self.recorder.clear()

    @torch.no_grad()
    def before_host_step(self) -> None:
        """In phase 2: the P-SGD step on the current gradients, then drop them (the host's
        optimizer step then changes nothing)."""
        if not self.in_subspace:
            return
        self.optimizer.step()
        for p in self.params:
            p.grad = None
