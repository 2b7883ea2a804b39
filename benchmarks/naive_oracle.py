r"""The GGN block the slow way: one GGN-vector product per parameter coordinate.

This is how the KFAC tutorial builds its ground truth: column ``p`` of the block of a
layer with parameters :math:`\theta` is

.. math::  G e_p = J^\top \big(\nabla^2_f L\big) J e_p,

with :math:`J = \partial f(X)/\partial\theta` the Jacobian of the whole batch's output, so
a layer with ``P`` parameters costs ``P`` Jacobian-vector products, ``P`` loss
Hessian-vector products and ``P`` vector-Jacobian products, each over the whole batch, in a
Python loop. It shares no shortcut with :mod:`kfac_conformance.oracle` (no per-datum
``vmap``, no factorisation of the loss Hessian, no block-diagonality over data), which
makes it both the baseline of the oracle's speed-up and an independent check of its result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp

from kfac_conformance.oracle import layer_parameter_names


def naive_ggn_block(
    model: nn.Module,
    loss_func: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    layer: str,
    columns: Sequence[int] | None = None,
) -> Tensor:
    """The GGN block of ``layer`` over all ``batches`` as one data set, column by column.

    Parameters are those of ``layer`` in ``named_parameters`` order, each flattened row-major,
    as in :func:`kfac_conformance.oracle.exact_blocks`. ``columns`` restricts the result to
    those columns of the block (every column costs the same, which lets a benchmark time a
    sample of a big layer's columns).
    """
    X = torch.cat([x for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    params = {name: p.detach() for name, p in model.named_parameters()}
    names = layer_parameter_names(model, layer)
    theta = {name: params[name] for name in names}

    def output_of(layer_params: dict[str, Tensor]) -> Tensor:
        return functional_call(model, {**params, **layer_params}, (X,))

    output, pullback = vjp(output_of, theta)
    # the loss Hessian is symmetric, so pulling back through the loss gradient multiplies by it
    _, loss_hessian_product = vjp(grad(lambda out: loss_func(out, y)), output)
    size = sum(p.numel() for p in theta.values())
    if columns is None:
        columns = range(size)
    elif not all(0 <= c < size for c in columns):
        raise ValueError(f"columns must lie in [0, {size}) for layer {layer!r}")
    computed = []
    for coordinate in columns:
        direction = _unit_vector(theta, coordinate)
        _, jacobian_direction = jvp(output_of, (theta,), (direction,))
        (curved,) = loss_hessian_product(jacobian_direction)
        (column,) = pullback(curved)
        computed.append(torch.cat([column[name].flatten() for name in names]))
    return torch.stack(computed, dim=1)


def _unit_vector(like: dict[str, Tensor], coordinate: int) -> dict[str, Tensor]:
    """``e_coordinate`` over the concatenated flattened tensors of ``like``, split back."""
    unit, offset = {}, 0
    for name, tensor in like.items():
        flat = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        if offset <= coordinate < offset + tensor.numel():
            flat[coordinate - offset] = 1.0
        unit[name] = flat.reshape(tensor.shape)
        offset += tensor.numel()
    return unit
