"""Basis builders: DLDR (paper Algorithm 1), TWA and random, streamed over chunks of coordinates."""
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .comm import LOCAL, Comm, shard_range

DEFAULT_MAX_BYTES = 256 * 2**20
"""Default bound on the memory :func:`dldr_basis` keeps per chunk of coordinates (256 MiB)."""

RANK_RTOL = 1e-10
""":func:`dldr_basis` rejects a component whose eigenvalue is <= RANK_RTOL * largest eigenvalue."""

@dataclass(frozen=True)
class Placement:
    """Where and how a basis builder computes and keeps P: the one placement argument of
    :func:`dldr_basis`, :func:`twa_basis` and :func:`random_basis` (and :func:`snapshot_mean`).

    Args:
        device: where P is computed chunk by chunk (default: the snapshot tensor's device, else
            the CPU).
        store_device: where the float32 result is held (default ``device``): e.g. the host,
            computing on a GPU that will only hold P in a low-precision copy.
        max_bytes: bound on the per-chunk working memory (default :data:`DEFAULT_MAX_BYTES`);
            the d x n result is not counted.
        comm: the data-parallel ranks sharing the work (default :data:`LOCAL`: this process
            alone); rank r streams its block :func:`~dldr.comm.shard_range` of the coordinates.
        shard: keep only this rank's block of columns of P (d x (hi - lo)) instead of gathering
            the whole P on every rank: a sharded basis (:class:`~dldr.subspace.CompactSubspace`).
        dtype: how :meth:`subspace` stores P ('float32', 'bf16', 'fp16', 'int8':
            :data:`~dldr.subspace.BASIS_DTYPES`); a low-precision type also stages the float32
            result in host memory unless ``store_device`` says otherwise.

    Example::

        placement = Placement(device='cuda', comm=comm, shard=True, dtype='bf16')
        basis = dldr_basis(snapshots, 40, placement)
        subspace = placement.subspace(basis.P, n)
    """

    device: object = None
    store_device: object = None
    max_bytes: int | None = None
    comm: Comm = LOCAL
    shard: bool = False
    dtype: str = 'float32'

    @classmethod
    def of(cls, placement: 'Placement | None' = None, **keywords) -> 'Placement':
        """``placement`` with the builders' former keywords (``device``, ``max_bytes``, ``comm``,
        ``gather``, ``store_device``) applied on top: today's call sites keep working."""
        if 'gather' in keywords:
            keywords['shard'] = not keywords.pop('gather')
        base = cls() if placement is None else placement
        if not isinstance(base, Placement):
            raise TypeError(f'placement must be a dldr.Placement, got {type(base).__name__}')
        return dataclasses.replace(base, **keywords) if keywords else base

    @property
    def gather(self) -> bool:
        """Whether every rank receives the whole P (not :attr:`shard`)."""
        return not self.shard

    @property
    def staging(self):
        """Where the float32 P is held: ``store_device``, else the host for a low-precision
        ``dtype`` (None: where it is computed)."""
        if self.store_device is not None:
            return torch.device(self.store_device)
        return torch.device('cpu') if self.dtype != 'float32' else None

    def subspace(self, block: Tensor, n: int, device=None):
        """The :class:`~dldr.subspace.Subspace` of ``block`` (what a builder returned with this
        placement) for parameters on ``device`` (default: ``block``'s): see
        :func:`~dldr.subspace.store_basis`."""
        from .subspace import store_basis
        return store_basis(block, n, dtype=self.dtype, shard_comm=self.comm if self.shard else None,
                           device=device, basis_device=self.device)


@dataclass(frozen=True, eq=False)
class Basis:
    """Result of :func:`dldr_basis`.

    ``P`` is d x n float32 with orthonormal rows u_i^T; ``eigenvalues`` are all t eigenvalues
    λ_1 >= ... >= λ_t >= 0 of the centred Gram matrix G = W^T W (float64, CPU), i.e. the squared
    singular values of the centred trajectory W.
    """

    P: Tensor
    eigenvalues: Tensor

    @property
    def n_components(self) -> int:
        """d, the subspace dimension."""
        return self.P.shape[0]

    @property
    def n_snapshots(self) -> int:
        """t, the number of snapshots the basis was computed from."""
        return self.eigenvalues.numel()

    @property
    def explained_variance_ratio(self) -> Tensor:
        """λ_i / Σ_j λ_j for i = 1..d (sklearn's PCA ``explained_variance_ratio_``)."""
        return self.eigenvalues[:self.n_components] / self.eigenvalues.sum()

    @property
    def singular_values(self) -> Tensor:
        """sqrt(λ_i) for i = 1..d, the top singular values of the centred trajectory."""
        return self.eigenvalues[:self.n_components].sqrt()


def _unpack(placement, keywords):
    """(device, max_bytes, comm, gather, store_device) of a builder's ``placement`` and keywords."""
    place = Placement.of(placement, **keywords)
    return place.device, place.max_bytes, place.comm, place.gather, place.staging


def _trajectory_shape(snapshots) -> tuple[int, int]:
    """(t, n) of a (t, n) tensor or of a sequence of t snapshots of equal length n."""
    if isinstance(snapshots, Tensor):
        if snapshots.ndim != 2:
            raise ValueError(f'a snapshot tensor must be 2-D (t, n), got shape {tuple(snapshots.shape)}')
        return tuple(snapshots.shape)
    lengths = [len(s) for s in snapshots]
    for i, length in enumerate(lengths):
        if length != lengths[0]:
            raise ValueError(f'snapshots have different lengths: snapshot 0 has {lengths[0]} '
                             f'entries, snapshot {i} has {length}')
    return len(lengths), (lengths[0] if lengths else 0)


def _snapshot_chunk(snapshots, start: int, stop: int, device: torch.device,
                    centre: bool = False) -> Tensor:
    """Coordinates [start, stop) of every snapshot as a (t, stop - start) float64 block; with
    ``centre``, centred across snapshots (per coordinate, so chunk-wise centring is exact)."""
    if isinstance(snapshots, Tensor):
        block = snapshots[:, start:stop].to(device=device, dtype=torch.float64, copy=True)
    else:
        block = torch.empty(len(snapshots), stop - start, dtype=torch.float64, device=device)
        for row, snapshot in zip(block, snapshots):
            row.copy_(torch.as_tensor(snapshot[start:stop]))
    return block.sub_(block.mean(dim=0, keepdim=True)) if centre else block


def _prepare(snapshots, device):
    """(snapshots as a tensor or a list, t, n, device defaulting to the tensor's, else the CPU)."""
    if not isinstance(snapshots, Tensor):
        snapshots = list(snapshots)
    t, n = _trajectory_shape(snapshots)
    if device is None:
        device = snapshots.device if isinstance(snapshots, Tensor) else torch.device('cpu')
    return snapshots, t, n, torch.device(device)


def _chunk_ranges(n: int, bytes_per_coordinate: int, max_bytes: int | None,
                  comm: Comm) -> tuple[int, int, list[tuple[int, int]]]:
    """This rank's shard [lo, hi) of the n coordinates and its chunks [a, b), each at most
    ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`) of working memory."""
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if max_bytes <= 0:
        raise ValueError(f'max_bytes must be positive, got {max_bytes}')
    chunk = max(1, max_bytes // bytes_per_coordinate)
    lo, hi = shard_range(n, comm.rank, comm.world_size)
    return lo, hi, [(a, min(a + chunk, hi)) for a in range(lo, hi, chunk)]


def _stream_gram(block_of, t: int, ranges, device: torch.device, comm: Comm) -> Tensor:
    """Pass 1: Σ_chunks X_c X_c^T of the (t, b - a) float64 blocks ``block_of(a, b)``, summed over
    the ranks; t x t float64 on the CPU (identical on every rank)."""
    gram = torch.zeros(t, t, dtype=torch.float64, device=device)
    for a, b in ranges:
        block = block_of(a, b)
        gram.addmm_(block, block.T)
        del block  # free the last chunk before pass 2 allocates P
    gram = comm.all_reduce_(gram, 'sum').cpu()
    if not torch.isfinite(gram).all():
        raise ValueError('snapshots contain non-finite values')
    return gram


def _orthonormal_rows(rows_of, d: int, n: int, shard: tuple[int, int], ranges,
                      device: torch.device, comm: Comm, gather: bool = True,
                      store_device=None) -> Tensor:
    """Pass 2: the d x n float32 matrix with columns [a, b) = ``rows_of(a, b)`` (d x (b - a)),
    its rows re-orthonormalised, gathered from every rank's ``shard`` (without ``gather``: only
    this rank's columns ``shard``, d x (hi - lo)).  The result is held on ``store_device``
    (default ``device``, where it is computed chunk by chunk).

    With the summed overlap P P^T = L L^T (float64, from the rows before rounding), L^{-1} P has
    orthonormal rows spanning the same space, row i mixing only rows 1..i: the Gram–Schmidt
    order is kept.  Applied after a factorisation of the Gram matrix this is the second pass of
    a CholeskyQR2, which removes what rounding in the first left of the loss of orthogonality.
    """
    lo, hi = shard
    block = torch.empty(d, hi - lo, dtype=torch.float32, device=store_device or device)
    overlap = torch.zeros(d, d, dtype=torch.float64, device=device)
    for a, b in ranges:
        rows = rows_of(a, b).to(torch.float64)
        overlap.addmm_(rows, rows.T)
        block[:, a - lo:b - lo] = rows
        del rows
    comm.all_reduce_(overlap, 'sum')
    cholesky, info = torch.linalg.cholesky_ex(overlap)
    if info.item() != 0:
        raise ValueError(f'the {d} basis vectors are linearly dependent in float64')
    whitening = torch.linalg.solve_triangular(
        cholesky, torch.eye(d, dtype=torch.float64, device=device), upper=False)
    for a, b in ranges:
        block[:, a - lo:b - lo] = whitening @ block[:, a - lo:b - lo].to(device, torch.float64)
    return _gather_columns(block, n, comm, device) if gather else block


def dldr_basis(snapshots, n_components: int, placement: Placement | None = None,
               **keywords) -> Basis:
    """Top-``n_components`` principal directions of a trajectory (paper Algorithm 1).

    With X = [w_1 .. w_t] (n x t) and W = X H its centred version (H = I - 11^T/t), the rows of
    P = Λ_d^{-1/2} V_d^T W^T are the top-d left singular vectors of W, where G = W^T W = V Λ V^T.

    The computation streams over chunks of coordinates, touching only ``snapshot[a:b]`` of every
    snapshot at a time, in two passes: (1) G = Σ_chunks W_c^T W_c, (2) P[:, c] = Λ_d^{-1/2} V_d^T
    W_c^T.  Each chunk is centred across snapshots before use; this equals H X^T X H but avoids
    the cancellation of forming X^T X when the mean dominates the spread.  Everything is float64
    until P is stored as float32; the rows are finally re-orthonormalised (Cholesky of P P^T) to
    remove the effect of rounding in G and its eigendecomposition.

    With several ranks (``comm``), rank r streams only its block :func:`shard_range` of the
    coordinates: the t x t Gram partials and the d x d overlap partials are summed over the
    ranks, every rank decomposes the same summed G on the CPU (identical input, identical
    result), and the rows of P are gathered so that every rank returns the whole P.

    Args:
        snapshots: a (t, n) tensor, or a sequence of t snapshots each supporting ``len(s) == n``
            and ``s[a:b]`` (a 1-D tensor or array of any dtype/device), e.g. memory-mapped files.
        n_components: d, with 1 <= d <= t - 1.
        placement: a :class:`Placement` (device, store_device, max_bytes, comm, shard); about
            8 (t + 2d + 1) bytes per coordinate of working memory per chunk.  With
            ``shard=True``, ``P`` is only this rank's block of columns ``shard_range(n, rank,
            world_size)`` (d x (hi - lo)), not gathered: a sharded basis (:class:`CompactSubspace`).
        **keywords: the former spelling of the placement (``device``, ``max_bytes``, ``comm``,
            ``gather``, ``store_device``), applied on top of ``placement``.

    Raises:
        ValueError: bad ``n_components``, snapshots of unequal length, non-finite snapshots, or a
            trajectory with fewer than d non-negligible principal directions.
    """
    device, max_bytes, comm, gather, store_device = _unpack(placement, keywords)
    snapshots, t, n, device = _prepare(snapshots, device)
    d = n_components
    if d < 1:
        raise ValueError(f'n_components must be >= 1, got {d}')
    if d >= t:
        raise ValueError(f'n_components={d} must be < t={t}: a centred trajectory of t snapshots '
                         f'has rank <= t-1')
    shard = _chunk_ranges(n, 8 * (t + 2 * d + 1), max_bytes, comm)

    def centred(a, b):
        return _snapshot_chunk(snapshots, a, b, device, centre=True)

    gram = _stream_gram(centred, t, shard[2], device, comm)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eigenvalues = eigenvalues.flip(0).clamp_(min=0.0)  # G is PSD; clamp rounding below 0
    eigenvectors = eigenvectors.flip(1)
    if eigenvalues[d - 1] <= RANK_RTOL * eigenvalues[0]:
        raise ValueError(f'eigenvalue {d} of the centred Gram matrix is ~0 '
                         f'({eigenvalues[d - 1].item():.3g} vs largest {eigenvalues[0].item():.3g}): '
                         f'the trajectory has fewer than {d} independent directions '
                         f'(duplicate snapshots?); use fewer components')

    coefficients = (eigenvectors[:, :d] / eigenvalues[:d].sqrt()).T.contiguous().to(device)  # d x t
    P = _orthonormal_rows(lambda a, b: coefficients @ centred(a, b), d, n, shard[:2], shard[2],
                          device, comm, gather, store_device)
    return Basis(P=P, eigenvalues=eigenvalues)


def twa_basis(snapshots, n_components: int | None = None, placement: Placement | None = None,
              **keywords) -> Tensor:
    """Orthonormal basis of the raw (uncentred) snapshots, as Trainable Weight Averaging (Li et
    al., ICLR 2023, github nblt/TWA) builds it: Gram–Schmidt of w_1, w_2, ... in order.

    Returns P (d x n float32, orthonormal rows); row i spans w_i's component orthogonal to
    w_1..w_{i-1}, so the leading d rows span the first d snapshots (TWA uses all t: the default
    d = t).  Computed as a Cholesky QR, streamed like :func:`dldr_basis` (``comm`` shards it the
    same way): pass 1 accumulates the raw Gram matrix G = X_d^T X_d of the first d snapshots in
    float64, G = L L^T, pass 2 writes P[:, c] = L^{-1} X_c^T chunk by chunk, and the final
    re-orthonormalisation makes it a CholeskyQR2 (orthonormal to rounding even when a snapshot is
    nearly in the span of the earlier ones, as consecutive SGD snapshots are).

    Args:
        snapshots: as :func:`dldr_basis`.
        n_components: d, with 1 <= d <= t (default t, as TWA).
        placement: a :class:`Placement` (``shard``: only this rank's block of columns), as
            :func:`dldr_basis`; ``**keywords``: its former spelling.

    Raises:
        ValueError: d outside 1..t, unequal lengths, non-finite snapshots, or a snapshot whose
            distance to the span of the earlier ones is negligible (G_ii - |L_i,<i|^2 <=
            RANK_RTOL * G_ii), e.g. a duplicate.
    """
    device, max_bytes, comm, gather, store_device = _unpack(placement, keywords)
    snapshots, t, n, device = _prepare(snapshots, device)
    d = t if n_components is None else n_components
    if not 1 <= d <= t:
        raise ValueError(f'n_components={d} must lie in 1..t={t}: the span of t snapshots')
    snapshots = snapshots[:d]
    shard = _chunk_ranges(n, 8 * (3 * d + 1), max_bytes, comm)

    def raw(a, b):
        return _snapshot_chunk(snapshots, a, b, device)

    gram = _stream_gram(raw, d, shard[2], device, comm)
    cholesky, info = torch.linalg.cholesky_ex(gram)
    residual = cholesky.diagonal() ** 2  # squared distance of w_i to span(w_1 .. w_{i-1})
    if info.item() != 0 or (residual <= RANK_RTOL * gram.diagonal()).any():
        i = int(info.item()) or int((residual <= RANK_RTOL * gram.diagonal()).nonzero()[0, 0]) + 1
        raise ValueError(f'snapshot {i} of the range lies (numerically) in the span of the '
                         f'earlier ones (duplicate snapshots?); use fewer components')
    coefficients = torch.linalg.solve_triangular(
        cholesky, torch.eye(d, dtype=torch.float64), upper=False).to(device)  # L^{-1}
    return _orthonormal_rows(lambda a, b: coefficients @ raw(a, b), d, n, shard[:2], shard[2],
                             device, comm, gather, store_device)


def snapshot_mean(snapshots, placement: Placement | None = None, **keywords) -> Tensor:
    """(1/t) Σ w_i as a float32 n-vector, streamed over chunks of coordinates (TWA's starting
    point: the plain weight average).

    Args:
        snapshots: as :func:`dldr_basis`.
        placement: a :class:`Placement`: its ``device`` (where the mean is computed and held) and
            ``max_bytes``; ``**keywords``: their former spelling.
    """
    device, max_bytes, comm, gather, store_device = _unpack(placement, keywords)
    snapshots, t, n, device = _prepare(snapshots, device)
    mean = torch.empty(n, dtype=torch.float32, device=device)
    for a, b in _chunk_ranges(n, 8 * (t + 1), max_bytes, LOCAL)[2]:
        mean[a:b] = _snapshot_chunk(snapshots, a, b, device).mean(dim=0)
    return mean


RANDOM_BLOCK = 1024
"""Columns per independently seeded block of :func:`random_basis`'s Gaussian matrix."""


class _GaussianColumns:
    """Columns of a d x ∞ standard Gaussian float32 matrix, drawn on ``device`` in blocks of
    :data:`RANDOM_BLOCK` columns, in order, from one generator seeded by ``seed``: the same matrix
    however it is chunked or sharded.  Call with increasing, non-overlapping column ranges; the
    blocks before the first range are drawn and discarded."""

    def __init__(self, d: int, seed: int, device: torch.device):
        self.d, self.device = d, device
        self.generator = torch.Generator(device).manual_seed(seed)
        self.drawn, self.block = 0, None  # blocks drawn so far; the last one

    def __call__(self, a: int, b: int) -> Tensor:
        out = torch.empty(self.d, b - a, dtype=torch.float32, device=self.device)
        for k in range(a // RANDOM_BLOCK, -(-b // RANDOM_BLOCK)):
            if k < self.drawn - 1:
                raise ValueError('column ranges must be requested in increasing order')
            while self.drawn <= k:
                self.block = torch.randn(self.d, RANDOM_BLOCK, generator=self.generator,
                                         device=self.device)
                self.drawn += 1
            lo, hi = max(a, k * RANDOM_BLOCK), min(b, (k + 1) * RANDOM_BLOCK)
            out[:, lo - a:hi - a] = self.block[:, lo - k * RANDOM_BLOCK:hi - k * RANDOM_BLOCK]
        return out


def random_basis(n_components: int, n: int, seed: int, placement: Placement | None = None,
                 **keywords) -> Tensor:
    """A uniformly random d-dimensional subspace of R^n (Li et al. 2018; Larsen et al. 2022):
    P (d x n float32) = the Gaussian rows of :class:`_GaussianColumns`, orthonormalised (Cholesky
    of the summed P P^T, as :func:`dldr_basis` ends).

    Generated chunk by chunk on ``device`` (memory d x n + a chunk; ``comm`` shards the columns
    as :func:`dldr_basis` does): reproducible from ``seed``, and identical for any ``max_bytes``
    or number of ranks on the same kind of device (CPU and CUDA generators draw different numbers).

    Args:
        n_components: d, with 1 <= d <= n.
        n: the length of the parameter vectors.
        seed: the seed of the Gaussian matrix.
        placement: a :class:`Placement` (``device`` default: the CPU; ``shard``: only this rank's
            block of columns), as :func:`dldr_basis`; ``**keywords``: its former spelling.
    """
    d = n_components
    if not 1 <= d <= n:
        raise ValueError(f'n_components={d} must lie in 1..n={n}')
    device, max_bytes, comm, gather, store_device = _unpack(placement, keywords)
    device = torch.device('cpu' if device is None else device)
    lo, hi, ranges = _chunk_ranges(n, 12 * d, max_bytes, comm)
    return _orthonormal_rows(_GaussianColumns(d, seed, device), d, n,
                             (lo, hi), ranges, device, comm, gather, store_device)


def _gather_columns(block: Tensor, n: int, comm: Comm, device=None) -> Tensor:
    """The d x n matrix whose columns :func:`shard_range` are every rank's ``block``, on
    ``block``'s device; the rows travel through ``device`` (default: the same), e.g. a GPU for
    nccl when ``block`` is held in host memory."""
    if comm.world_size == 1:
        return block
    size = math.ceil(n / comm.world_size)
    device = block.device if device is None else torch.device(device)
    padded = torch.zeros(block.shape[0], size * comm.world_size, dtype=block.dtype, device=block.device)
    mine = torch.zeros(size, dtype=block.dtype, device=device)
    staged = device != block.device
    row_out = torch.empty(size * comm.world_size, dtype=block.dtype, device=device) if staged else None
    for i, row in enumerate(block):  # row by row: no second d x n copy is ever held
        mine[:row.numel()] = row
        comm.all_gather_(list((row_out if staged else padded[i]).split(size)), mine)
        if staged:
            padded[i] = row_out
    return padded[:, :n]

