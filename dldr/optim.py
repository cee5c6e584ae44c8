"""Optimizers in the subspace: projected SGD (P-SGD) and P-BFGS (paper Algorithm 2)."""
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .comm import LOCAL, Comm
from .flat import _views_like, flat_grad, flat_params, set_flat_grad_, set_flat_params_
from .subspace import Subspace, as_subspace, local_coords, mean_coords, reduction_comm


@torch.no_grad()
def project_grads_(params: Sequence[Tensor], subspace, comm: Comm = LOCAL) -> Tensor:
    """Replace the gradients of ``params`` by P^T c, c = P ḡ the coordinates of the rank-mean
    gradient (the projection of P-SGD).

    Ranks exchange only the d coordinates c (mean_r P g_r = P mean_r g_r), inside
    :meth:`Subspace.coords` or here.  An optimizer that only sees these gradients (SGD with
    momentum, no weight decay) keeps every iterate in w_start + span(P^T).

    Args:
        params: the parameters, ordered as the flat vectors P was built from
            (:func:`~dldr.flat.trainable_params`); a missing gradient counts as zero.
        subspace: a :class:`~dldr.subspace.Subspace` or a d x n tensor P.
        comm: data-parallel ranks whose gradients are not averaged yet, when the subspace has
            no comm of its own (LOCAL under DDP: the gradients are already the mean).

    Returns:
        c, the d coordinates (identical on every rank).
    """
    subspace = as_subspace(subspace)
    coords = mean_coords(subspace, flat_grad(params), comm)
    set_flat_grad_(params, subspace.lift(coords))
    return coords


def _refuse_dtensors(params) -> None:
    if any(type(p).__name__ == 'DTensor' for p in params):
        raise ValueError('DTensor parameters (FSDP2 fully_shard) are not supported: the flat vectors '
                         'concatenate whole parameters; see docs/METHOD.md, "FSDP2"')


def _check_subspace(subspace, n: int) -> Subspace:
    if isinstance(subspace, Tensor) and (subspace.ndim != 2 or subspace.shape[1] != n):
        raise ValueError(f'P must have shape (d, {n}) for these parameters, '
                         f'got {tuple(subspace.shape)}')
    subspace = as_subspace(subspace)
    if subspace.n != n:
        raise ValueError(f'the subspace lives in R^{subspace.n}, these parameters in R^{n}')
    return subspace


class PSGD(torch.optim.SGD):
    """Projected SGD (P-SGD): :class:`torch.optim.SGD` on the gradients replaced by their
    projection P^T P g onto the subspace (:func:`project_grads_`), so with no weight decay every
    iterate stays in w_start + span(P^T).

    :meth:`step` projects the gradient the parameters hold at that moment, once per step: the
    gradient accumulated over any number of backward passes since the last ``zero_grad`` (and
    clipped, unscaled, ... by whatever ran before the step).  A loop that must see the projected
    gradient before the step (a ``GradScaler`` with ranks whose gradients are not averaged yet:
    every rank then checks the same gradient for inf) calls :meth:`project_` itself; :meth:`step`
    then does not project again.

    Param groups are torch's: every SGD option per group, plus ``projected`` (default True).  The
    projected groups' parameters, in group order, are the flat vector P was built from; a group
    with ``projected=False`` trains as plain SGD (e.g. a new head).  Projected groups take no
    weight decay (its gradient wd * w points out of the subspace).  ``state_dict()`` holds the
    momentum buffers and the groups' plain values (``subspace_dim`` among them, checked on load):
    it reloads with ``torch.load(weights_only=True)``; the subspace itself is not saved.

    Args:
        params: the parameters (or param-group dicts), ordered as :func:`~dldr.flat.trainable_params`.
        subspace: a :class:`~dldr.subspace.Subspace` or a d x n tensor P.
        lr: learning rate.
        momentum: momentum factor (default 0).
        dampening: dampening for momentum (default 0).
        nesterov: Nesterov momentum (default False).
        comm: data-parallel ranks whose gradients are not averaged yet, when the subspace has no
            comm of its own (default LOCAL; under DDP leave it: the gradients are the mean).
        maximize: maximize the objective (default False).
        foreach: torch's foreach implementation switch (default None: torch's choice).

    Example::

        optimizer = PSGD(trainable_params(model), basis.P, lr=1.0, momentum=0.9)
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
    """

    def __init__(self, params, subspace, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, *, comm: Comm = LOCAL,
                 maximize: bool = False, foreach: bool | None = None):
        self._subspace_dim = subspace.dim if isinstance(subspace, Subspace) else subspace.shape[0]
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=0.0,
                         nesterov=nesterov, maximize=maximize, foreach=foreach)
        _refuse_dtensors(self._projected_params())
        n = sum(p.numel() for p in self._projected_params())
        self.subspace = _check_subspace(subspace, n)
        self.comm = reduction_comm(self.subspace, comm)
        self._projected = False

    def add_param_group(self, param_group: dict) -> None:
        """As :meth:`torch.optim.Optimizer.add_param_group`, with ``projected`` (default True)."""
        param_group.setdefault('projected', True)
        if param_group['projected']:
            param_group['subspace_dim'] = self._subspace_dim
            if param_group.get('weight_decay', 0.0) != 0.0:
                raise ValueError('a projected param group takes no weight decay: its gradient '
                                 'leaves the subspace')
        super().add_param_group(param_group)
        if getattr(self, 'subspace', None) is not None:  # after __init__: n must still fit P
            _check_subspace(self.subspace, sum(p.numel() for p in self._projected_params()))

    def _projected_params(self) -> list[Tensor]:
        return [p for group in self.param_groups if group.get('projected', True)
                for p in group['params']]

    @torch.no_grad()
    def project_(self) -> Tensor:
        """Replace the projected groups' gradients by P^T P g now (a collective with several
        ranks); the next :meth:`step` does not project again.  Returns the d coordinates."""
        coords = project_grads_(self._projected_params(), self.subspace, self.comm)
        self._projected = True
        return coords

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As :meth:`torch.optim.Optimizer.zero_grad`; also forgets a :meth:`project_` not
        followed by a step."""
        self._projected = False
        super().zero_grad(set_to_none)

    def step(self, closure=None):
        """Project the accumulated gradient (unless :meth:`project_` did) and take an SGD step.

        Args:
            closure: optional, re-evaluates the model and returns the loss (run with grad
                enabled before the projection).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._projected:
            self.project_()
        super().step()
        self._projected = False
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`; refuses a state of another
        subspace dimension."""
        _check_dim(state_dict, self.subspace.dim)
        super().load_state_dict(state_dict)


def _check_dim(state_dict: dict, dim: int) -> None:
    for group in state_dict.get('param_groups', []):
        saved = group.get('subspace_dim')
        if saved is not None and saved != dim:
            raise ValueError(f'this state is of a {saved}-dimensional subspace, the optimizer\'s '
                             f'is {dim}-dimensional')


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
    batch's loss: gradient accumulation), then once per trial.  The cheap way: a closure that
    backpropagates only when ``torch.is_grad_enabled()``; the trials then run under
    ``torch.no_grad()`` and are forward passes only::

        def closure():
            loss = criterion(model(x), y)
            if torch.is_grad_enabled():
                optimizer.zero_grad()
                loss.backward()
            return loss

        optimizer = PBFGS(trainable_params(model), basis.P, buffers=list(model.buffers()))
        loss = optimizer.step(closure)

    A closure in :class:`torch.optim.LBFGS`'s convention (it always zeroes the gradients,
    backpropagates and returns the loss) works too: with ``trial_grad=None`` (the default) the
    first trial that raises a RuntimeError under ``no_grad`` (``backward`` of a loss without
    grad) is re-run with grad enabled, and every later trial of this optimizer runs with grad
    enabled (``param_groups[0]['trial_grad']`` becomes True; the gradients of the trials are
    discarded, and the parameters' ``.grad`` after a step is the last trial's).  Set
    ``trial_grad`` True or False to choose up front (False: a RuntimeError propagates).

    Param groups: one group (BFGS acts on one flat vector), its settings torch-style in
    ``param_groups[0]``: ``sigma``, ``rho``, ``max_trials``, ``alpha``, ``gamma``,
    ``curvature_eps``, ``curvature_pairs``, ``trial_grad`` and ``subspace_dim`` (checked on
    load).  ``state_dict()`` holds tensors and plain values only and reloads with
    ``torch.load(weights_only=True)``.

    Args:
        params: the parameters (or one param-group dict), ordered as
            :func:`~dldr.flat.trainable_params`.
        subspace: a :class:`~dldr.subspace.Subspace` or a d x n tensor P (not a
            :class:`~dldr.structured.RedrawnSubspace`: the curvature pairs need one basis).
        buffers: tensors restored after each trial (the BatchNorm running statistics,
            ``list(model.buffers())``).
        sigma: Armijo constant in (0, 1) (default 0.4).
        rho: backtracking factor in (0, 1) (default 0.4).
        max_trials: line-search evaluations per step (default 20).
        alpha: residual momentum step (default 0: off).
        gamma: residual momentum factor (default 0.9).
        curvature_eps: a pair with y^T s <= this is skipped (default 1e-20).
        curvature_pairs: 'consecutive' or 'same-batch' (:data:`CURVATURE_PAIRS`).
        comm: data-parallel ranks whose losses and gradients are not averaged yet, when the
            subspace has no comm of its own.  Under DDP pass it too (DDP averages the gradients
            but not the losses the line search compares; the coordinates' second average is a
            no-op).
        trial_grad: whether the trials run with grad enabled (None: detect, see above).
    """

    takes_closure = True  # step(closure) only, as torch.optim.LBFGS

    def __init__(self, params: Iterable[Tensor], subspace, *, buffers: Iterable[Tensor] = (),
                 sigma: float = 0.4, rho: float = 0.4, max_trials: int = 20, alpha: float = 0.0,
                 gamma: float = 0.9, curvature_eps: float = 1e-20,
                 curvature_pairs: str = 'consecutive', comm: Comm = LOCAL,
                 trial_grad: bool | None = None):
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
                        curvature_eps=curvature_eps, curvature_pairs=curvature_pairs,
                        trial_grad=trial_grad,
                        subspace_dim=subspace.dim if isinstance(subspace, Subspace) else subspace.shape[0])
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError('PBFGS supports a single parameter group')
        _refuse_dtensors(self._params)
        n = sum(p.numel() for p in self._params)
        self.subspace = _check_subspace(subspace, n)
        self.comm = reduction_comm(self.subspace, comm)
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

    @staticmethod
    def summarise(stats: dict) -> dict[str, float]:
        """The means of counters from :meth:`reset_stats` (one epoch's, or their sums over
        several): ``mean_trials`` per step, ``mean_step_size`` and the loss after the step on its
        own mini-batch (``own_batch_loss_after_step``) over the accepted steps, and over the
        evaluated steps the loss before the step (``loss_before_step``: the loss each fresh
        mini-batch finds) and the fraction of the gradient the subspace holds
        (``gradient_captured``)."""
        steps = stats['steps']
        accepted = max(steps - stats['failed_searches'] - stats['nonfinite_skips'], 1)
        evaluated = max(steps - stats['nonfinite_skips'], 1)
        return {'mean_step_size': stats['step_size_sum'] / accepted,
                'mean_trials': stats['trials'] / max(steps, 1),
                'own_batch_loss_after_step': stats['accepted_loss_sum'] / accepted,
                'loss_before_step': stats['loss_sum'] / evaluated,
                'gradient_captured': stats['captured_sum'] / evaluated}

    def _zero_moments(self) -> list:
        """Sum of g~ (d, float64, on the device), sum of |g~|^2 and the number of steps."""
        return [torch.zeros(self.subspace.dim, dtype=torch.float64, device=self._device),
                torch.zeros((), dtype=torch.float64, device=self._device), 0]

    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, but keeping each saved tensor's dtype
        (the base class casts floating state to the parameters' dtype, rounding B to float32);
        refuses a state of another subspace dimension."""
        _check_dim(state_dict, self.subspace.dim)
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

    def _trial_loss(self, closure):
        """The closure's loss at a trial point: under no_grad, or with grad enabled for a closure
        that always backpropagates (``trial_grad``; None: detected at the first RuntimeError)."""
        group = self.param_groups[0]
        mode = group.get('trial_grad')
        if mode:
            with torch.enable_grad():
                return closure()
        try:
            return closure()
        except RuntimeError:
            if mode is not None:
                raise
        # an LBFGS-style closure (backward without grad): again, with grad, from now on
        _copy_all_(self._buffers, self._buffers_at_w)
        with torch.enable_grad():
            loss = closure()
        group['trial_grad'] = True
        return loss

    def _line_search(self, closure, loss: Tensor, w: Tensor, direction: Tensor, slope: Tensor,
                     finite: Tensor, skipped: Tensor | None, captured: Tensor) -> float | None:
        """Backtracking Armijo search along w + α direction.

        Returns the accepted α with the parameters left at that trial point, 0.0 when every trial
        failed (parameters left at the last trial: the caller rewrites them), or None when
        ``finite`` (a device bool: loss and gradient at w are finite) is false.  ``finite``, the
        curvature update's ``skipped`` and the losses for ``stats`` are read together with each
        trial's comparison, so a step costs one host sync per trial and no other.  Each trial's
        loss is the rank-mean (one scalar all-reduced), so every rank makes the same decision.
        Every trial point is computed from the saved w (no drift) and the buffers are restored
        after each trial.
        """
        group = self.param_groups[0]
        _copy_all_(self._buffers_at_w, self._buffers)
        step_size = 1.0
        for trial_index in range(group['max_trials']):
            torch.add(w, direction, alpha=step_size, out=self._trial)
            torch._foreach_copy_(self._params, self._trial_views)
            trial_loss = self.comm.all_reduce_(_loss_tensor(self._trial_loss(closure), self._device))
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
        comm, mine = local_coords(subspace, grad, self.comm)
        captured = subspace.gradient_fraction(grad, mine)
        # One message per step: the d gradient coordinates and the loss, averaged over the ranks.
        packed = comm.all_reduce_(torch.cat((mine, _loss_tensor(loss, grad.device))))
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
            new_coords = mean_coords(subspace, flat_grad(self._params), self.comm)
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
