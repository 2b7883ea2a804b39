r"""The GGN block the slow way: one GGN-vector product per parameter coordinate.

This is how the KFAC tutorial builds its ground truth: column ``p`` of the block of a
layer with parameters :math:`\theta` is

.. math::  G e_p = J^\top \big(\nabla^2_f L\big) J e_p,

with :math:`J = \partial f(X)/\partial\theta` the Jacobian of the whole batch's output, so a
layer with ``P`` parameters costs ``P`` GGN-vector products over the whole batch, in a Python
loop. Two ways to multiply:

- ``"tutorial"``: as the tutorial's ``ggnvp``, with ``torch.autograd`` on one retained
  forward graph: :math:`Jv` by the double-backward trick, the loss Hessian-vector product by
  differentiating the output gradient (built with ``create_graph``), then :math:`J^\top`;
- ``"linearised"``: the same three products, but the pullbacks are built once with
  ``torch.func.vjp`` and only applied per column (the cheapest column-by-column variant).

Neither shares a shortcut with :mod:`kfac_conformance.oracle.blocks` (no per-datum ``vmap``, no
factorisation of the loss Hessian, no block-diagonality over data), which makes them both the
baseline of the oracle's speed-up and an independent check of its result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp

from kfac_conformance.oracle.blocks import layer_parameter_names

METHODS = ("tutorial", "linearised")


def naive_ggn_block(
    model: nn.Module,
    loss_func: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    layer: str,
    columns: Sequence[int] | None = None,
    method: str = "tutorial",
) -> Tensor:
    """The GGN block of ``layer`` over all ``batches`` as one data set, column by column.

    Parameters are those of ``layer`` in ``named_parameters`` order, each flattened row-major,
    as in :func:`kfac_conformance.oracle.blocks.exact_blocks`. ``columns`` restricts the result to
    those columns of the block (every column costs the same, which lets a benchmark time a
    sample of a big layer's columns).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    X = torch.cat([x for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    names = layer_parameter_names(model, layer)
    parameters = dict(model.named_parameters())
    size = sum(parameters[name].numel() for name in names)
    if columns is None:
        columns = range(size)
    elif not all(0 <= c < size for c in columns):
        raise ValueError(f"columns must lie in [0, {size}) for layer {layer!r}")
    products = {"tutorial": _tutorial_products, "linearised": _linearised_products}[method]
    ggn_vector_product = products(model, loss_func, X, y, names)
    shapes = [parameters[name].shape for name in names]
    computed = []
    for coordinate in columns:
        unit = torch.zeros(size, dtype=X.dtype, device=X.device)
        unit[coordinate] = 1.0
        direction = [
            part.reshape(shape)
            for part, shape in zip(unit.split(_numels(shapes)), shapes, strict=True)
        ]
        column = ggn_vector_product(direction)
        computed.append(torch.cat([part.flatten() for part in column]))
    return torch.stack(computed, dim=1)


def _numels(shapes: list[torch.Size]) -> list[int]:
    return [shape.numel() for shape in shapes]


def _tutorial_products(
    model: nn.Module, loss_func: nn.Module, X: Tensor, y: Tensor, names: list[str]
) -> Callable[[list[Tensor]], tuple[Tensor, ...]]:
    parameters = dict(model.named_parameters())
    theta = [parameters[name] for name in names]
    with torch.enable_grad():
        output = model(X)
        loss = loss_func(output, y)

    def ggn_vector_product(direction: list[Tensor]) -> tuple[Tensor, ...]:
        # J v: u -> J^T u is linear in u, and differentiating it with respect to u gives J
        dummy = torch.zeros_like(output, requires_grad=True)
        transposed = torch.autograd.grad(output, theta, dummy, create_graph=True)
        (jacobian_direction,) = torch.autograd.grad(transposed, dummy, direction, retain_graph=True)
        (loss_gradient,) = torch.autograd.grad(loss, output, create_graph=True)
        (curved,) = torch.autograd.grad(
            loss_gradient, output, jacobian_direction, retain_graph=True
        )
        return torch.autograd.grad(output, theta, curved, retain_graph=True)

    return ggn_vector_product


def _linearised_products(
    model: nn.Module, loss_func: nn.Module, X: Tensor, y: Tensor, names: list[str]
) -> Callable[[list[Tensor]], tuple[Tensor, ...]]:
    params = {name: p.detach() for name, p in model.named_parameters()}

    def output_of(*layer_params: Tensor) -> Tensor:
        return functional_call(
            model, {**params, **dict(zip(names, layer_params, strict=True))}, (X,)
        )

    output, pullback = vjp(output_of, *[params[name] for name in names])
    # J v by the double-backward trick: u -> J^T u is linear, and its own pullback is J
    _, push_forward = vjp(pullback, torch.zeros_like(output))
    # the loss Hessian is symmetric, so pulling back through the loss gradient multiplies by it
    _, loss_hessian_product = vjp(grad(lambda out: loss_func(out, y)), output)

    def ggn_vector_product(direction: list[Tensor]) -> tuple[Tensor, ...]:
        (jacobian_direction,) = push_forward(tuple(direction))
        (curved,) = loss_hessian_product(jacobian_direction)
        return pullback(curved)

    return ggn_vector_product
