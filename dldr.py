"""DLDR: training in a tiny subspace spanned by the dominant directions of a training trajectory.

Li et al., "Low Dimensional Trajectory Hypothesis is True: DNNs Can Be Trained in Tiny Subspaces"
(TPAMI 2023).  Pure torch; see ``docs/METHOD.md`` for the formulas.

* Flat vectors: the trainable parameters of a model, flattened in ``named_parameters()`` order
  (BatchNorm running statistics are buffers, not part of the vector).
* :func:`dldr_basis` (Algorithm 1): P (d x n, orthonormal rows) spanning the top-d principal
  directions of the centred snapshots, computed by streaming over chunks of coordinates.
* Other subspaces, for comparison: :func:`twa_basis` (Trainable Weight Averaging: the span of
  the raw snapshots), :func:`random_basis` (a seeded random subspace), :class:`FastfoodSubspace`
  (a structured random map, O(n) memory), :class:`RedrawnSubspace` (a new random basis every
  step).
* :class:`Subspace`: the one interface every subspace kind offers — ``coords`` (g -> P g),
  ``lift`` (c -> P^T c), ``dim``, ``n``.  :class:`DenseSubspace` holds an explicit P (DLDR, TWA,
  random); :class:`CompactSubspace` holds it compactly: in bf16 / fp16 / int8, on another device,
  and/or only this rank's block of columns (sharded).  P-SGD (:func:`project_grads_`, then
  ``torch.optim.SGD``) and P-BFGS never know which kind they have.
* :class:`PBFGS` (Algorithm 2): BFGS on the coordinates g~ = P g with a backtracking Armijo
  line search, optionally plus momentum on the residual g - P^T g~.
* :class:`Comm`: the one place where data-parallel ranks communicate.  A subspace step exchanges
  the d coordinates of the gradient (mean_r P g_r = P mean_r g_r) and the loss scalars, never an
  n-vector (except with a sharded basis: a reduce-scatter of the gradient and an all-gather of
  the update); the basis extraction exchanges t x t and d x d partial sums and gathers P once
  (not at all when sharded).  The default :data:`LOCAL` is a single process (no communication);
  ``distributed.DistComm`` implements it with ``torch.distributed``.
"""
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_MAX_BYTES = 256 * 2**20
"""Default bound on the memory :func:`dldr_basis` keeps per chunk of coordinates (256 MiB)."""

RANK_RTOL = 1e-10
""":func:`dldr_basis` rejects a component whose eigenvalue is <= RANK_RTOL * largest eigenvalue."""


# --------------------------------------------------------------------------------------------
# Communication between data-parallel ranks
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Flat parameter / gradient vectors
# --------------------------------------------------------------------------------------------

def trainable_params(model: torch.nn.Module) -> list[Tensor]:
    """Parameters with ``requires_grad``, in ``model.named_parameters()`` order."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def _views_like(params: Sequence[Tensor], vec: Tensor) -> list[Tensor]:
    """Split the flat ``vec`` into views shaped like ``params``."""
    numels = [p.numel() for p in params]
    if vec.ndim != 1 or vec.numel() != sum(numels):
        raise ValueError(f'expected a flat vector of {sum(numels)} entries, got shape {tuple(vec.shape)}')
    return [v.view_as(p) for v, p in zip(vec.split(numels), params)]


def flat_params(params: Sequence[Tensor]) -> Tensor:
    """Concatenation of ``params`` as a new 1-D float32 tensor."""
    with torch.no_grad():
        return torch.cat([_float32(p.reshape(-1)) for p in params])


@torch.no_grad()
def set_flat_params_(params: Sequence[Tensor], vec: Tensor) -> None:
    """Copy the flat ``vec`` into ``params`` in place (cast to each parameter's dtype)."""
    torch._foreach_copy_(list(params), _views_like(params, vec))


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """Concatenation of the gradients of ``params`` as a new 1-D float32 tensor (0 where ``grad`` is None)."""
    return torch.cat([_float32((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1))
                      for p in params])


def _float32(t: Tensor) -> Tensor:
    # (no dispatch when already float32: these run once per parameter tensor on every step)
    return t if t.dtype == torch.float32 else t.float()


@torch.no_grad()
def set_flat_grad_(params: Sequence[Tensor], vec: Tensor) -> None:
    """Copy the flat ``vec`` into the ``.grad`` of ``params`` (allocated where None)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch._foreach_copy_([p.grad for p in params], _views_like(params, vec))


# --------------------------------------------------------------------------------------------
# Algorithm 1: the basis
# --------------------------------------------------------------------------------------------

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


def dldr_basis(snapshots, n_components: int, *, device=None, max_bytes: int | None = None,
               comm: Comm = LOCAL, gather: bool = True, store_device=None) -> Basis:
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
        device: where to compute and store P (default: the tensor's device, else CPU).
        max_bytes: bound on the per-chunk working memory, about 8 (t + 2d + 1) bytes per
            coordinate (default :data:`DEFAULT_MAX_BYTES`); the d x n result P is not counted.
        comm: the ranks sharing the work (default: this process alone).
        gather: False: ``P`` is only this rank's block of columns ``shard_range(n, rank,
            world_size)`` (d x (hi - lo)), not gathered: a sharded basis (:class:`CompactSubspace`).
        store_device: where the float32 result is held (default ``device``): e.g. the host,
            computing on a GPU that will only hold P in a low-precision copy.

    Raises:
        ValueError: bad ``n_components``, snapshots of unequal length, non-finite snapshots, or a
            trajectory with fewer than d non-negligible principal directions.
    """
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


def twa_basis(snapshots, n_components: int | None = None, *, device=None,
              max_bytes: int | None = None, comm: Comm = LOCAL, gather: bool = True,
              store_device=None) -> Tensor:
    """Orthonormal basis of the raw (uncentred) snapshots, as Trainable Weight Averaging (Li et
    al., ICLR 2023, github nblt/TWA) builds it: Gram–Schmidt of w_1, w_2, ... in order.

    Returns P (d x n float32, orthonormal rows); row i spans w_i's component orthogonal to
    w_1..w_{i-1}, so the leading d rows span the first d snapshots (TWA uses all t: the default
    d = t).  Computed as a Cholesky QR, streamed like :func:`dldr_basis` (``comm`` shards it the
    same way): pass 1 accumulates the raw Gram matrix G = X_d^T X_d of the first d snapshots in
    float64, G = L L^T, pass 2 writes P[:, c] = L^{-1} X_c^T chunk by chunk, and the final
    re-orthonormalisation makes it a CholeskyQR2 (orthonormal to rounding even when a snapshot is
    nearly in the span of the earlier ones, as consecutive SGD snapshots are).  ``gather=False``:
    only this rank's block of columns; ``store_device``: where P is held; as :func:`dldr_basis`.

    Raises:
        ValueError: d outside 1..t, unequal lengths, non-finite snapshots, or a snapshot whose
            distance to the span of the earlier ones is negligible (G_ii - |L_i,<i|^2 <=
            RANK_RTOL * G_ii), e.g. a duplicate.
    """
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


def snapshot_mean(snapshots, *, device=None, max_bytes: int | None = None) -> Tensor:
    """(1/t) Σ w_i as a float32 n-vector on ``device``, streamed over chunks of coordinates
    (TWA's starting point: the plain weight average)."""
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


def random_basis(n_components: int, n: int, seed: int, *, device=None,
                 max_bytes: int | None = None, comm: Comm = LOCAL, gather: bool = True,
                 store_device=None) -> Tensor:
    """A uniformly random d-dimensional subspace of R^n (Li et al. 2018; Larsen et al. 2022):
    P (d x n float32) = the Gaussian rows of :class:`_GaussianColumns`, orthonormalised (Cholesky
    of the summed P P^T, as :func:`dldr_basis` ends).

    Generated chunk by chunk on ``device`` (memory d x n + a chunk; ``comm`` shards the columns
    as :func:`dldr_basis` does): reproducible from ``seed``, and identical for any ``max_bytes``
    or number of ranks on the same kind of device (CPU and CUDA generators draw different numbers).
    ``gather=False``: only this rank's block of columns; ``store_device``: where P is held; as
    :func:`dldr_basis`.
    """
    d = n_components
    if not 1 <= d <= n:
        raise ValueError(f'n_components={d} must lie in 1..n={n}')
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


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------

class Subspace:
    """A d-dimensional subspace of the n-dimensional parameter space, seen through its coordinates.

    Every subspace kind implements :meth:`coords` (g -> P g) and :meth:`lift` (c -> P^T c), its
    adjoint; P-SGD and P-BFGS use nothing else (and :meth:`gradient_fraction` for a statistic).
    For the dense kinds P has orthonormal rows (so ``project`` is the orthogonal projection);
    :class:`FastfoodSubspace` is only approximately orthonormal.

    Data-parallel ranks call :meth:`coords` on their own gradient g_r and average the results
    (``comm.all_reduce_``): for every kind the rank-mean of ``coords(g_r)`` is P mean_r g_r.  A
    sharded basis (:class:`CompactSubspace`) communicates inside :meth:`coords` and :meth:`lift`
    (collectives: every rank calls them in the same order, as P-SGD and P-BFGS do); its
    ``coords(g_r)`` alone is not P g_r, only the rank-mean is P mean_r g_r.
    """

    dim: int
    """d, the number of coordinates."""
    n: int
    """n, the length of the parameter vectors."""

    def coords(self, g: Tensor) -> Tensor:
        """P g: the d coordinates of the n-vector ``g``."""
        raise NotImplementedError

    def lift(self, c: Tensor) -> Tensor:
        """P^T c: the n-vector with coordinates ``c``."""
        raise NotImplementedError

    def project(self, g: Tensor) -> Tensor:
        """P^T P g: orthogonal projection of ``g`` onto the subspace."""
        return self.lift(self.coords(g))

    def gradient_fraction(self, g: Tensor, coords: Tensor) -> Tensor:
        """|P g|^2 / |g|^2 (float64 device scalar) from ``g`` and ``coords = self.coords(g)``:
        the fraction of this rank's gradient the subspace holds (exact for orthonormal rows)."""
        return coords.double().square().sum() / torch.dot(g, g).double()  # no n-length copy


class DenseSubspace(Subspace):
    """The subspace span(P^T) of an explicit basis P (d x n, orthonormal rows)."""

    def __init__(self, P: Tensor):
        if P.ndim != 2:
            raise ValueError(f'P must be 2-D (d, n), got shape {tuple(P.shape)}')
        self.P = P
        self.dim, self.n = P.shape

    def coords(self, g: Tensor) -> Tensor:
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
        r receives W ḡ[lo:hi] and returns W P_r ḡ[lo:hi].  The caller's all-reduce (mean) of
        the d coordinates then gives Σ_r P_r ḡ[lo:hi] = P ḡ, exactly as with the whole P.
      - ``lift(c)`` (c identical on every rank) computes this rank's block P_r^T c and
        all-gathers the blocks into the n-vector P^T c on every rank.

      Per P-SGD step each rank passes W ceil(n/W) floats to the reduce-scatter and to the
      all-gather and d to the all-reduce (docs/METHOD.md: the bytes).  With one rank (W = 1) no
      collective is made and ``block`` is the whole P.

    :meth:`gradient_fraction` is NaN when sharded with W > 1 (no rank holds P g_r).
    """

    def __init__(self, block: Tensor, n: int, *, dtype: str = 'float32', comm: Comm | None = None,
                 device=None, chunk_bytes: int = PRODUCT_CHUNK_BYTES):
        if dtype not in BASIS_DTYPES:
            raise ValueError(f'dtype must be one of {tuple(BASIS_DTYPES)}, got {dtype!r}')
        if block.ndim != 2:
            raise ValueError(f'the basis block must be 2-D (d, columns), got shape {tuple(block.shape)}')
        self.comm = comm if comm is not None and comm.world_size > 1 else None
        world, rank = (comm.world_size, comm.rank) if self.comm else (1, 0)
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

    def coords(self, g: Tensor) -> Tensor:
        if self.comm is not None:
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
        if self.comm is None:
            return local
        full = torch.empty(self.shard_size * self.world_size, dtype=torch.float32, device=c.device)
        if local.numel() != self.shard_size:
            local = torch.nn.functional.pad(local, (0, self.shard_size - local.numel()))
        self.comm.all_gather_(list(full.split(self.shard_size)), local)
        return full[:self.n]

    def project(self, g: Tensor) -> Tensor:
        """P^T P ḡ, the projection of the rank-mean gradient when sharded (a collective); P^T P g
        otherwise."""
        if self.comm is None:
            return self.lift(self.coords(g))
        return self.lift(self.comm.all_reduce_(self.coords(g)))

    def gradient_fraction(self, g: Tensor, coords: Tensor) -> Tensor:
        if self.comm is None:
            return super().gradient_fraction(g, coords)
        return torch.full((), float('nan'), dtype=torch.float64, device=coords.device)


def store_basis(block: Tensor, n: int, *, dtype: str = 'float32', shard_comm: Comm | None = None,
                device=None, basis_device=None) -> Subspace:
    """The :class:`Subspace` of a float32 basis block returned by a basis function: the plain
    :class:`DenseSubspace` for a whole float32 P on ``device`` (where the parameters live), else
    a :class:`CompactSubspace` (``dtype``; ``shard_comm``: the ranks ``block`` is sharded over,
    computed with ``gather=False``) on ``basis_device``.  Both devices default to ``block``'s."""
    basis_device = block.device if basis_device is None else torch.device(basis_device)
    device = basis_device if device is None else torch.device(device)
    if (dtype == 'float32' and (shard_comm is None or shard_comm.world_size == 1)
            and device == basis_device == block.device):
        return DenseSubspace(block)
    return CompactSubspace(block, n, dtype=dtype, comm=shard_comm, device=basis_device)


def fwht(x: Tensor) -> Tensor:
    """Unnormalised fast Walsh–Hadamard transform H x along the last dimension (length 2^k,
    Sylvester order: H_ij = (-1)^popcount(i & j), H H = 2^k I), in O(2^k k) operations."""
    length = x.shape[-1]
    if length & (length - 1):
        raise ValueError(f'fwht needs a power-of-two length, got {length}')
    y, h = x, 1
    while h < length:
        y = y.reshape(*x.shape[:-1], length // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    return y.reshape(x.shape)


class FastfoodSubspace(Subspace):
    """The structured random subspace of Le et al. (2013) as the intrinsic-dimension code of Li
    et al. (2018, uber-research/intrinsic-dimension, ``tf_fastfood_transform``) uses it.

    With L = 2^ceil(log2 n) (one block, zero padding: d <= n <= L),
    lift(c) = M c = scale · S_n H G Π H B pad_L(c), where B = diag(±1), H the unnormalised
    Walsh–Hadamard matrix, Π a permutation ((Π x)_i = x_{Π[i]}), G = diag(N(0, 1)), S_n keeps
    the first n entries and scale = 1 / sqrt(n |G|^2), which makes E |M c| = |c|: lift is an
    approximate isometry (exactly unit columns when n = L).  ``coords`` is its exact adjoint
    M^T g.  O(L) memory and O(L log L) time per product; B, Π, G come from a CPU generator
    seeded by ``seed`` (the same on every device).

    M's columns are only approximately orthonormal, so ``project`` = M M^T is not an orthogonal
    projection.  Nothing in P-SGD or P-BFGS needs one: P-SGD's gradient M M^T g = M ∇_c f is SGD
    (with momentum) on f(w_0 + M c), and P-BFGS is BFGS on the same reparametrisation, so their
    iterates stay in w_0 + range(M) exactly as with an orthonormal basis (the residual momentum
    of P-BFGS then uses g - M M^T g).
    """

    def __init__(self, dim: int, n: int, seed: int, device=None):
        if not 1 <= dim <= n:
            raise ValueError(f'a Fastfood subspace needs 1 <= d <= n, got d={dim}, n={n}')
        self.dim, self.n = dim, n
        self.length = 1 << max(n - 1, 0).bit_length()
        generator = torch.Generator().manual_seed(seed)
        B = torch.randint(0, 2, (self.length,), generator=generator) * 2 - 1
        Pi = torch.randperm(self.length, generator=generator)
        G = torch.randn(self.length, generator=generator, dtype=torch.float64)
        self.scale = 1.0 / math.sqrt(n * float(G.square().sum()))
        self.device = torch.device('cpu' if device is None else device)
        self.B, self.G = B.to(self.device, torch.float32), G.to(self.device, torch.float32)
        self.Pi = Pi.to(self.device)
        self.Pi_inverse = torch.argsort(self.Pi)

    def lift(self, c: Tensor) -> Tensor:
        x = torch.zeros(self.length, dtype=torch.float32, device=self.device)
        x[:self.dim] = c.float() * self.B[:self.dim]
        x = fwht(fwht(x)[self.Pi] * self.G)
        return x[:self.n].mul_(self.scale)

    def coords(self, g: Tensor) -> Tensor:
        y = torch.zeros(self.length, dtype=torch.float32, device=self.device)
        y[:self.n] = g
        y = fwht(fwht(y).mul_(self.G)[self.Pi_inverse])
        return y[:self.dim].mul_(self.B[:self.dim]).mul_(self.scale)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw number ``draw`` of a stream seeded by ``seed``: a hash of the pair, so
    nearby pairs give unrelated streams (``seed + draw`` would make stream s at draw k the same
    as stream s+1 at draw k-1)."""
    digest = hashlib.blake2b(f'{seed},{draw}'.encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') >> 1  # a non-negative int64


class RedrawnSubspace(Subspace):
    """A fresh random subspace for every step (Gressmann et al. 2020, "random bases descent"): each
    call of :meth:`coords` draws the next basis, ``make(seed)``, and :meth:`lift` uses the basis of
    the latest :meth:`coords` — so one P-SGD step (coords of the gradient, lift of the update)
    happens in one basis, and the next step in another.  Draw k uses seed ``draw_seed(seed, k)``:
    every rank, making the same calls, draws the same bases.

    The iterates are not confined to one subspace (that is the point), so P-BFGS, whose curvature
    pairs live in one fixed coordinate system, cannot use it.

    Args:
        make: ``seed -> Subspace`` of dimension ``dim`` in R^n (e.g. a :class:`FastfoodSubspace`:
            O(n log n) per draw, where a dense Gaussian d x n basis costs d·n random numbers).
        dim, n: the dimensions of what ``make`` returns.
        seed: the seed of the stream of bases.
    """

    def __init__(self, make, dim: int, n: int, seed: int):
        self.make, self.dim, self.n, self.seed = make, dim, n, seed
        self.draws, self.current = 0, None

    def coords(self, g: Tensor) -> Tensor:
        self.current = self.make(draw_seed(self.seed, self.draws))
        self.draws += 1
        return self.current.coords(g)

    def lift(self, c: Tensor) -> Tensor:
        if self.current is None:
            raise RuntimeError('lift before the first coords: no basis has been drawn yet')
        return self.current.lift(c)


def as_subspace(basis) -> Subspace:
    """A :class:`Subspace` as is; a d x n tensor P as its :class:`DenseSubspace`."""
    return basis if isinstance(basis, Subspace) else DenseSubspace(basis)


@torch.no_grad()
def project_grads_(params: Sequence[Tensor], subspace, comm: Comm = LOCAL) -> Tensor:
    """Replace the gradients of ``params`` by P^T c, c = the rank-mean of P g (for P-SGD).

    Ranks exchange only the d coordinates c (mean_r P g_r = P mean_r g_r).  An optimizer that only
    sees these gradients (SGD with momentum, no weight decay) keeps every iterate in
    w_start + span(P^T).  ``subspace``: a :class:`Subspace` or a d x n tensor P.  Returns c.
    """
    subspace = as_subspace(subspace)
    coords = comm.all_reduce_(subspace.coords(flat_grad(params)))
    set_flat_grad_(params, subspace.lift(coords))
    return coords


# --------------------------------------------------------------------------------------------
# Algorithm 2: P-BFGS
# --------------------------------------------------------------------------------------------

STAT_KEYS = ('steps', 'trials', 'failed_searches', 'nonfinite_skips', 'step_size_sum',
             'curvature_skips', 'loss_sum', 'accepted_loss_sum', 'captured_sum')
CURVATURE_PAIRS = ('consecutive', 'same-batch')


class PBFGS(torch.optim.Optimizer):
    """BFGS in the subspace span(P^T) with backtracking line search (paper Algorithm 2).

    Each :meth:`step` on the current mini-batch, with f and g = ∇f at the current w:

    1. g~ = P g.  If a previous step s exists, with y = g~ - g~_prev and y^T s > ``curvature_eps``:
       r = 1 / y^T s, V = I - r y s^T, B <- V^T B V + r s s^T (inverse-Hessian update, B_0 = I).
    2. p = -B g~, δ = g~^T p.  Backtracking from α = 1: evaluate f(w + α P^T p) and accept the first
       α with f_new < f + σ α δ, else α <- ρ α, at most ``max_trials`` evaluations.
    3. s = α p, w <- w + P^T s, g~_prev = g~.  If ``alpha`` > 0, residual momentum on the part of
       the gradient outside the subspace: M <- γ M + (g - P^T g~), w <- w - alpha M.

    Curvature pairs (``curvature_pairs``): 'consecutive' (the paper's Algorithm 2) takes
    y = g~_k - g~_{k-1}, two gradients of two different mini-batches, so y holds the difference
    of their sampling noise as well as curvature; 'same-batch' (as online L-BFGS, Schraudolph et
    al. 2007) evaluates the gradient once more after an accepted step, on the same mini-batch,
    and takes y = g~(w + P^T s) - g~(w): one more forward and backward pass per step, and a pair
    that measures curvature only.  The BatchNorm buffers are restored after that evaluation.

    If all trials fail the search takes no step: s = 0 (so the next curvature update is skipped)
    and the failure is counted in ``stats['failed_searches']``; residual momentum still applies.
    If the loss or the gradient at w is non-finite the whole step is skipped: weights unchanged,
    buffers restored to their values before the step, B reset to I and g~_prev, s forgotten
    (``stats['nonfinite_skips']``).  Trials never change anything but their returned loss:
    ``buffers`` (BatchNorm running statistics) are restored bit-exactly after each trial, and the
    weights end bit-exactly at w (+ the residual momentum term) or at the accepted trial point.

    ``stats`` counts ``steps``, ``trials`` (closure evaluations in line searches),
    ``failed_searches``, ``nonfinite_skips`` and ``curvature_skips`` (pairs with y^T s <=
    ``curvature_eps``, whose update is skipped), and sums the accepted step sizes α
    (``step_size_sum``), the losses at the evaluation points (``loss_sum``, over the steps) and
    the accepted trials' losses (``accepted_loss_sum``, over the accepted steps) since the last
    :meth:`reset_stats`: loss_sum/steps - accepted_loss_sum/accepted compares a step's gain on
    its own mini-batch with the loss the next, fresh mini-batch finds; and ``captured_sum``, the
    sum over steps of |P g|^2 / |g|^2, the fraction of the (this rank's) gradient the subspace
    holds (exact for orthonormal rows), which tells a subspace that cannot descend
    (:meth:`Subspace.gradient_fraction`: NaN with a basis sharded over several ranks).
    :meth:`reset_stats` adds ``gradient_signal`` = |mean_k g~_k|^2 / mean_k |g~_k|^2 over the
    steps since the last reset: 1 when every mini-batch's subspace gradient points the same way,
    about 1/steps when they are pure sampling noise (steps that fit their own batch only).

    Data-parallel ranks (``comm``) each evaluate the closure on their share of the mini-batch; the
    loss and the d gradient coordinates are averaged in one all-reduce per step and each trial's
    loss in one scalar all-reduce, so B, every decision and every iterate are identical on all
    ranks.  No n-vector is communicated (except the residual with ``alpha`` > 0), unless the
    basis is sharded (:class:`CompactSubspace`: a reduce-scatter of the gradient and an
    all-gather of the lifted direction per step, inside ``coords`` and ``lift``).
    ``subspace`` is a :class:`Subspace` (or a d x n tensor P); ``params`` must be ordered as the
    flat vectors it was built from (:func:`trainable_params`).
    The state (B, g~_prev, s, M) lives in ``self.state`` and survives ``state_dict()`` /
    ``load_state_dict()``; P itself is not saved.  B and the d-vectors are float64 on P's device:
    they cost O(d^2) and keep the update accurate when y^T s is tiny (y is a difference of two
    noisy gradients); the n-vectors are float32.  Host syncs: one per trial (its accept/reject;
    the finiteness of the loss and gradient is read with the first trial's, so on the rare
    non-finite step one forward pass is wasted and not counted as a trial).

    The closure re-evaluates the model in train mode on the current mini-batch and returns the
    loss.  :meth:`step` calls it once with grad enabled, where it must zero the gradients and
    backpropagate (it may average the gradients of several mini-batches and return the last
    batch's loss), then for each trial under ``torch.no_grad()``, where it only returns the loss
    (on the last mini-batch)::

        def closure():
            loss = criterion(model(x), y)
            if torch.is_grad_enabled():
                optimizer.zero_grad()
                loss.backward()
            return loss

        optimizer = PBFGS(trainable_params(model), basis.P, buffers=list(model.buffers()))
        loss = optimizer.step(closure)
    """

    def __init__(self, params: Iterable[Tensor], subspace, *, buffers: Iterable[Tensor] = (),
                 sigma: float = 0.4, rho: float = 0.4, max_trials: int = 20, alpha: float = 0.0,
                 gamma: float = 0.9, curvature_eps: float = 1e-20,
                 curvature_pairs: str = 'consecutive', comm: Comm = LOCAL):
        if not 0.0 < sigma < 1.0:
            raise ValueError(f'sigma must be in (0, 1), got {sigma}')
        if not 0.0 < rho < 1.0:
            raise ValueError(f'rho must be in (0, 1), got {rho}')
        if max_trials < 1:
            raise ValueError(f'max_trials must be >= 1, got {max_trials}')
        if curvature_pairs not in CURVATURE_PAIRS:
            raise ValueError(f'curvature_pairs must be one of {CURVATURE_PAIRS}, got {curvature_pairs!r}')
        if alpha < 0.0 or gamma < 0.0:
            raise ValueError(f'alpha and gamma must be >= 0, got alpha={alpha}, gamma={gamma}')
        defaults = dict(sigma=sigma, rho=rho, max_trials=max_trials, alpha=alpha, gamma=gamma,
                        curvature_eps=curvature_eps, curvature_pairs=curvature_pairs)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError('PBFGS supports a single parameter group')
        n = sum(p.numel() for p in self._params)
        if isinstance(subspace, Tensor) and (subspace.ndim != 2 or subspace.shape[1] != n):
            raise ValueError(f'P must have shape (d, {n}) for these parameters, '
                             f'got {tuple(subspace.shape)}')
        self.subspace = as_subspace(subspace)
        if self.subspace.n != n:
            raise ValueError(f'the subspace lives in R^{self.subspace.n}, these parameters in R^{n}')
        self.comm = comm
        self._buffers = list(buffers)
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self._coords_moments = self._zero_moments()
        self._reset_curvature()
        # Work space allocated once (a step allocates three n-vectors: the flat gradient, w and
        # the lifted direction; trials allocate none): the trial point with views shaped like the
        # parameters, and two copies of the buffers (before the step, for a skipped step; after
        # the gradient evaluation, restored after each trial).
        self._trial = torch.empty(n, dtype=torch.float32, device=self._params[0].device)
        self._trial_views = _views_like(self._params, self._trial)
        self._buffers_before = [b.detach().clone() for b in self._buffers]
        self._buffers_at_w = [b.detach().clone() for b in self._buffers]

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]['params']

    @property
    def _device(self) -> torch.device:
        return self._params[0].device

    @property
    def _state(self) -> dict:
        """All optimizer state, kept under the first parameter (as torch.optim.LBFGS does)."""
        return self.state[self._params[0]]

    def _reset_curvature(self) -> None:
        """B <- I and forget g~_prev, s and a same-batch y."""
        self._state['B'] = torch.eye(self.subspace.dim, dtype=torch.float64, device=self._device)
        for key in ('prev_coords', 'prev_step', 'pair_y'):
            self._state.pop(key, None)

    def reset_stats(self) -> dict[str, float]:
        """Return the counters accumulated since the last reset (e.g. one epoch), with
        ``gradient_signal``, and zero them (one host sync)."""
        stats, self.stats = self.stats, dict.fromkeys(STAT_KEYS, 0)
        total, squares, count = self._coords_moments
        stats['gradient_signal'] = (total.square().sum() / (count * squares)).item() if count else float('nan')
        self._coords_moments = self._zero_moments()
        return stats

    def _zero_moments(self) -> list:
        """Sum of g~ (d, float64, on the device), sum of |g~|^2 and the number of steps."""
        return [torch.zeros(self.subspace.dim, dtype=torch.float64, device=self._device),
                torch.zeros((), dtype=torch.float64, device=self._device), 0]

    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, but keeping each saved tensor's dtype
        (the base class casts floating state to the parameters' dtype, rounding B to float32)."""
        super().load_state_dict(state_dict)
        saved = next(iter(state_dict['state'].values()), {})
        for key, value in saved.items():
            if isinstance(value, Tensor):
                self._state[key] = value.to(device=self._device, copy=True)

    def _update_inverse_hessian(self, coords: Tensor) -> tuple[Tensor, Tensor | None]:
        """BFGS update of B from the last pair (y = g~ - g~_prev, or the same-batch y) and s,
        on device (r = 0 skips it).  Returns B and whether the pair was skipped (a device bool,
        None without a pair)."""
        state = self._state
        B, skipped = state['B'], None
        if 'prev_coords' in state:
            y = state['pair_y'] if 'pair_y' in state else coords - state['prev_coords']
            s = state['prev_step']
            curvature = y @ s
            skipped = ~(curvature > self.param_groups[0]['curvature_eps'])
            r = torch.where(curvature > self.param_groups[0]['curvature_eps'],
                            curvature.reciprocal(), torch.zeros_like(curvature))
            V = torch.eye(len(s), dtype=B.dtype, device=B.device) - r * torch.outer(y, s)
            B = V.T @ B @ V + r * torch.outer(s, s)
            state['B'] = B
        return B, skipped

    def _line_search(self, closure, loss: Tensor, w: Tensor, direction: Tensor, slope: Tensor,
                     finite: Tensor, skipped: Tensor | None, captured: Tensor) -> float | None:
        """Backtracking Armijo search along w + α direction.

        Returns the accepted α with the parameters left at that trial point, 0.0 when every trial
        failed (parameters left at the last trial: the caller rewrites them), or None when
        ``finite`` (a device bool: loss and gradient at w are finite) is false.  ``finite``, the
        curvature update's ``skipped`` and the losses for ``stats`` are read together with each
        trial's comparison, so a step costs one host sync per trial and no other.  Each trial's loss is the rank-mean (one scalar all-reduced), so every rank makes
        the same decision.  Every trial point is computed from the saved w (no drift) and the
        buffers are restored after each trial.
        """
        group = self.param_groups[0]
        _copy_all_(self._buffers_at_w, self._buffers)
        step_size = 1.0
        for trial_index in range(group['max_trials']):
            torch.add(w, direction, alpha=step_size, out=self._trial)
            torch._foreach_copy_(self._params, self._trial_views)
            trial_loss = self.comm.all_reduce_(_loss_tensor(closure(), self._device))
            _copy_all_(self._buffers, self._buffers_at_w)
            accept = trial_loss[0].double() < loss + group['sigma'] * step_size * slope
            if trial_index == 0:
                no_pair = torch.zeros((), dtype=torch.bool, device=accept.device)
                is_finite, pair_skipped, accepted, f, f_trial, fraction = torch.stack((
                    finite.double(), (no_pair if skipped is None else skipped).double(),
                    accept.double(), loss, trial_loss[0].double(), captured)).tolist()
                if not is_finite:  # this evaluation was wasted; it is not counted as a trial
                    return None
                self.stats['curvature_skips'] += int(pair_skipped)
                self.stats['loss_sum'] += f
                self.stats['captured_sum'] += fraction
            else:
                accepted, f_trial = torch.stack((accept.double(), trial_loss[0].double())).tolist()
            self.stats['trials'] += 1
            if accepted:
                self.stats['step_size_sum'] += step_size
                self.stats['accepted_loss_sum'] += f_trial
                return step_size
            step_size *= group['rho']
        self.stats['failed_searches'] += 1
        return 0.0

    @torch.no_grad()
    def step(self, closure) -> Tensor:
        """One P-BFGS step; returns the loss at the evaluation point (before the step), the mean
        over the ranks."""
        group, state, subspace = self.param_groups[0], self._state, self.subspace
        self.stats['steps'] += 1
        _copy_all_(self._buffers_before, self._buffers)
        with torch.enable_grad():
            loss = closure()
        grad = flat_grad(self._params)
        local_coords = subspace.coords(grad)
        captured = subspace.gradient_fraction(grad, local_coords)
        # One message per step: the d gradient coordinates and the loss, averaged over the ranks.
        packed = self.comm.all_reduce_(torch.cat((local_coords, _loss_tensor(loss, grad.device))))
        coords32, f = packed[:-1], packed[-1].double()
        finite = torch.isfinite(packed).all()  # read with the first trial

        coords = coords32.double()
        B, skipped = self._update_inverse_hessian(coords)
        direction = -(B @ coords)
        w = flat_params(self._params)
        step_size = self._line_search(closure, f, w, subspace.lift(direction.float()),
                                      coords @ direction, finite, skipped, captured)
        if step_size is None:  # non-finite loss or gradient: skip the whole step
            set_flat_params_(self._params, w)
            _copy_all_(self._buffers, self._buffers_before)
            self._reset_curvature()
            self.stats['nonfinite_skips'] += 1
            return packed[-1]
        moments = self._coords_moments
        moments[0] += coords
        moments[1] += coords.square().sum()
        moments[2] += 1
        state['prev_coords'] = coords
        state['prev_step'] = step_size * direction
        state.pop('pair_y', None)
        if group['curvature_pairs'] == 'same-batch' and step_size > 0.0:
            # the gradient at the accepted point on the same mini-batch (the parameters hold it);
            # its BatchNorm buffer updates are undone, as a trial's are
            with torch.enable_grad():
                closure()
            _copy_all_(self._buffers, self._buffers_at_w)
            new_coords = self.comm.all_reduce_(subspace.coords(flat_grad(self._params)))
            state['pair_y'] = new_coords.double() - coords
        # The parameters hold the accepted trial point, which is also in self._trial; rewrite them
        # (from self._trial) only where they change: a failed search, or residual momentum.
        if step_size == 0.0:
            self._trial.copy_(w)
        if group['alpha'] != 0.0:
            # The residual g - P^T g~ needs the rank-mean of the whole gradient: an n-vector
            # all-reduce, paid only when residual momentum is on.
            self.comm.all_reduce_(grad)
            if 'residual_momentum' not in state:
                state['residual_momentum'] = torch.zeros_like(grad)
            momentum = state['residual_momentum']
            momentum.mul_(group['gamma']).add_(grad).sub_(subspace.lift(coords32))
            self._trial.sub_(momentum, alpha=group['alpha'])
        if step_size == 0.0 or group['alpha'] != 0.0:
            torch._foreach_copy_(self._params, self._trial_views)
        return packed[-1]


def _copy_all_(targets: list[Tensor], sources: list[Tensor]) -> None:
    """Copy each source into its target in place (an empty list is a no-op)."""
    if targets:
        torch._foreach_copy_(targets, sources)


def _loss_tensor(loss, device: torch.device) -> Tensor:
    """A closure's loss (tensor or number) as a detached 1-element tensor on ``device``: float64
    if it is float64, else float32 (4 bytes on the wire)."""
    loss = torch.as_tensor(loss, device=device).detach().reshape(1)
    return loss if loss.dtype == torch.float64 else loss.float()
