"""Flat vectors: the trainable parameters (and their gradients) of a model as one 1-D float32
vector, in ``named_parameters()`` order (BatchNorm running statistics are buffers, not part of it)."""
from collections.abc import Sequence

import torch
from torch import Tensor


def trainable_params(model: torch.nn.Module) -> list[Tensor]:
    """Parameters with ``requires_grad``, in ``model.named_parameters()`` order: the order of
    every flat vector.

    Args:
        model: the model (its DDP wrapper gives the same order).
    """
    return [p for _, p in model.named_parameters() if p.requires_grad]


def _views_like(params: Sequence[Tensor], vec: Tensor) -> list[Tensor]:
    """Split the flat ``vec`` into views shaped like ``params``."""
    numels = [p.numel() for p in params]
    if vec.ndim != 1 or vec.numel() != sum(numels):
        raise ValueError(f'expected a flat vector of {sum(numels)} entries, got shape {tuple(vec.shape)}')
    return [v.view_as(p) for v, p in zip(vec.split(numels), params)]


def flat_params(params: Sequence[Tensor]) -> Tensor:
    """Concatenation of ``params`` as a new 1-D float32 tensor.

    Args:
        params: the parameters (:func:`trainable_params`).
    """
    with torch.no_grad():
        return torch.cat([_float32(p.reshape(-1)) for p in params])


@torch.no_grad()
def set_flat_params_(params: Sequence[Tensor], vec: Tensor) -> None:
    """Copy the flat ``vec`` into ``params`` in place (cast to each parameter's dtype).

    Args:
        params: the parameters (:func:`trainable_params`).
        vec: a 1-D tensor of their total length.
    """
    torch._foreach_copy_(list(params), _views_like(params, vec))


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """Concatenation of the gradients of ``params`` as a new 1-D float32 tensor (0 where ``grad``
    is None).

    Args:
        params: the parameters (:func:`trainable_params`).
    """
    return torch.cat([_float32((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1))
                      for p in params])


def _float32(t: Tensor) -> Tensor:
    # (no dispatch when already float32: these run once per parameter tensor on every step)
    return t if t.dtype == torch.float32 else t.float()


@torch.no_grad()
def set_flat_grad_(params: Sequence[Tensor], vec: Tensor) -> None:
    """Copy the flat ``vec`` into the ``.grad`` of ``params`` (allocated where None).

    Args:
        params: the parameters (:func:`trainable_params`).
        vec: a 1-D tensor of their total length.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch._foreach_copy_([p.grad for p in params], _views_like(params, vec))

