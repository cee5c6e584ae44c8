"""Structured random subspaces: Fastfood (O(n) memory) and a fresh random subspace every step."""
import hashlib
import math

import torch
from torch import Tensor

from .subspace import Subspace


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

    Args:
        dim: d, with 1 <= d <= n.
        n: the length of the parameter vectors.
        seed: the seed of B, Π and G.
        device: where the products run (default: the CPU).
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

    def partial_coords(self, g: Tensor) -> Tensor:
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

    def partial_coords(self, g: Tensor) -> Tensor:
        self.current = self.make(draw_seed(self.seed, self.draws))
        self.draws += 1
        return self.current.partial_coords(g)

    def lift(self, c: Tensor) -> Tensor:
        if self.current is None:
            raise RuntimeError('lift before the first coords: no basis has been drawn yet')
        return self.current.lift(c)


