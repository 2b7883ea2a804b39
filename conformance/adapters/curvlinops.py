"""curvlinops (``curvlinops-for-pytorch``) ``KFACLinearOperator`` as a candidate.

Conventions (curvlinops 3.0.1 docstrings, verified numerically against the suite's oracle):

- ``fisher_type`` ``"type-2"``, ``"mc"``, ``"empirical"`` and ``"forward-only"`` and
  ``kfac_approx`` ``"expand"``/``"reduce"`` (Eschenhagen et al. 2023) are the suite's names.
- The factors are read from ``op.state_dict()`` (``"input_covariances"``,
  ``"gradient_covariances"``), keyed by module name: ``A`` is the input covariance, ``B`` the
  gradient covariance, the weight block is ``kron(B, A)`` over ``weight.flatten()``.
  ``separate_weight_and_bias=False`` appends the constant one last in ``A`` (the suite's
  ``"joint"``); with ``True`` the bias block is ``B`` (``"separate"``).
- Normalisation: ``A`` is averaged over data (and, for expand, shared positions), ``B`` carries
  the loss's reduction factor, as in the suite, for every loss, reduction, Fisher type,
  flavour and number of batches. The one difference is a declared convention: the empirical
  Fisher backpropagates the gradient of the loss as ``nn.MSELoss`` computes it
  (``KFACLinearOperator._compute_loss_and_backward``, branch ``FisherType.EMPIRICAL``) and
  rescales its outer products by the loss's own reduction
  (``_accumulate_gradient_covariance``, ``correction``), i.e. ``R' sum_n grad c'_n grad c'_n^T``
  with ``c' = ||f - y||^2`` and ``R' = R/2`` for MSE: ``empirical_fisher="squared-error"``,
  twice the tutorial's for MSE and equal to it for CE and BCE. Its MC labels for MSE are
  drawn with standard deviation ``sqrt(1/2)``, the likelihood of that same ``c'``; the MC
  Fisher's expectation is the GGN either way.
- MC labels come from curvlinops' own generator seeded with ``seed``; the global RNG is
  untouched.

A fresh operator is built on every call: a second ``compute_kronecker_factors`` on the same
operator adds to the cached factors.
"""

from __future__ import annotations

from collections.abc import Mapping

from kfac_conformance.adapters._common import has_bias, library_version, package, require
from kfac_conformance.conventions import Conventions
from kfac_conformance.problem import Capabilities, Problem, Request
from kfac_ref.factors import KroneckerFactors

LIBRARY = "curvlinops"
LAYER_TYPES = frozenset({"Linear", "Conv2d"})
LOSSES = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})


class CurvlinopsCandidate:
    name = "curvlinops"
    capabilities = Capabilities(
        layer_types=LAYER_TYPES,
        losses=LOSSES,
        conventions=Conventions(empirical_fisher="squared-error"),
    )

    def __init__(self) -> None:
        self.version = library_version("curvlinops-for-pytorch")

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        from curvlinops import KFACLinearOperator

        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        params = [
            param
            for layer in problem.layers
            for param in problem.model.get_submodule(layer).parameters(recurse=False)
        ]
        operator = KFACLinearOperator(
            problem.model,
            problem.loss_func,
            params,
            problem.batches,
            fisher_type=request.fisher_type,
            mc_samples=request.mc_samples if request.fisher_type == "mc" else 1,
            seed=request.seed,
            kfac_approx=request.kfac_approx,
            separate_weight_and_bias=request.bias == "separate",
            check_deterministic=False,
        )
        operator.compute_kronecker_factors()
        state = operator.state_dict()
        A, B = state["input_covariances"], state["gradient_covariances"]
        result = {}
        for layer in problem.layers:
            bias = request.bias if has_bias(problem, layer) else "none"
            result[layer] = package(problem, A[layer], B[layer], bias)
        return result
