"""Collectives of data-parallel ranks: the one place the method communicates."""
import math

from torch import Tensor


class Comm:
    """Collectives of a group of data-parallel ranks; this base class is one process alone.

    Everything the method communicates passes through :meth:`all_reduce_`, :meth:`all_gather_`
    and :meth:`reduce_scatter_` (the last only with a sharded basis, :class:`CompactSubspace`; the
    run plumbing also uses :meth:`barrier` and :meth:`broadcast_`): wrap them to count or log the
    traffic.
    """

    rank = 0
    world_size = 1

    def all_reduce_(self, tensor: Tensor, op: str = 'mean') -> Tensor:
        """Reduce ``tensor`` in place over the ranks (``op``: 'mean' or 'sum'); return it."""
        return tensor

    def all_gather_(self, out: list[Tensor], tensor: Tensor) -> None:
        """Copy every rank's ``tensor`` (equal shapes) into ``out[rank]``."""
        out[0].copy_(tensor)

    def reduce_scatter_(self, out: Tensor, inputs: list[Tensor], op: str = 'sum') -> Tensor:
        """Reduce every rank's ``inputs[r]`` (``world_size`` tensors of ``out``'s shape) over the
        ranks (``op``: 'sum' or 'mean') into rank r's ``out``; return ``out``."""
        return out.copy_(inputs[0])

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``tensor`` in place with rank ``src``'s; return it."""
        return tensor


LOCAL = Comm()
"""The single-process :class:`Comm` (no communication)."""


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous block [a, b) of ``n`` coordinates: equal blocks of
    ceil(n / world_size), the last ones shorter (possibly empty)."""
    size = math.ceil(n / world_size)
    return min(rank * size, n), min((rank + 1) * size, n)

