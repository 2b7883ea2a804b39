r"""Exact curvature-vector products of one layer's block by autodiff, never forming the block.

The curvatures and their scale are those of :mod:`kfac_conformance.oracle.blocks` (the KFAC
tutorial's, :math:`L = R\sum_n c_n`). For a layer's parameters :math:`\theta` (the others
held fixed) and a probe :math:`v` over them, with :math:`f` the outputs of all data:

- GGN: :math:`Gv = J^\top (\nabla^2_f L)(J v)`: a JVP of the network, a Hessian-vector
  product of the loss in output space, and a VJP;
- empirical Fisher: :math:`Ev = \frac1R\sum_n \nabla\ell_n (\nabla\ell_n^\top v)` with the
  per-datum contributions :math:`\ell_n = R c_n` to ``L``: a JVP gives every
  :math:`\nabla\ell_n^\top v` at once and one VJP weighted by them sums the gradients, so no
  per-datum gradient is stored.

Each product costs a few passes over the network and memory of the order of its activations;
the largest tensors are the layer's parameters and the outputs, never a P x P matrix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from kfac_conformance.contract.problem import Problem
from kfac_conformance.oracle.blocks import layer_parameter_names, reduction_factor

Probe = tuple[Tensor, ...]
PRODUCT_CURVATURES = ("ggn", "empirical")


def layer_parameters(problem: Problem, layer: str) -> Probe:
    """The layer's own parameters, in ``named_parameters`` order (a probe's layout)."""
    return tuple(problem.model.get_submodule(layer).parameters(recurse=False))


def _single_batch(problem: Problem) -> tuple[Tensor, Tensor]:
    if len(problem.batches) != 1:
        raise ValueError(
            f"curvature-vector products need the data as one batch; problem "
            f"{problem.case_id!r} has {len(problem.batches)}"
        )
    return problem.batches[0]


class LayerCurvature:
    """Products with the exact ``curvature`` block of ``layer`` on ``problem``'s data."""

    def __init__(self, problem: Problem, layer: str, curvature: str) -> None:
        if curvature not in PRODUCT_CURVATURES:
            raise ValueError(f"curvature must be one of {PRODUCT_CURVATURES}, got {curvature!r}")
        self.curvature = curvature
        self._X, self._y = _single_batch(problem)
        self._model, self._loss_func = problem.model, problem.loss_func
        self._names = layer_parameter_names(problem.model, layer)
        self._params = layer_parameters(problem, layer)

    def _output_of(self, params: Probe) -> Tensor:
        return functional_call(self._model, dict(zip(self._names, params, strict=True)), (self._X,))

    def __call__(self, probe: Probe) -> Probe:
        """The block times ``probe`` (one tensor per parameter, shaped like it)."""
        with torch.enable_grad():
            if self.curvature == "ggn":
                return self._ggn_product(probe)
            return self._empirical_product(probe)

    def _ggn_product(self, probe: Probe) -> Probe:
        output, pullback = vjp(self._output_of, self._params)
        _, jacobian_probe = jvp(self._output_of, (self._params,), (probe,))
        return tuple(
            t.detach() for t in pullback(self._loss_hessian_product(output, jacobian_probe))[0]
        )

    def _loss_hessian_product(self, output: Tensor, direction: Tensor) -> Tensor:
        """The loss's Hessian in output space times ``direction`` (reverse over reverse:
        forward mode through the losses' backward formulas is not supported for all)."""
        output = output.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(
            self._loss_func(output, self._y), output, create_graph=True
        )
        (product,) = torch.autograd.grad(gradient, output, direction)
        return product

    def _empirical_product(self, probe: Probe) -> Probe:
        contributions = _per_datum_contributions(self._loss_func, self._y)
        output = self._output_of(self._params).detach()
        factor = reduction_factor(self._loss_func, output, self._y)

        def per_datum(params: Probe) -> Tensor:
            return contributions(self._output_of(params))

        _, pullback = vjp(per_datum, self._params)
        _, directional = jvp(per_datum, (self._params,), (probe,))
        return tuple(t.detach() / factor for t in pullback(directional)[0])


def _per_datum_contributions(loss_func: nn.Module, labels: Tensor) -> Callable[[Tensor], Tensor]:
    """``output -> (l_n)``: each datum's share of the loss, so that ``L = sum_n l_n``."""
    unreduced = copy.copy(loss_func)
    unreduced.reduction = "none"

    def contributions(output: Tensor) -> Tensor:
        elements = unreduced(output, labels)
        per_datum = elements.reshape(elements.shape[0], -1).sum(dim=1)
        return per_datum / elements.numel() if loss_func.reduction == "mean" else per_datum

    return contributions


def gaussian_probes(params: Probe, count: int, seed: int) -> list[Probe]:
    """``count`` standard Gaussian probes shaped like ``params``, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return [
        tuple(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params)
        for _ in range(count)
    ]
