"""nngeometry's ``PMatKFAC`` representation of the Fisher as a candidate.

Usage follows nngeometry's helpers: ``FIM(model, loader, PMatKFAC, variant=...)`` for the
closed-form expectation over the model's predictive distribution (type-2) and
``FIM_MonteCarlo(model, loader, PMatKFAC, variant="classif_logits", trials=M)`` for Monte
Carlo. ``F.data[layer] == (A, G)`` with the bias as an extra input column fed by a constant
one, appended last in ``A`` (the suite's ``"joint"``): the block is ``kron(G, A)`` over the
row-major ``[W | b]``. nngeometry has no separate-bias mode, so only ``"joint"`` is claimed.

Conventions (nngeometry 0.4, verified numerically):

- Variants: ``"regression"`` (Gaussian with identity covariance, NLL ``1/2 ||f - y||^2``),
  ``"classif_logits"`` (softmax over dim 1) and ``"classif_binary_logits"`` (independent
  sigmoids, one per output) for MSE, CE and BCE-with-logits.
- Normalisation: an average over the ``N`` examples of the loader, ``(1/N) sum_n``, of the
  Fisher of the per-datum NLL, declared as ``Conventions(curvature="mean-nll")`` and
  converted by the harness (``kfac_conformance.contract.conventions``); the adapter returns
  nngeometry's factors unscaled. A legitimate alternative normalisation, not a different
  approximation.
- nngeometry distributes scale between the factors differently (``A`` carries a per-factor
  factor such as ``sqrt(2)`` relative to the data average, ``G`` its inverse). Only the
  product ``kron(G, A)`` is identifiable, so this is irrelevant and left as is.
- No empirical Fisher and no forward-only KFAC; Monte Carlo only for ``classif_logits``
  (CE), so MC requests with another loss are refused.
- ``nn.Linear`` only on ``(N, D)`` inputs (nngeometry fails on extra axes); ``nn.Conv2d`` and
  ``nn.Conv1d`` are KFAC-expand, so only ``kfac_approx="expand"`` is claimed. A ``Conv1d``
  patch is unfolded as a ``(C_in, 1, k)`` image patch (``Conv1dJacobianFactory.kfac_xx``),
  i.e. ordered ``(C_in, k)`` like ``weight[o].flatten()``, and ``G`` averages the output
  gradients' outer products over the positions as for ``Conv2d``: the same layout, nothing to
  convert. nngeometry 0.4 has no ``Conv3d`` or ``Embedding`` (``LayerCollection`` rejects them).
- The adapter feeds the problem's batches as they are (``_common.batch_loader``: an
  explicit ``batch_sampler`` and a private ``torch.Generator``, since a ``DataLoader`` draws a
  base seed from the global RNG otherwise). MC samples come from the global RNG, which the
  adapter seeds with ``request.seed`` inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from kfac_conformance.adapters._common import (
    Unsupported,
    batch_loader,
    has_bias,
    package,
    package_ekfac,
    refuse_reduce_on_convolutions,
    refuse_shared_linear_inputs,
    refuse_shared_outputs,
    require,
    seeded_global_rng,
)
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import EKFACFactors, KroneckerFactors

LIBRARY = "nngeometry"
LAYER_TYPES = frozenset({"Linear", "Conv1d", "Conv2d"})
LOSSES = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})
VARIANTS = {
    "MSELoss": "regression",
    "CrossEntropyLoss": "classif_logits",
    "BCEWithLogitsLoss": "classif_binary_logits",
}


class NngeometryCandidate:
    name = "nngeometry"
    capabilities = Capabilities(
        layer_types=LAYER_TYPES,
        losses=LOSSES,
        fisher_types=frozenset({"type-2", "mc"}),
        flavours=frozenset({"expand"}),
        bias_modes=frozenset({"joint"}),
        weight_sharing=False,
        conventions=Conventions(curvature="mean-nll"),
    )

    requires = Requirement(("nngeometry",), "nngeometry")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def _check(self, problem: Problem, request: Request) -> None:
        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        if request.fisher_type not in self.capabilities.fisher_types:
            raise Unsupported(LIBRARY, f"fisher_type {request.fisher_type!r}")
        if request.fisher_type == "mc" and not isinstance(problem.loss_func, nn.CrossEntropyLoss):
            raise Unsupported(LIBRARY, "Monte Carlo only for cross-entropy (classif_logits)")
        if request.bias != "joint":
            raise Unsupported(LIBRARY, "only a joint bias (ones column appended) is computed")
        refuse_reduce_on_convolutions(problem, request, LIBRARY)
        refuse_shared_linear_inputs(problem, LIBRARY)
        if isinstance(problem.loss_func, nn.CrossEntropyLoss):
            # classif_logits raises on (N, C, H, W) logits (found by the fuzzer)
            refuse_shared_outputs(problem, LIBRARY)

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self._check(problem, request)
        if request.fisher_type == "mc":
            with seeded_global_rng(problem, request.seed):
                return self._factors(problem, request)
        return self._factors(problem, request)

    def _factors(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        from nngeometry.object import PMatKFAC

        F, _ = _fisher(problem, request, PMatKFAC)
        result = {}
        for layer in problem.layers:
            A, G = F.data[layer]
            bias = "joint" if has_bias(problem, layer) else "none"
            result[layer] = package(problem, A, G, bias)
        return result


class NngeometryEKFACCandidate(NngeometryCandidate):
    """nngeometry's ``PMatEKFAC`` (EKFAC only; its KFAC is the candidate above).

    ``FIM(..., PMatEKFAC)`` builds the Kronecker eigenbasis from the KFAC factors and holds
    *KFAC's* eigenvalues (``kronecker(evals_g, evals_a)``) until ``F.update_diag(loader)``
    replaces them with the corrected ones (George et al. 2018), as nngeometry's EKFAC example
    does; the adapter calls it. ``F.data == (evecs, diags)``: ``evecs[layer] == (QA, QG)``
    (columns, from ``torch.linalg.eigh``; ``QA`` with the bias's ones last, the suite's
    ``"joint"``) and ``diags[layer]`` the ``(d_out * d_in [+ 1])`` corrected eigenvalues in
    row-major ``(d_out, d_in [+ 1])`` order, from per-example gradients summed over a
    convolution's positions. Scale: ``(1/N) Σ_n`` of the per-datum NLL Fisher, declared as
    ``Conventions(curvature="mean-nll")`` and converted by the harness (no factor applied
    here). For MC, ``update_diag`` draws labels again from the global RNG (seeded by the
    adapter), so the correction uses other samples than the basis: still unbiased.
    """

    name = "nngeometry-ekfac"
    capabilities = dataclasses.replace(
        NngeometryCandidate.capabilities,
        approximations=frozenset({"ekfac"}),
        conventions=Conventions(curvature="mean-nll"),
    )

    def _factors(self, problem: Problem, request: Request) -> dict[str, EKFACFactors]:
        from nngeometry.object import PMatEKFAC

        F, loader = _fisher(problem, request, PMatEKFAC)
        F.update_diag(loader)
        bases, corrected = F.data
        result = {}
        for layer in problem.layers:
            QA, QG = bases[layer]
            S = corrected[layer].reshape(QG.shape[0], QA.shape[0])
            bias = "joint" if has_bias(problem, layer) else "none"
            result[layer] = package_ekfac(problem, QA, QG, S, bias)
        return result


def _fisher(problem: Problem, request: Request, representation):
    """nngeometry's Fisher of ``problem`` in ``representation`` (``PMatKFAC``,
    ``PMatEKFAC``), and the loader it was computed on."""
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM, FIM_MonteCarlo

    loader = batch_loader(problem)
    layers = LayerCollection()
    for layer in problem.layers:
        layers.add_layer_from_model(problem.model, problem.model.get_submodule(layer))
    variant = VARIANTS[type(problem.loss_func).__name__]
    if request.fisher_type == "mc":
        F = FIM_MonteCarlo(
            problem.model,
            loader,
            representation,
            variant=variant,
            trials=request.mc_samples,
            device=str(problem.device),
            layer_collection=layers,
        )
    else:
        F = FIM(
            problem.model,
            loader,
            representation,
            variant=variant,
            device=str(problem.device),
            layer_collection=layers,
        )
    return F, loader
