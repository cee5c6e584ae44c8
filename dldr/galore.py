"""GaLore: AdamW on gradients projected onto a low-rank subspace of each weight matrix, the
subspace re-drawn from the gradient itself every T steps (Zhao et al., "GaLore: Memory-Efficient
LLM Training by Gradient Low-Rank Projection", ICML 2024).

Where DLDR trains in one subspace of all the weights, taken from a trajectory, GaLore keeps full
training but stores Adam's moments in an r-dimensional subspace per matrix: for an m x n weight
(m >= n) they are m x r instead of m x n.  The formulas are in docs/METHOD.md, "GaLore".
"""
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

PROJ_TYPES = ('std', 'reverse_std', 'left', 'right')
"""Which side of an m x n gradient G is projected: 'right' (G V_r, moments m x r), 'left'
(U_r^T G, moments r x n), 'std' the smaller side (right when m >= n, as GaLore), 'reverse_std' the
larger."""


def projection_side(shape: tuple[int, int], proj_type: str) -> str:
    """'left' or 'right': the side ``proj_type`` projects a matrix of ``shape`` on."""
    m, n = shape
    if proj_type == 'std':
        return 'right' if m >= n else 'left'
    if proj_type == 'reverse_std':
        return 'left' if m >= n else 'right'
    return proj_type


def orthogonal_factor(matrix: Tensor, rank: int, side: str) -> Tensor:
    """The top-``rank`` singular vectors of ``matrix`` (an SVD in float32), as rows of an
    r x n tensor (``side='right'``, V_r^T) or columns of an m x r tensor (``'left'``, U_r).

    Each vector's sign is fixed so that its entry of largest magnitude is positive: an SVD's
    signs are arbitrary and differ between libraries and devices, and the Adam moments, kept in
    these coordinates across re-draws, would otherwise depend on them.

    A non-finite ``matrix`` (a diverging run) gives a NaN factor of the right shape rather than an
    error, so the step makes the weights non-finite and the training loop's own check reports it.
    """
    m, n = matrix.shape
    if not torch.isfinite(matrix).all():
        shape = (min(rank, m, n), n) if side == 'right' else (m, min(rank, m, n))
        return torch.full(shape, float('nan'), device=matrix.device)
    u, _, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    rows = vh[:rank] if side == 'right' else u[:, :rank].T
    signs = torch.sign(rows.gather(1, rows.abs().argmax(dim=1, keepdim=True)))
    rows = rows * signs
    return rows if side == 'right' else rows.T


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def projected_count(model_or_params, rank: int) -> tuple[int, int]:
    """(how many of the tensors of 2+ dimensions a ``rank`` projection actually reduces, i.e.
    whose matrix view has a smaller side above ``rank``; how many there are)."""
    params = model_or_params.parameters() if hasattr(model_or_params, 'parameters') else model_or_params
    sides = [min(p.shape[0], p[0].numel()) for p in params if p.ndim >= 2]
    return sum(side > rank for side in sides), len(sides)


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore's gradient low-rank projection, a drop-in :class:`torch.optim.Optimizer`.

    In a param group with a ``rank``, every parameter of two or more dimensions is a matrix G of
    shape (shape[0], rest) (a convolution's kernel: out x in·kh·kw).  Every ``update_proj_gap``
    steps, its first included, the projector is re-drawn from that step's gradient: its top
    ``rank`` singular vectors (:func:`orthogonal_factor`) on the side :func:`projection_side`
    picks.  The step is AdamW's in the projected coordinates R = G V_r (or U_r^T G):
    M <- β1 M + (1-β1) R, V <- β2 V + (1-β2) R², N = (M / (1-β1^t)) / (sqrt(V / (1-β2^t)) + ε),
    w <- (1 - lr·λ) w - lr · scale · N V_r^T (or U_r N).  The moments carry over when the
    projector is re-drawn, as in GaLore.  Parameters of one dimension (biases, norms) and groups
    without a ``rank`` take torch's AdamW step.

    Differences from GaLore's reference optimizer (galore_torch.AdamW): torch.optim.AdamW's
    formula and defaults (ε added to the bias-corrected sqrt(V), 1e-8, and weight decay 1e-2
    before the step) rather than transformers' (ε 1e-6 added to the uncorrected sqrt(V), decay
    after the step); the singular vectors' signs are fixed (see :func:`orthogonal_factor`); a
    tensor of 3+ dimensions is flattened to a matrix (galore_torch has a Tucker projector for
    groups that set ``dim`` > 2).  A ``rank`` at or above a matrix's smaller side keeps all of it:
    the step is then Adam in a rotated basis and saves no memory (:func:`projected_count` says
    how many matrices a rank reduces).

    The state (``step``, ``exp_avg``, ``exp_avg_sq``, ``projector``) is made of tensors in the
    parameter's dtype and an int, so ``state_dict()`` reloads with ``torch.load(weights_only=True)``
    and a resumed run continues bit-identically.  Under DDP every rank holds the same averaged
    gradient and so draws the same projector; no communication is needed.

    Args:
        params: parameters or param-group dicts; any argument below can be set per group.
        lr: learning rate (default 1e-3).
        betas: Adam's (β1, β2) (default (0.9, 0.999)).
        eps: ε (default 1e-8).
        weight_decay: decoupled weight decay λ (default 1e-2).
        rank: r, the projection's rank; None (the default) leaves a group unprojected.
        update_proj_gap: T, steps between projector re-draws (default 200, as GaLore's README
            example; its training script defaults to 50).
        scale: the factor of the projected update, GaLore's α (default 0.25, as that example;
            the script's default is 1.0).
        proj_type: one of :data:`PROJ_TYPES` (default 'std').
        maximize: maximize the objective (default False).

    Example (GaLore's usage: matrices projected, the rest plain)::

        matrices = [p for p in model.parameters() if p.ndim >= 2]
        others = [p for p in model.parameters() if p.ndim < 2]
        optimizer = GaLoreAdamW([{'params': matrices, 'rank': 128, 'update_proj_gap': 200,
                                  'scale': 0.25}, {'params': others}], lr=1e-2)
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, rank: int | None = None,
                 update_proj_gap: int = 200, scale: float = 0.25, proj_type: str = 'std',
                 maximize: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
                        maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """As :meth:`torch.optim.Optimizer.add_param_group`; the group's settings are checked."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        beta1, beta2 = group['betas']
        checks = (
            (group['lr'] >= 0.0, f'lr must be >= 0, got {group["lr"]}'),
            (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0, f'betas must be in [0, 1), got {group["betas"]}'),
            (group['eps'] >= 0.0, f'eps must be >= 0, got {group["eps"]}'),
            (group['weight_decay'] >= 0.0, f'weight_decay must be >= 0, got {group["weight_decay"]}'),
            (group['rank'] is None or (_is_int(group['rank']) and group['rank'] >= 1),
             f'rank must be a positive int or None, got {group["rank"]!r}'),
            (_is_int(group['update_proj_gap']) and group['update_proj_gap'] >= 1,
             f'update_proj_gap must be a positive int, got {group["update_proj_gap"]!r}'),
            (group['scale'] > 0.0, f'scale must be > 0, got {group["scale"]}'),
            (group['proj_type'] in PROJ_TYPES,
             f'proj_type must be one of {", ".join(PROJ_TYPES)}, got {group["proj_type"]!r}'),
        )
        for ok, message in checks:
            if not ok:
                self.param_groups.pop()
                raise ValueError(message)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    self._step_param(p, group)
        return loss

    def _step_param(self, p: Tensor, group: dict) -> None:
        grad = -p.grad if group['maximize'] else p.grad
        if grad.is_sparse:
            raise RuntimeError('GaLoreAdamW does not support sparse gradients')
        state = self.state[p]
        projected = group['rank'] is not None and p.ndim >= 2
        side = None
        if projected:
            grad = grad.reshape(p.shape[0], -1)
            side = projection_side(tuple(grad.shape), group['proj_type'])
            if 'projector' not in state or state['step'] % group['update_proj_gap'] == 0:
                state['projector'] = orthogonal_factor(grad, group['rank'], side).to(p.dtype)
            projector = state['projector']
            grad = grad @ projector.T if side == 'right' else projector.T @ grad
        if 'exp_avg' not in state:
            state.setdefault('step', 0)
            state['exp_avg'] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            state['exp_avg_sq'] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        beta1, beta2 = group['betas']
        exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
        state['step'] += 1
        step = state['step']
        p.mul_(1.0 - group['lr'] * group['weight_decay'])
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / (1.0 - beta2 ** step) ** 0.5).add_(group['eps'])
        step_size = group['lr'] / (1.0 - beta1 ** step)
        if not projected:
            p.addcdiv_(exp_avg, denom, value=-step_size)
            return
        update = exp_avg / denom
        update = update @ projector if side == 'right' else projector @ update
        p.add_(update.view_as(p), alpha=-step_size * group['scale'])
