"""BackPACK (``backpack-for-pytorch``) KFAC, KFLR and KFRA as three candidates.

Usage follows BackPACK's documentation: ``extend`` the model and the loss, compute the loss,
and run ``loss.backward()`` inside ``with backpack(KFAC(mc_samples=M) | KFLR() | KFRA())``.
Each parameter then holds a list of factors in ``param.kfac`` / ``.kflr`` / ``.kfra``,
"arranged such that their Kronecker product represents the approximation" (BackPACK
docstring): ``weight.<field> == [G, A]`` so the weight block is ``kron(G, A)`` over
``weight.flatten()`` (``B = G``), and ``bias.<field> == [G_b]`` is the bias block. BackPACK
has no joint bias, so only ``bias="separate"`` is claimed.

Conventions (BackPACK 1.7.1, verified numerically against the suite's oracle):

- Scale: ``A`` is averaged over the batch, ``G`` carries the loss's reduction factor, as in
  the suite; no conversion for MSE and CE, ``"mean"`` and ``"sum"``.
- ``KFLR`` backpropagates the exact square root of the loss Hessian: type-2 KFAC.
- ``KFAC`` samples labels from the model's predictive distribution with the *global* RNG;
  the adapter seeds it with ``request.seed`` inside ``torch.random.fork_rng``, so the
  caller's RNG state is preserved.
- ``KFRA`` (Botev et al. 2017) backpropagates a batch-averaged Hessian through the network.
  It equals type-2 KFAC on one datum and on the last layer, not in general: the
  ``backpack-kfra`` candidate claims ``type-2`` to be measured against it, and its
  multi-datum differences are listed as expected failures (an approximation by design).
- One backward pass per batch; each overwrites the fields. For KFAC/KFLR the adapter combines
  the batches by KFAC's definition, each factor separately: ``A = sum_b (N_b / N) A_b`` and
  ``G = sum_b (R / R_b) G_b`` (``R_b``, ``R``: the loss's reduction factor on batch ``b`` and
  on all data). KFRA's backpropagated quantity is a batch average that does not decompose
  this way, so ``backpack-kfra`` claims a single batch only.
- Supported: ``nn.Linear`` on ``(N, D)`` inputs and ``nn.Conv1d``, ``nn.Conv2d`` and
  ``nn.Conv3d`` without groups (one class, ``hbp/convnd.py`` ``HBPConvNd``, computes all three;
  it raises ``NotImplementedError`` for ``groups > 1``); MSE and CE on ``(N, C)`` outputs;
  BCE-with-logits only with one output (and not with KFRA). Unsupported inputs are refused
  with ``NotImplementedError`` before BackPACK runs.
- Convolutions follow Grosse & Martens 2016 (KFC) according to BackPACK's docs, i.e.
  KFAC-expand; only ``kfac_approx="expand"`` is claimed (for ``Linear`` on ``(N, D)`` inputs
  expand and reduce coincide). ``A`` is in ``weight.flatten(1)`` order (input channel, then
  kernel taps) in every dimension. ``HBPConvNd`` documents that its block differs from KFC's
  by the number of output positions ``|T|`` (finding B1 of ``docs/findings.md``, the same
  code in one, two and three dimensions); the adapter hands the factors on unconverted, as
  documented, and the differing items are expected failures naming B1.

``extend`` marks every module with ``_backpack_extend`` and installs hooks for the module's
lifetime (BackPACK documents no way to undo it), and ``backward`` writes ``.grad``. To build
fresh library objects per call, the adapter extends a private ``copy.deepcopy`` of the model
and the loss; the caller's model is left untouched. (Extending the caller's model and letting
a harness strip the hooks afterwards leaves the ``_backpack_extend`` flag set, so a second
``extend`` is a no-op and stale factors from the first call would be read silently; see
``docs/findings.md``.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from kfac_conformance.adapters._common import (
    Unsupported,
    batch_reduction_factor,
    has_bias,
    package,
    refuse_reduce_on_convolutions,
    refuse_shared_linear_inputs,
    refuse_shared_outputs,
    require,
    seeded_global_rng,
    total_data,
)
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import KroneckerFactors

LIBRARY = "BackPACK"
LAYER_TYPES = frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d"})


def _check_outputs(problem: Problem, library: str) -> None:
    output = refuse_shared_outputs(problem, library)
    if isinstance(problem.loss_func, nn.BCEWithLogitsLoss) and output.shape[1] != 1:
        raise Unsupported(
            library,
            f"BCEWithLogitsLoss with {output.shape[1]} outputs; only a single output is supported",
        )


class _BackpackCandidate:
    field: str
    fisher_type: str
    losses: frozenset[str]

    requires = Requirement(("backpack-for-pytorch",), "backpack")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def _extension(self, request: Request):
        raise NotImplementedError

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        from backpack import backpack, extend

        require(problem, LIBRARY, LAYER_TYPES, self.losses)
        if request.fisher_type != self.fisher_type:
            raise Unsupported(LIBRARY, f"{self.name} computes {self.fisher_type!r} KFAC only")
        if request.bias != "separate":
            raise Unsupported(LIBRARY, "only a separate bias block is computed")
        refuse_shared_linear_inputs(problem, LIBRARY)
        _check_outputs(problem, LIBRARY)
        refuse_reduce_on_convolutions(problem, request, LIBRARY)
        if len(problem.batches) > 1 and not self.capabilities.multiple_batches:
            raise Unsupported(LIBRARY, f"{self.name} is defined on one batch only")

        model = extend(copy.deepcopy(problem.model))
        loss_func = extend(copy.deepcopy(problem.loss_func))
        N, R = total_data(problem), problem.scale_quantities()["R"]
        sums: dict[str, list] = {}
        for X, y in problem.batches:
            output = model(X)
            loss = loss_func(output, y)
            weight_A = X.shape[0] / N
            weight_B = R / batch_reduction_factor(problem.loss_func, output, y)
            try:
                with backpack(self._extension(request)):
                    loss.backward()
            except NotImplementedError as declined:
                # BackPACK's own, documented refusal of a module it has no extension for
                raise Unsupported(LIBRARY, str(declined)) from declined
            for layer in problem.layers:
                module = model.get_submodule(layer)
                G, A = (
                    factor.detach().contiguous() for factor in getattr(module.weight, self.field)
                )
                terms = [weight_A * A, weight_B * G]
                if module.bias is not None:
                    (G_bias,) = getattr(module.bias, self.field)
                    terms.append(weight_B * G_bias.detach())
                previous = sums.get(layer)
                sums[layer] = (
                    terms
                    if previous is None
                    else [p + t for p, t in zip(previous, terms, strict=True)]
                )

        result = {}
        for layer in problem.layers:
            A, G, *bias_block = sums[layer]
            if bias_block and not torch.allclose(bias_block[0], G, rtol=1e-6, atol=0.0):
                raise Unsupported(
                    LIBRARY,
                    f"layer {layer!r}: the bias factor differs from the weight's output factor, "
                    "which a separate bias block B cannot express",
                )
            result[layer] = package(
                problem, A, G, "separate" if has_bias(problem, layer) else "none"
            )
        return result


def _claim(fisher_type: str, losses: frozenset[str], multiple_batches: bool = True) -> Capabilities:
    """What every BackPACK extension supports: expand, a separate bias, no shared axes."""
    return Capabilities(
        layer_types=LAYER_TYPES,
        losses=losses,
        fisher_types=frozenset({fisher_type}),
        flavours=frozenset({"expand"}),
        bias_modes=frozenset({"separate"}),
        multiple_batches=multiple_batches,
        weight_sharing=False,
    )


class BackpackKFACCandidate(_BackpackCandidate):
    """``backpack.extensions.KFAC(mc_samples=M)``: Monte Carlo KFAC."""

    name = "backpack-kfac"
    field = "kfac"
    fisher_type = "mc"
    losses = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})
    capabilities = _claim("mc", losses)

    def _extension(self, request: Request):
        from backpack.extensions import KFAC

        return KFAC(mc_samples=request.mc_samples)

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        with seeded_global_rng(problem, request.seed):
            return super().compute(problem, request)


class BackpackKFLRCandidate(_BackpackCandidate):
    """``backpack.extensions.KFLR()``: type-2 KFAC (exact loss-Hessian square root)."""

    name = "backpack-kflr"
    field = "kflr"
    fisher_type = "type-2"
    losses = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})
    capabilities = _claim("type-2", losses)

    def _extension(self, request: Request):
        from backpack.extensions import KFLR

        return KFLR()


class BackpackKFRACandidate(_BackpackCandidate):
    """``backpack.extensions.KFRA()``: recursive approximation, measured as type-2 KFAC."""

    name = "backpack-kfra"
    field = "kfra"
    fisher_type = "type-2"
    losses = frozenset({"MSELoss", "CrossEntropyLoss"})
    capabilities = _claim("type-2", losses, multiple_batches=False)

    def _extension(self, request: Request):
        from backpack.extensions import KFRA

        return KFRA()
