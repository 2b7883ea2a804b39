r"""Scale conventions: how a candidate normalises its curvature, declared and converted here.

The suite's own convention is the KFAC tutorial's (Mucsányi et al., arXiv 2507.05127): the
loss is :math:`L = R\sum_n c(f_n, y_n)` (eq. 1, "empirical risk"), split as in its examples
"Square loss" and "Cross-entropy loss":

- MSE: :math:`c = \tfrac12\|f - y\|^2`, :math:`R = 2` (``"sum"``) or :math:`2/(N\dim Y)`
  (``"mean"``);
- CE: :math:`c = -\log\mathrm{softmax}(f)_y`, :math:`R = 1` or :math:`1/(N\dim Y)` (``dim Y``:
  the loss terms of one datum, e.g. sequence positions);
- BCE-with-logits (not in the tutorial; chosen the same way, as the negative log-likelihood of
  the Bernoulli it models): :math:`c = -y\log\sigma(f) - (1-y)\log(1-\sigma(f))` per element,
  :math:`R = 1` or :math:`1/(N\dim Y)`.

With that split every criterion is the negative log-likelihood of the model's predictive
distribution (for MSE a unit-variance Gaussian), and the tutorial's curvature matrices are

- GGN / type-2 Fisher: :math:`G = R\sum_n J_n^\top\nabla^2_f c_n J_n` (independent of the
  split);
- MC Fisher: :math:`R\sum_n \mathbb E_{\hat y\sim r(\cdot|f_n)}[J_n^\top\nabla_f c_n(\hat y)
  \nabla_f c_n(\hat y)^\top J_n]` (same expectation as ``G``);
- empirical Fisher (definition "Empirical Fisher", its :math:`1/N` replaced by the loss's
  ``R`` as the tutorial does in practice): :math:`E = R\sum_n\nabla_\theta c_n\nabla_\theta
  c_n^\top`. This one depends on the split: :math:`(R, c)\to(aR, c/a)` scales it by
  :math:`1/a`.

Other libraries make other, legitimate choices. A candidate declares its choice in
:class:`Conventions` (``Capabilities.conventions``); every scale in use is a known convention
below, so the harness converts the candidate's blocks back to the tutorial's exactly, in one
place (``Session.call``), and a scale that is no known convention remains a failure.

This module imports nothing heavy, so runners for other frameworks can share it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

# quantities of a problem: "N" data, "R" the tutorial's reduction factor, "loss" the class name
Quantities = Mapping[str, object]


@dataclass(frozen=True)
class Convention:
    """One known way to scale a curvature block, relative to the tutorial's: its formula, the
    factor on the tutorial's block, and where the libraries that use it define it."""

    formula: str
    scale: Callable[[Quantities], float]
    source: str = ""


def _mse(quantities: Quantities) -> bool:
    return quantities["loss"] == "MSELoss"


def _per_datum_mean(quantities: Quantities) -> float:
    return 1.0 / (float(quantities["N"]) * float(quantities["R"]))


def _per_datum_sum(quantities: Quantities) -> float:
    return 1.0 / float(quantities["R"])


# type-2 and MC Fisher (the MC labels are drawn from the same predictive distribution)
CURVATURE_CONVENTIONS: dict[str, Convention] = {
    "tutorial": Convention(
        "R Σ_n J_nᵀ ∇²c_n J_n, the tutorial's split",
        lambda q: 1.0,
        "arXiv 2507.05127; kfac_ref, curvlinops, BackPACK",
    ),
    "mean-nll": Convention(
        "(1/N) Σ_n J_nᵀ ∇²c_n J_n, the Fisher of the per-datum negative log-likelihood "
        "(unit-variance Gaussian, categorical, Bernoulli) averaged over data",
        _per_datum_mean,
        "ASDL 0.1a5 (FisherConfig data_size), nngeometry 0.4 (FIM averages over the loader)",
    ),
    "mean-squared-error": Convention(
        "(1/N) Σ_n J_nᵀ ∇²c'_n J_n with MSE c' = ‖f − y‖² (a Gaussian of variance ½)",
        lambda q: (2.0 if _mse(q) else 1.0) * _per_datum_mean(q),
        "kronfluence 1.0.1 (the mean over examples of the Task's summed loss; its examples "
        "sample y ~ N(f, ½)); kfac-jax 0.0.8 (register_squared_error_loss, variance=0.5 in "
        "kfac_jax/_src/loss_functions.py, factors divided by the batch size)",
    ),
    "sum-nll": Convention(
        "Σ_n J_nᵀ ∇²c_n J_n, the Fisher of the per-datum negative log-likelihood summed over data",
        _per_datum_sum,
        "laplace-torch 0.3 (KronLaplace.H_facs at σ = 1 without prior or temperature; "
        "laplace/baselaplace.py ParametricLaplace.fit sums over the loader)",
    ),
}

EMPIRICAL_FISHER_CONVENTIONS: dict[str, Convention] = {
    "tutorial": Convention(
        "R Σ_n ∇c_n ∇c_nᵀ with the tutorial's split (MSE c = ½‖f − y‖²)",
        lambda q: 1.0,
        "arXiv 2507.05127; kfac_ref",
    ),
    "squared-error": Convention(
        "R' Σ_n ∇c'_n ∇c'_nᵀ with MSE split as c' = ‖f − y‖², R' = R/2 (as nn.MSELoss reads)",
        lambda q: 2.0 if _mse(q) else 1.0,
        "curvlinops 3.0.1 (KFACLinearOperator differentiates the loss as given)",
    ),
    "loss-gradients": Convention(
        "Σ_n ∇ℓ_n ∇ℓ_nᵀ with ℓ_n = R c_n, per-example gradients of the loss as reduced",
        lambda q: float(q["R"]),
    ),
    "mean-nll": Convention(
        "(1/N) Σ_n ∇c_n ∇c_nᵀ with the tutorial's criterion (the negative log-likelihood)",
        _per_datum_mean,
    ),
    "mean-squared-error": Convention(
        "(1/N) Σ_n ∇c'_n ∇c'_nᵀ with MSE c' = ‖f − y‖² (the criterion nn.MSELoss sums)",
        lambda q: (4.0 if _mse(q) else 1.0) * _per_datum_mean(q),
        "ASDL 0.1a5 (FISHER_EMP), kronfluence 1.0.1, kfac-jax 0.0.8, mlx-kfac 0.4.0 (the summed "
        "loss with loss_reduction='sum')",
    ),
    "sum-nll": Convention(
        "Σ_n ∇c_n ∇c_nᵀ with the tutorial's criterion, summed over data",
        _per_datum_sum,
        "laplace-torch 0.3 (its empirical-Fisher backends, summed as its GGN)",
    ),
}

# which declared field governs each fisher type; forward-only has no loss-dependent scale
_FIELD_OF = {"type-2": "curvature", "mc": "curvature", "empirical": "empirical_fisher"}
_REGISTRY = {"curvature": CURVATURE_CONVENTIONS, "empirical_fisher": EMPIRICAL_FISHER_CONVENTIONS}


@dataclass(frozen=True)
class Conventions:
    """What a candidate declares about its scales; an undeclared field is the tutorial's.

    - ``curvature``: the type-2 and MC Fisher's scale, a key of :data:`CURVATURE_CONVENTIONS`;
    - ``empirical_fisher``: a key of :data:`EMPIRICAL_FISHER_CONVENTIONS`.
    """

    curvature: str = "tutorial"
    empirical_fisher: str = "tutorial"

    def __post_init__(self) -> None:
        for field, registry in _REGISTRY.items():
            value = getattr(self, field)
            if value not in registry:
                raise ValueError(
                    f"Conventions.{field} must be one of {sorted(registry)}, got {value!r}"
                )

    def describe(self) -> dict[str, str]:
        return {field: getattr(self, field) for field in _REGISTRY}

    def declaration(self) -> str:
        changed = [
            f"{field}={getattr(self, field)!r}"
            for field in _REGISTRY
            if getattr(self, field) != "tutorial"
        ]
        return f"Conventions({', '.join(changed)})"


TUTORIAL = Conventions()


def governing_field(fisher_type: str) -> str | None:
    """The :class:`Conventions` field that scales ``fisher_type`` (``None``: no convention)."""
    return _FIELD_OF.get(fisher_type)


def scale(conventions: Conventions, fisher_type: str, quantities: Quantities) -> float:
    """``s`` with candidate block ``= s *`` the tutorial's block, for a declared convention."""
    field = governing_field(fisher_type)
    if field is None:
        return 1.0
    return _REGISTRY[field][getattr(conventions, field)].scale(quantities)


def reduction_factor(loss: str, reduction: str, num_data: int, terms_per_datum: int) -> float:
    """The tutorial's ``R``: ``k`` for ``"sum"`` and ``k/(N dim Y)`` for ``"mean"``, with
    ``k = 2`` for MSE (whose criterion carries the ½) and 1 otherwise."""
    k = 2.0 if loss == "MSELoss" else 1.0
    return k if reduction == "sum" else k / (num_data * terms_per_datum)


def statement() -> str:
    """The default conventions and the declarable alternatives, as ``list-checks -v`` shows."""
    lines = [
        "Conventions (default: the KFAC tutorial's, arXiv 2507.05127):",
        "  loss     L = R Σ_n c(f_n, y_n)  (eq. 1, empirical risk)",
        "  MSE      c = ½‖f − y‖², R = 2 (sum) or 2/(N dim Y) (mean)  (example 'Square loss')",
        "  CE       c = −log softmax(f)_y, R = 1 or 1/(N dim Y)  (example 'Cross-entropy loss')",
        "  BCE      c = Bernoulli negative log-likelihood, R = 1 or 1/(N dim Y)  (chosen as CE)",
        "  GGN      R Σ_n J_nᵀ ∇²c_n J_n = type-2 Fisher; MC Fisher has the same expectation",
        "  EF       R Σ_n ∇c_n ∇c_nᵀ  (definition 'Empirical Fisher', 1/N replaced by R)",
        "  blocks   parameters flattened row-major; weight block kron(B, A); named_parameters order",
        "A candidate declares other scales with Capabilities(conventions=Conventions(...)):",
    ]
    for field, registry in _REGISTRY.items():
        for name, convention in registry.items():
            used = f"  [{convention.source}]" if convention.source else ""
            lines.append(f"  {field}={name!r}: {convention.formula}{used}")
    return "\n".join(lines)


__all__ = [
    "CURVATURE_CONVENTIONS",
    "EMPIRICAL_FISHER_CONVENTIONS",
    "TUTORIAL",
    "Convention",
    "Conventions",
    "governing_field",
    "reduction_factor",
    "scale",
    "statement",
]
