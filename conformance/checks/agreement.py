"""Agreement with the reference: where no exactness check holds a Fisher type, a candidate
must equal ``kfac_ref``; for MC, on the labels the candidate says it drew."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckSkipped,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.checks.drawn import drawn, float64
from kfac_conformance.checks.invariance import distinct_flavours
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract.problem import FLAVOURS, Problem, Request
from kfac_conformance.execution.session import (
    Session,
    dense_blocks,
    reference_compute,
    tolerance_for,
)
from kfac_ref.factors import GroupedFactors, KroneckerFactors
from kfac_ref.layers import LayerRule, rule_for


def _not_exact_for(fisher_type: str) -> Callable[[CaseEntry], bool]:
    """The cases whose exactness map names no layer for ``fisher_type`` (in any flavour): no
    exactness check holds it to the truth there, so the reference does."""

    def selects(entry: CaseEntry) -> bool:
        case = entry.case
        return case is None or not any(case.exact_layers(fisher_type, f) for f in FLAVOURS)

    return selects


def _agreement_check(fisher_type: str) -> Check:
    def measure(session: Session, entry: CaseEntry):
        measurement, ran = Measurement(), False
        for flavour in distinct_flavours(session, session.fresh(entry)):
            for bias in session.supported_bias_modes(entry, fisher_type, flavour):
                request = Request(fisher_type, flavour, bias=bias)
                problem = session.fresh(entry)
                result = session.call(problem, request)
                reference = dense_blocks(session.reference(entry, request))
                compare_diagnosed(
                    problem,
                    result,
                    reference,
                    problem.layers,
                    tolerance_for(problem),
                    measurement,
                    f"kfac_approx={flavour}, bias={bias}",
                    request=request,
                )
                ran = True
        if not ran:
            raise CheckSkipped(f"not supported: fisher type {fisher_type!r}")
        return measurement

    return Check(
        id=f"agreement/{fisher_type}",
        statement=f"KFAC {fisher_type} equals kfac_ref's on problems where no exactness check holds it (differential test)",
        source="differential testing against the reference",
        kind="reference",
        measure=measure,
        cases=_not_exact_for(fisher_type),
        needs=Needs(fisher_types=frozenset({fisher_type})),
        # drawn problems are compared with kfac_ref exact or not: ``cases`` leaves the exact
        # canonical cases to the exactness checks, which is no condition of the property
        fuzz=FuzzProperty(float64(drawn(fisher_type)), order=1),
    )


# MC KFAC with M draws is the mean over the draws of the empirical KFAC on each draw's labels:
# B = R sum_n (1/M) sum_m g(y_nm) g(y_nm)^T, and A does not depend on the labels
MC_SAMPLES, MC_SEED = 2, 5


def kfac_on_labels(
    make_problem: Callable[[], Problem], request: Request, labels: list[Tensor]
) -> dict[str, KroneckerFactors]:
    """kfac_ref's MC KFAC for ``labels`` (one ``(M, *y.shape)`` tensor per batch of the
    problem ``make_problem`` builds)."""
    per_draw = []
    for draw in range(request.mc_samples):
        problem = make_problem().to(device="cpu", dtype=torch.float64)
        problem.batches = [
            (X, drawn_labels[draw])
            for (X, _), drawn_labels in zip(problem.batches, labels, strict=True)
        ]
        per_draw.append(reference_compute(problem, replace(request, fisher_type="empirical")))
    return {
        layer: _mean_over_draws(
            rule_for(problem.model.get_submodule(layer), request.kfac_approx),
            [result[layer] for result in per_draw],
        )
        for layer in per_draw[0]
    }


def _mean_over_draws(
    rule: LayerRule, draws: list[KroneckerFactors] | list[GroupedFactors]
) -> KroneckerFactors | GroupedFactors:
    """The mean of the draws' blocks: only the output-gradient factor depends on the labels
    (``B``, or ``A`` for a transposed weight), so the mean is that factor's (per group)."""
    first = draws[0]
    if isinstance(first, GroupedFactors):
        return GroupedFactors(
            tuple(
                _mean_over_draws(rule, [draw.groups[g] for draw in draws])
                for g in range(len(first.groups))
            )
        )
    if rule.transposed_weight:
        return KroneckerFactors(sum(d.A for d in draws) / len(draws), first.B, first.bias)
    return KroneckerFactors(first.A, sum(d.B for d in draws) / len(draws), first.bias)


def _mc_on_drawn_labels(session: Session, entry: CaseEntry):
    labels_of = getattr(session.candidate, "sampled_labels", None)
    if labels_of is None:
        raise CheckSkipped(
            "not supported: the candidate does not expose the labels its MC Fisher drew "
            "(optional method sampled_labels(problem, request))"
        )
    measurement, ran = Measurement(), False
    for flavour in distinct_flavours(session, session.fresh(entry)):
        for bias in session.supported_bias_modes(entry, "mc", flavour):
            request = Request("mc", flavour, mc_samples=MC_SAMPLES, seed=MC_SEED, bias=bias)
            problem = session.fresh(entry)
            result = session.call(problem, request)
            labels = [
                label.detach().cpu().double() if label.is_floating_point() else label.detach().cpu()
                for label in labels_of(problem, request)
            ]
            compare_diagnosed(
                problem,
                result,
                dense_blocks(kfac_on_labels(entry.make_problem, request, labels)),
                problem.layers,
                tolerance_for(problem),
                measurement,
                f"kfac_approx={flavour}, bias={bias}, on the labels the candidate drew",
            )
            ran = True
    if not ran:
        raise CheckSkipped("not supported: fisher type 'mc'")
    return measurement


CHECKS = [
    *(_agreement_check(fisher_type) for fisher_type in ("type-2", "empirical", "forward-only")),
    Check(
        id="agreement/mc-drawn-labels",
        statement="MC KFAC equals kfac_ref's on the labels the candidate says it drew (the mean "
        "over the draws of the empirical KFAC on each), for candidates that expose them",
        source="B of MC KFAC is linear in the sampled outer products; differential testing",
        kind="reference",
        measure=_mc_on_drawn_labels,
        cases=_not_exact_for("mc"),
        needs=Needs(fisher_types=frozenset({"mc"})),
        fuzz=FuzzProperty(float64(drawn("mc")), order=1),
    ),
]
