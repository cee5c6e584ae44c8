"""Subspace kinds with an explicit basis P: the interface, the dense P and the compact P (low precision,
another device, sharded)."""
import math

import torch
from torch import Tensor

from .comm import LOCAL, Comm, shard_range


class Subspace:
    """A d-dimensional subspace of the n-dimensional parameter space, seen through its coordinates.

    The contract every kind keeps, sharded or not: :meth:`coords` is g -> P g and :meth:`lift` is
    c -> P^T c, its adjoint, each with whatever communication it needs inside; P-SGD and P-BFGS use
    nothing else (and :meth:`gradient_fraction` for a statistic).  For the dense kinds P has
    orthonormal rows (so :meth:`project` is the orthogonal projection); :class:`FastfoodSubspace`
    is only approximately orthonormal.

    Data-parallel ranks: a subspace built with a ``comm`` (:class:`~dldr.comm.Comm`) of W > 1
    ranks returns from ``coords(g_r)``, called by every rank with its own g_r, the coordinates
    P ḡ of the rank-mean ḡ = mean_r g_r (one all-reduce of the d coordinates: mean_r P g_r =
    P ḡ), identical on every rank; when the ranks pass the same g (DDP has already averaged the
    gradients) that is P g.  Such calls are collectives: every rank makes them in the same order,
    as P-SGD and P-BFGS do.  Without a comm (:data:`~dldr.comm.LOCAL`) ``coords(g)`` is P g of this
    process's g and makes no collective.

    A subclass implements :meth:`partial_coords` (this rank's share, whose rank-mean is P ḡ; P g
    for a kind that holds the whole P) and :meth:`lift`; :meth:`coords` adds the reduction.
    :func:`mean_coords` lets an optimizer pack other numbers (a loss) into the same message.

    Attributes:
        dim: d, the number of coordinates.
        n: n, the length of the parameter vectors.
        comm: the data-parallel ranks the products communicate over (default LOCAL: none).
    """

    dim: int
    """d, the number of coordinates."""
    n: int
    """n, the length of the parameter vectors."""
    comm: Comm = LOCAL
    """The data-parallel ranks :meth:`coords` averages over (LOCAL: this process alone)."""

    def coords(self, g: Tensor) -> Tensor:
        """P g: the d coordinates of the n-vector ``g`` (with a ``comm`` of several ranks: P ḡ,
        ḡ the rank-mean of every rank's ``g``, on every rank).

        Args:
            g: a float32 n-vector (a flat gradient, :func:`~dldr.flat.flat_grad`).
        """
        partial = self.partial_coords(g)
        return partial if self.comm.world_size == 1 else self.comm.all_reduce_(partial, 'mean')

    def partial_coords(self, g: Tensor) -> Tensor:
        """This rank's share of :meth:`coords`: d numbers whose mean over the ranks of ``comm``
        is P ḡ (with one process, or a kind holding the whole P: P g itself)."""
        raise NotImplementedError(f'{type(self).__name__} implements neither coords nor partial_coords')

    def lift(self, c: Tensor) -> Tensor:
        """P^T c: the n-vector with coordinates ``c`` (identical on every rank).

        Args:
            c: a d-vector.
        """
        raise NotImplementedError

    def project(self, g: Tensor) -> Tensor:
        """P^T P g: the orthogonal projection of ``g`` onto the subspace (P^T P ḡ with a comm)."""
        return self.lift(self.coords(g))

    @property
    def distributed(self) -> bool:
        """Whether :meth:`coords` communicates (a ``comm`` of several ranks)."""
        return self.comm.world_size > 1

    def gradient_fraction(self, g: Tensor, coords: Tensor) -> Tensor:
        """|P g|^2 / |g|^2 (float64 device scalar) from ``g`` and ``coords`` = P g (this rank's,
        :meth:`partial_coords`): the fraction of this rank's gradient the subspace holds (exact
        for orthonormal rows)."""
        return coords.double().square().sum() / torch.dot(g, g).double()  # no n-length copy


def mean_coords(subspace: Subspace, g: Tensor, comm: Comm = LOCAL,
                extra: Tensor | None = None) -> Tensor:
    """P ḡ, the coordinates of the rank-mean gradient, followed by the rank-mean of ``extra``:
    one all-reduce of d + len(extra) numbers (none with one process).

    The ranks are the subspace's own ``comm`` when it has several, else ``comm``: the ranks of a
    data-parallel loop whose gradients are not averaged yet (the scripts' mode; under DDP leave
    both LOCAL, the gradients are already the mean).

    Args:
        subspace: a :class:`Subspace`.
        g: this rank's float32 n-vector.
        comm: the ranks to average over when the subspace has none of its own.
        extra: numbers to average in the same message (e.g. the loss), float32.

    Raises:
        ValueError: the subspace and ``comm`` name two different groups of several ranks.
    """
    comm, local = local_coords(subspace, g, comm)
    return comm.all_reduce_(local if extra is None else torch.cat((local, extra)))


def local_coords(subspace: Subspace, g: Tensor, comm: Comm = LOCAL) -> tuple[Comm, Tensor]:
    """(the ranks to average over, this rank's coordinates before that average): the two halves
    of :func:`mean_coords`, for an optimizer that needs this rank's own P g_r (a statistic) too."""
    if subspace.distributed:
        if comm.world_size > 1 and comm is not subspace.comm:
            raise ValueError('the subspace communicates over its own comm and another comm was '
                             'given: pass the same Comm object (or none)')
        return subspace.comm, subspace.partial_coords(g)
    return comm, subspace.coords(g)


def reduction_comm(subspace: Subspace, comm: Comm = LOCAL) -> Comm:
    """The ranks an optimizer averages over: the subspace's own when it has several, else
    ``comm`` (checked as :func:`local_coords` does)."""
    if subspace.distributed:
        if comm.world_size > 1 and comm is not subspace.comm:
            raise ValueError('the subspace communicates over its own comm and another comm was '
                             'given: pass the same Comm object (or none)')
        return subspace.comm
    return comm


class DenseSubspace(Subspace):
    """The subspace span(P^T) of an explicit basis P (d x n, orthonormal rows).

    Args:
        P: the d x n basis (float32, on the parameters' device).
        comm: data-parallel ranks whose gradients :meth:`coords` averages (default LOCAL: this
            process; under DDP, whose gradients are already averaged, leave it LOCAL).
    """

    def __init__(self, P: Tensor, comm: Comm = LOCAL):
        if P.ndim != 2:
            raise ValueError(f'P must be 2-D (d, n), got shape {tuple(P.shape)}')
        self.P = P
        self.dim, self.n = P.shape
        self.comm = comm

    def partial_coords(self, g: Tensor) -> Tensor:
        return torch.mv(self.P, g)

    def lift(self, c: Tensor) -> Tensor:
        return torch.mv(self.P.T, c)

    @property
    def basis_bytes(self) -> int:
        """Bytes of P this process holds (its storage)."""
        return self.P.untyped_storage().nbytes()


BASIS_DTYPES = {'float32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16,
                'int8': torch.int8}
"""Storage types of :class:`CompactSubspace` (``--basis-dtype``); fp16 and int8 with a scale per row."""

_SCALED_MAX = {torch.float16: 1.0, torch.int8: 127.0}
"""Per-row scale of the scaled storage types: a row's largest |entry| is stored as this value."""

PRODUCT_CHUNK_BYTES = 16 * 2**20
"""Float32 working memory of a low-precision product: columns are cast to float32 in chunks of
at most this many bytes (a full float32 copy of P is never made)."""


class CompactSubspace(Subspace):
    """An explicit basis P (d x n) stored compactly: in a low-precision type, on a device of its own,
    and/or sharded across the data-parallel ranks.

    * ``dtype`` ('float32', 'bf16', 'fp16', 'int8'; :data:`BASIS_DTYPES`): P's storage.  fp16 and
      int8 keep a float32 scale s_i per row (P = diag(s) Q, |Q| <= 1 resp. 127; with a sharded
      basis, per row of this rank's block).  Products always accumulate in float32: the stored
      columns are cast to float32 in chunks of :data:`PRODUCT_CHUNK_BYTES` (float32 P: one
      ``torch.mv``).  Rounding P makes its rows orthonormal only to the type's precision; the
      iterates still stay exactly in w_0 + span(P^T) of the rounded P.
    * ``device`` (default: ``block``'s) is where P lives (e.g. the CPU while the model trains on a
      GPU): :meth:`coords` moves g (or this rank's block of it) there and the d coordinates back,
      :meth:`lift` the d coordinates there and the n-vector back to ``c``'s device.  ``block``
      (float32) is converted chunk by chunk: it may be held elsewhere (e.g. in host memory, so
      that a GPU never holds P in float32, ``dldr_basis(..., store_device='cpu')``).
    * ``comm`` (sharded): ``block`` is only this rank's columns [lo, hi) = :func:`shard_range`
      (n, rank, W) of P, as the basis functions return them with ``gather=False``.  Then, with
      ḡ = mean_r g_r and P_r this rank's block:

      - ``coords(g_r)`` reduce-scatters (sum) the n-vector g_r (zero-padded to W ceil(n/W)): rank
        r receives W ḡ[lo:hi] and computes W P_r ḡ[lo:hi] (:meth:`partial_coords`); the
        all-reduce (mean) of these d coordinates inside :meth:`coords` gives Σ_r P_r ḡ[lo:hi] =
        P ḡ on every rank, exactly as with the whole P.  (Under DDP every g_r is already ḡ.)
      - ``lift(c)`` (c identical on every rank) computes this rank's block P_r^T c and
        all-gathers the blocks into the n-vector P^T c on every rank.

      Per P-SGD step each rank passes W ceil(n/W) floats to the reduce-scatter and to the
      all-gather and d to the all-reduce (docs/METHOD.md: the bytes).  With one rank (W = 1) no
      collective is made and ``block`` is the whole P.

    :meth:`gradient_fraction` is NaN when sharded with W > 1 (no rank holds P g_r).

    Args:
        block: the float32 basis, d x n (the whole P) or, sharded, this rank's d x (hi - lo).
        n: the length of the parameter vectors.
        dtype: the storage type (:data:`BASIS_DTYPES`).
        comm: the data-parallel ranks (None: this process alone).
        device: where P is kept (default: ``block``'s).
        chunk_bytes: float32 working memory of a low-precision product.
        shard: whether ``block`` is this rank's columns (default: whenever ``comm`` has several
            ranks); ``shard=False`` with a ``comm``: the whole P on every rank, :meth:`coords`
            averaging P g_r over the ranks.
    """

    def __init__(self, block: Tensor, n: int, *, dtype: str = 'float32', comm: Comm | None = None,
                 device=None, chunk_bytes: int = PRODUCT_CHUNK_BYTES, shard: bool | None = None):
        if dtype not in BASIS_DTYPES:
            raise ValueError(f'dtype must be one of {tuple(BASIS_DTYPES)}, got {dtype!r}')
        if block.ndim != 2:
            raise ValueError(f'the basis block must be 2-D (d, columns), got shape {tuple(block.shape)}')
        self.comm = comm if comm is not None and comm.world_size > 1 else LOCAL
        self.sharded = self.comm.world_size > 1 if shard is None else bool(shard and self.comm.world_size > 1)
        world, rank = (self.comm.world_size, self.comm.rank) if self.sharded else (1, 0)
        self.lo, self.hi = shard_range(n, rank, world)
        if block.shape[1] != self.hi - self.lo:
            raise ValueError(f'rank {rank} of {world} holds columns {self.lo}..{self.hi - 1} of '
                             f'an n = {n} basis: expected {self.hi - self.lo} columns, got {block.shape[1]}')
        self.dim, self.n, self.dtype_name = block.shape[0], n, dtype
        self.shard_size, self.world_size = math.ceil(n / world), world
        self.device = block.device if device is None else torch.device(device)
        storage = BASIS_DTYPES[dtype]
        self.chunk = max(1, chunk_bytes // (4 * max(self.dim, 1)))
        self.scale = None
        self._buffer = None  # a float32 chunk of P for the products (low-precision P only)
        if storage == torch.float32 and self.device == block.device:
            self.data = block.float().contiguous()  # (no copy: the block itself)
            return
        if storage in _SCALED_MAX:
            # (vector_norm: the row maxima without a d x n |block| copy)
            absmax = (torch.linalg.vector_norm(block, float('inf'), dim=1).float() if block.numel()
                      else torch.zeros(self.dim))
            self.scale = torch.where(absmax > 0, absmax / _SCALED_MAX[storage],
                                     torch.ones_like(absmax)).to(self.device)
        self.data = torch.empty(block.shape, dtype=storage, device=self.device)
        for a in range(0, block.shape[1], self.chunk):  # chunk-wise: no second float32 copy
            b = min(a + self.chunk, block.shape[1])
            q = block[:, a:b].to(self.device, torch.float32)
            if self.scale is not None:
                q = q / self.scale[:, None]
            self.data[:, a:b] = q.round_() if storage == torch.int8 else q

    @property
    def basis_bytes(self) -> int:
        """Bytes of P this process holds: the storage of its block (+ the row scales)."""
        scale = 0 if self.scale is None else self.scale.untyped_storage().nbytes()
        return self.data.untyped_storage().nbytes() + scale

    def _float_chunks(self):
        """(a, b, P_r[:, a:b] in float32) over the stored columns, cast into one reused buffer
        (allocated at the first product: no new d x chunk float32 tensor per step)."""
        if self._buffer is None:
            self._buffer = torch.empty(self.dim, min(self.chunk, self.data.shape[1]),
                                       dtype=torch.float32, device=self.device)
        for a in range(0, self.data.shape[1], self.chunk):
            b = min(a + self.chunk, self.data.shape[1])
            yield a, b, self._buffer[:, :b - a].copy_(self.data[:, a:b])

    def _mv(self, x: Tensor) -> Tensor:
        """P_r x (float32 d-vector on P's device) for the float32 (hi - lo)-vector x there."""
        if self.data.dtype == torch.float32:
            return torch.mv(self.data, x)
        out = torch.zeros(self.dim, dtype=torch.float32, device=self.device)
        for a, b, block in self._float_chunks():
            out.addmv_(block, x[a:b])
        return out if self.scale is None else out.mul_(self.scale)

    def _tmv(self, c: Tensor) -> Tensor:
        """P_r^T c (float32 (hi - lo)-vector on P's device) for the float32 d-vector c there."""
        if self.data.dtype == torch.float32:
            return torch.mv(self.data.T, c)
        if self.scale is not None:
            c = c * self.scale
        out = torch.empty(self.data.shape[1], dtype=torch.float32, device=self.device)
        for a, b, block in self._float_chunks():
            torch.mv(block.T, c, out=out[a:b])
        return out

    def partial_coords(self, g: Tensor) -> Tensor:
        if self.sharded:
            flat, size = g.float(), self.shard_size
            # every rank's block as a view of g; only a short (last) block is zero-padded, so a
            # step copies no n-vector
            blocks = [flat[a:b] for a, b in (shard_range(self.n, r, self.world_size)
                                              for r in range(self.world_size))]
            blocks = [x if x.numel() == size else torch.nn.functional.pad(x, (0, size - x.numel()))
                      for x in blocks]
            mine = torch.empty(size, dtype=torch.float32, device=g.device)
            self.comm.reduce_scatter_(mine, blocks, 'sum')
            g = mine[:self.hi - self.lo]
        return self._mv(g.to(self.device, torch.float32)).to(g.device)

    def lift(self, c: Tensor) -> Tensor:
        local = self._tmv(c.to(self.device, torch.float32)).to(c.device)
        if not self.sharded:
            return local
        full = torch.empty(self.shard_size * self.world_size, dtype=torch.float32, device=c.device)
        if local.numel() != self.shard_size:
            local = torch.nn.functional.pad(local, (0, self.shard_size - local.numel()))
        self.comm.all_gather_(list(full.split(self.shard_size)), local)
        return full[:self.n]

    def gradient_fraction(self, g: Tensor, coords: Tensor) -> Tensor:
        if not self.sharded:
            return super().gradient_fraction(g, coords)
        return torch.full((), float('nan'), dtype=torch.float64, device=coords.device)


def store_basis(block: Tensor, n: int, *, dtype: str = 'float32', shard_comm: Comm | None = None,
                device=None, basis_device=None) -> Subspace:
    """The :class:`Subspace` of a float32 basis block returned by a basis function: the plain
    :class:`DenseSubspace` for a whole float32 P on ``device`` (where the parameters live), else
    a :class:`CompactSubspace` (``dtype``; ``shard_comm``: the ranks ``block`` is sharded over,
    computed with ``gather=False``) on ``basis_device``.  Both devices default to ``block``'s.

    Args:
        block: the float32 P (or, sharded, this rank's columns) a builder returned.
        n: the length of the parameter vectors.
        dtype: P's storage type (:data:`BASIS_DTYPES`).
        shard_comm: the ranks ``block`` is sharded over (None: ``block`` is the whole P).
        device: where the parameters live.
        basis_device: where P is kept.
    """
    basis_device = block.device if basis_device is None else torch.device(basis_device)
    device = basis_device if device is None else torch.device(device)
    if (dtype == 'float32' and (shard_comm is None or shard_comm.world_size == 1)
            and device == basis_device == block.device):
        return DenseSubspace(block)
    return CompactSubspace(block, n, dtype=dtype, comm=shard_comm, device=basis_device)


def as_subspace(basis, comm: Comm = LOCAL) -> Subspace:
    """A :class:`Subspace` as is; a d x n tensor P as its :class:`DenseSubspace`.

    Args:
        basis: a :class:`Subspace` or a d x n tensor P.
        comm: the data-parallel ranks of a new :class:`DenseSubspace` (ignored for a Subspace).
    """
    return basis if isinstance(basis, Subspace) else DenseSubspace(basis, comm)


