r"""Scale: exactness and reference agreement on models of millions of parameters, by probes.

No P x P block is formed. A layer's KFAC block ``K`` acts on a probe through its factors
(:mod:`kfac_conformance.comparison.kronecker_products`, ``B V A^T``); the exact block ``G``
through autodiff (:mod:`kfac_conformance.oracle.products`, JVP and VJP); ``kfac_ref``'s block
through its factors. For every layer the check draws ``PROBES`` standard Gaussian probes
``v`` over the layer's parameters (seeded) and holds

.. math::  e(v) = \|(K - G)v\| / \|Gv\|  \le  \tau(\text{dtype}),

with :math:`\tau` the dtype's round-off tolerance of the block checks (1e-10 in float64).

Basis of the tolerance and of the test. For a standard Gaussian ``v``,
:math:`E\|Mv\|^2 = \|M\|_F^2`, so :math:`e(v)^2` estimates :math:`\|K-G\|_F^2/\|G\|_F^2`, the
relative Frobenius error that the dense checks hold to the same :math:`\tau`; a correct
candidate differs from ``G`` by round-off only (~1e-14 in float64), four orders below
:math:`\tau`, and no probe can make a round-off-sized difference large, so the check does not
fail a correct candidate. A nonzero ``D = K - G`` gives ``Dv != 0`` with probability one (``v``
would have to lie in ``D``'s null space, a set of measure zero). A difference is missed only
if it is below the tolerance on every probe; with :math:`D = \sum \sigma_i u_i w_i^\top`,
:math:`\|Dv\| \ge \sigma_1 |w_1^\top v|` and :math:`w_1^\top v \sim N(0, 1)`, so a difference
of relative Frobenius size :math:`\epsilon` (rank ``r``) passes one probe with probability at
most about :math:`\sqrt{2r/\pi}\,\tau/\epsilon` (times the fluctuation of
:math:`\|Gv\|/\|G\|_F`), and all ``PROBES`` independent probes with that to the power
``PROBES``: a bug a hundred times the tolerance escapes three probes of a rank-100 difference
with probability below 1e-3, and most bugs are many orders larger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from kfac_conformance.cases.scale import SCALE_CASES, ScaleCase, layer_names
from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    CheckSkipped,
    Measurement,
    Needs,
)
from kfac_conformance.checks.invariance import distinct_flavours
from kfac_conformance.comparison.kronecker_products import (
    kronecker_product,
    probe_difference,
    probe_norm,
)
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.peak_memory import PeakMemory
from kfac_conformance.execution.session import Session, reference_compute, tolerance_for
from kfac_conformance.oracle.products import (
    LayerCurvature,
    Probe,
    gaussian_probes,
    layer_parameters,
)
from kfac_ref.factors import KroneckerFactors

PROBES = 3
PROBE_SEED = 23
_PROFILES = frozenset({"scale"})
_BASIS = (
    "relative error ||(K - G) v|| / ||G v|| on standard Gaussian probes v, an estimate of the "
    "relative Frobenius error, held to the dtype's round-off tolerance of the block checks"
)

ProductOf = Callable[[str], Callable[[Probe], Probe]]


def scale_entry(case: ScaleCase) -> CaseEntry:
    return CaseEntry(case.id, case.make_problem)


def scale_case(entry: CaseEntry, cases: Sequence[ScaleCase]) -> ScaleCase:
    for case in cases:
        if case.id == entry.id:
            return case
    raise ValueError(f"{entry.id!r} is not a scale case")


def _compare_products(
    problem: Problem,
    layers: Sequence[str],
    candidate: dict[str, KroneckerFactors],
    target_of: ProductOf,
    measurement: Measurement,
    context: str,
) -> None:
    """Hold every layer's candidate product to the target's on ``PROBES`` probes each."""
    tolerance = tolerance_for(problem)
    for index, layer in enumerate(layers):
        target = target_of(layer)
        if candidate[layer].bias == "separate":
            target = without_cross_terms(target)
        params = layer_parameters(problem, layer)
        for probe in gaussian_probes(params, PROBES, PROBE_SEED + index):
            expected = target(probe)
            difference = probe_difference(kronecker_product(candidate[layer], probe), expected)
            measurement.hold(
                _relative(probe_norm(difference), probe_norm(expected)),
                tolerance,
                f"layer {layer!r} ({context}): ||(K - target) v|| / ||target v||",
            )
    measurement.details["probes_per_layer"] = PROBES
    measurement.details["tolerance_basis"] = _BASIS


def _relative(difference: float, target: float) -> float:
    """``difference / target``; a zero target is matched only by a zero difference."""
    if target > 0:
        return difference / target
    return 0.0 if difference == 0 else math.inf


def without_cross_terms(product: Callable[[Probe], Probe]) -> Callable[[Probe], Probe]:
    """The product with the weight and bias blocks alone: a separate bias's KFAC has no
    weight-bias cross terms by definition, so they are no part of the comparison."""

    def restricted(probe: Probe) -> Probe:
        weight, bias = probe
        return (
            product((weight, torch.zeros_like(bias)))[0],
            product((torch.zeros_like(weight), bias))[1],
        )

    return restricted


def measured(session: Session, entry: CaseEntry, body: Callable[[Measurement], None]):
    """Run ``body``, recording the peak memory and the parameter count in the details."""
    measurement = Measurement()
    problem = session.fresh(entry)
    measurement.details["parameters"] = sum(p.numel() for p in problem.model.parameters())
    del problem
    peak = PeakMemory(session.device)
    try:
        with peak:
            body(measurement)
    except CheckFailed as failed:
        failed.message = f"{failed.message}; {peak.describe()}"
        raise
    measurement.details["peak_memory_bytes"] = peak.bytes
    measurement.details["peak_memory_method"] = peak.method
    return measurement


_CURVATURE = {"type-2": ("ggn", "GGN"), "empirical": ("empirical", "empirical Fisher")}


def _exactness(
    fisher_type: str, cases: Sequence[ScaleCase]
) -> Callable[[Session, CaseEntry], Measurement]:
    curvature, name = _CURVATURE[fisher_type]

    def measure(session: Session, entry: CaseEntry) -> Measurement:
        case = scale_case(entry, cases)

        def body(measurement: Measurement) -> None:
            ran = False
            for flavour in distinct_flavours(session, session.fresh(entry)):
                layers = case.exact_layers(fisher_type, flavour)
                modes = session.supported_bias_modes(entry, fisher_type, flavour)
                if not layers or not modes:
                    continue
                request = Request(fisher_type, flavour, bias=modes[0])
                result = session.call(session.fresh(entry), request)
                exact_problem = session.fresh(entry)
                _compare_products(
                    exact_problem,
                    layers,
                    result,
                    lambda layer, p=exact_problem: LayerCurvature(p, layer, curvature),
                    measurement,
                    f"{request.describe()}, against the exact {name}",
                )
                ran = True
            if not ran:
                raise CheckSkipped(session.why_unclaimed([fisher_type]))

        return measured(session, entry, body)

    return measure


def _on_exact_layers(fisher_type: str, cases: Sequence[ScaleCase]) -> tuple[CaseEntry, ...]:
    return tuple(
        scale_entry(case)
        for case in cases
        if any(case.exact_layers(fisher_type, flavour) for flavour in ("expand", "reduce"))
    )


def _agreement(cases: Sequence[ScaleCase]) -> Callable[[Session, CaseEntry], Measurement]:
    def measure(session: Session, entry: CaseEntry) -> Measurement:
        case = scale_case(entry, cases)

        def body(measurement: Measurement) -> None:
            ran = False
            claimed = session.candidate.capabilities.fisher_types
            for fisher_type in [t for t in ("type-2", "empirical") if t in claimed]:
                for flavour in distinct_flavours(session, session.fresh(entry)):
                    modes = session.supported_bias_modes(entry, fisher_type, flavour)
                    problem = session.fresh(entry)
                    exact = set(case.exact_layers(fisher_type, flavour))
                    layers = [layer for layer in problem.layers if layer not in exact]
                    if not layers or not modes:
                        continue
                    request = Request(fisher_type, flavour, bias=modes[0])
                    result = session.call(problem, request)
                    reference = reference_compute(session.fresh(entry), request)
                    _compare_products(
                        problem,
                        layers,
                        result,
                        lambda layer, r=reference: lambda v: kronecker_product(r[layer], v),
                        measurement,
                        f"{request.describe()}, against kfac_ref",
                    )
                    ran = True
            if not ran:
                raise CheckSkipped(session.why_unclaimed(["type-2", "empirical"]))

        return measured(session, entry, body)

    return measure


def _inexact_somewhere(case: ScaleCase) -> bool:
    """Whether a layer of ``case`` is not exact for some fisher type and flavour."""
    layers = set(layer_names(case.architecture))
    return any(
        set(case.exact_layers(fisher_type, flavour)) != layers
        for fisher_type in ("type-2", "empirical")
        for flavour in ("expand", "reduce")
    )


def scale_checks(cases: Sequence[ScaleCase]) -> list[Check]:
    """The family's checks on ``cases`` (the profile's, or smaller ones for tests)."""
    exactness = [
        Check(
            f"scale/{fisher_type}-exactness",
            f"on models of millions of parameters, KFAC {fisher_type} times Gaussian probes "
            f"equals the exact {_CURVATURE[fisher_type][1]} times them (autodiff, no P x P "
            "block) on every layer where the theory says KFAC is exact; "
            f"{PROBES} probes per layer, relative error within the dtype's round-off tolerance",
            "KFAC tutorial (arXiv 2507.05127); Eschenhagen et al. 2023",
            kind="exact",
            measure=_exactness(fisher_type, cases),
            own_cases=_on_exact_layers(fisher_type, cases),
            needs=Needs(fisher_types=frozenset({fisher_type})),
            profiles=_PROFILES,
        )
        for fisher_type in ("type-2", "empirical")
    ]
    return [
        *exactness,
        Check(
            "scale/agreement",
            "on models of millions of parameters, KFAC type-2 and KFAC-empirical times Gaussian "
            "probes equal kfac_ref's on every layer no exactness check holds; "
            f"{PROBES} probes per layer, relative error within the dtype's round-off tolerance",
            "differential testing against the reference",
            kind="reference",
            measure=_agreement(cases),
            own_cases=tuple(scale_entry(case) for case in cases if _inexact_somewhere(case)),
            profiles=_PROFILES,
        ),
    ]


CHECKS = scale_checks(SCALE_CASES)
