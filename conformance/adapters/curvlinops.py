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

from kfac_conformance.adapters._common import (
    Unsupported,
    has_bias,
    package,
    package_ekfac,
    refuse_shared_outputs,
    require,
)
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import EKFACFactors, KroneckerFactors

LIBRARY = "curvlinops"
LAYER_TYPES = frozenset({"Linear", "Conv2d"})
LOSSES = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})


def _operator(operator_class, problem: Problem, request: Request):
    """A fresh ``operator_class`` (KFAC or EKFAC) for the problem's layers and the request."""
    params = [
        param
        for layer in problem.layers
        for param in problem.model.get_submodule(layer).parameters(recurse=False)
    ]
    return operator_class(
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


class CurvlinopsCandidate:
    name = "curvlinops"
    capabilities = Capabilities(
        layer_types=LAYER_TYPES,
        losses=LOSSES,
        conventions=Conventions(empirical_fisher="squared-error"),
    )

    requires = Requirement(("curvlinops-for-pytorch",), "curvlinops")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        from curvlinops import KFACLinearOperator

        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        operator = _operator(KFACLinearOperator, problem, request)
        operator.compute_kronecker_factors()
        state = operator.state_dict()
        A, B = state["input_covariances"], state["gradient_covariances"]
        result = {}
        for layer in problem.layers:
            bias = request.bias if has_bias(problem, layer) else "none"
            result[layer] = package(problem, A[layer], B[layer], bias)
        return result


class CurvlinopsEKFACCandidate:
    """curvlinops' ``EKFACLinearOperator`` (EKFAC only; its KFAC is the candidate above).

    ``op.state_dict()`` after ``compute_kronecker_factors()`` and
    ``compute_eigenvalue_correction()`` holds, keyed by module name,
    ``"input_covariances_eigenvectors"`` (``QA``, columns, from ``torch.linalg.eigh``),
    ``"gradient_covariances_eigenvectors"`` (``QB``) and ``"corrected_eigenvalues"``: a
    ``(d_out, d_in [+ 1])`` tensor for a joint bias, else a dict keyed by the parameter's
    position in ``params`` with the weight's ``(d_out, d_in)`` and the bias's ``(d_out,)``
    (the suite's ``S`` and ``S_bias``). The correction sums the squares of per-datum
    gradients summed over shared positions (``compute_eigenvalue_correction_linear_weight_sharing``),
    the suite's definition for both flavours. EKFAC supports no ``"forward-only"`` and only
    model outputs ``(N, C)`` (it raises otherwise), which the adapter refuses up front.
    Scales as curvlinops' KFAC: the tutorial's curvature, and the empirical Fisher of the
    squared error ``‖f − y‖²`` for MSE (declared, converted by the harness).
    """

    name = "curvlinops-ekfac"
    capabilities = Capabilities(
        layer_types=LAYER_TYPES,
        losses=LOSSES,
        fisher_types=frozenset({"type-2", "mc", "empirical"}),
        approximations=frozenset({"ekfac"}),
        conventions=Conventions(empirical_fisher="squared-error"),
    )

    requires = Requirement(("curvlinops-for-pytorch",), "curvlinops")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def compute(self, problem: Problem, request: Request) -> Mapping[str, EKFACFactors]:
        from curvlinops import EKFACLinearOperator

        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        if request.fisher_type not in self.capabilities.fisher_types:
            raise Unsupported(LIBRARY, f"EKFAC with fisher_type {request.fisher_type!r}")
        refuse_shared_outputs(problem, LIBRARY)
        operator = _operator(EKFACLinearOperator, problem, request)
        operator.compute_kronecker_factors()
        operator.compute_eigenvalue_correction()
        state = operator.state_dict()
        QA = state["input_covariances_eigenvectors"]
        QB = state["gradient_covariances_eigenvectors"]
        corrected = state["corrected_eigenvalues"]
        positions = operator._mapping  # module name -> {"weight": index, "bias": index}
        result = {}
        for layer in problem.layers:
            bias = request.bias if has_bias(problem, layer) else "none"
            if isinstance(corrected[layer], dict):
                S = corrected[layer][positions[layer]["weight"]]
                S_bias = corrected[layer][positions[layer]["bias"]] if bias == "separate" else None
            else:
                S, S_bias = corrected[layer], None
            result[layer] = package_ekfac(problem, QA[layer], QB[layer], S, bias, S_bias)
        return result
