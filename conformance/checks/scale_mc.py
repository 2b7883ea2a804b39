r"""Scale, Monte Carlo: at millions of parameters, MC KFAC is an unbiased estimate of the exact
GGN, by probe quadratic forms over seeds.

An MC KFAC draws its own labels, so no exact product can reproduce one call's answer; the
exact side gives its expectation instead. Where type-2 KFAC is exact on every layer (the deep
linear network with MSE), :math:`E[K_{MC}] = K_{\text{type-2}} = G`, the layer's GGN block
(:mod:`kfac_conformance.checks.mc`: ``B`` is linear in the sampled outer products and ``A``
does not depend on them). For every layer the check draws ``PROBES`` seeded standard
Gaussian probes ``v`` (those of :mod:`kfac_conformance.checks.scale`), asks the candidate for
MC KFAC with ``MC_SAMPLES`` samples under ``SEEDS`` seeds, and forms

.. math::  z_k(v) = v^\top K_k v \,/\, v^\top G v - 1,

with :math:`v^\top K_k v = \langle B_k, V A_k V^\top\rangle` from the factors
(:func:`~kfac_conformance.comparison.kronecker_products.output_side_form`) and
:math:`v^\top G v = \langle v, Gv\rangle` by autodiff (JVP and VJP): no P x P tensor. A
correct candidate gives :math:`E[z_k] = 0`. Each (layer, probe) is a one-sample t test with
``SEEDS - 1`` degrees of freedom; the item fails when Holm's procedure rejects one of its tests
at the family-wise level ``FAMILY_ALPHA`` (:mod:`kfac_conformance.checks.significance`).

Basis of the false-positive rate. With MSE the loss Hessian is constant, and on a deep linear
network every datum's output-to-layer Jacobian ``J`` is the same, so
:math:`v^\top K_k v = \mathrm{tr}(S_k C)` with ``C`` fixed and positive semi-definite and
:math:`S_k` the mean of the ``N M`` outer products of the standard Gaussian noise of the
sampled labels: a weighted sum of chi-squares of ``N M`` degrees of freedom each, whose
skewness is at most :math:`\sqrt{8/(NM)}` (0.16 for 160 data and 2 samples). The ``z_k`` are
therefore independent and close to normal, the t test's nominal level holds closely, and a
correct candidate fails an item with probability at most about ``FAMILY_ALPHA`` (1e-6); the
measured rate is in docs/statistics.md. Cases with fewer than ``MIN_DATA`` data are left out:
on one datum the forms are skewed, heavy-tailed quadratics of a few Gaussians (the reason
``mc/unbiased`` leaves out one datum with MSE).

Power. The per-seed spread of ``z`` is at most :math:`\sqrt{2/(NM)}` (0.079 here); a bias
:math:`D = E[K_{MC}] - G` shows on a probe when :math:`|v^\top D v| / v^\top G v` exceeds
about :math:`t_{crit}\,\mathrm{sd}(z)/\sqrt{SEEDS}` (about 0.19 at the worst spread, with
:math:`t_{crit} = 9.6` for 16 seeds and 12 tests). For a Gaussian ``v``,
:math:`v^\top D v` has mean :math:`\mathrm{tr}\,D` and standard deviation
:math:`\sqrt2\|D\|_F`, so a wrong scale and a bias in any direction of comparable size show.
A bias far below that, or one with :math:`v^\top D v = 0` on every probe, is missed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from kfac_conformance.cases.scale import SCALE_CASES, ScaleCase, layer_names
from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.checks.invariance import distinct_flavours
from kfac_conformance.checks.mc import NEEDS_MC
from kfac_conformance.checks.mc_statistics import t_statistic
from kfac_conformance.checks.scale import (
    PROBE_SEED,
    PROBES,
    measured,
    scale_case,
    scale_entry,
    without_cross_terms,
)
from kfac_conformance.checks.significance import (
    FAMILY_ALPHA,
    Test,
    critical_t,
    holm_rejected,
    t_test,
)
from kfac_conformance.comparison.kronecker_products import output_side_form
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import Session
from kfac_conformance.oracle.products import (
    LayerCurvature,
    Probe,
    gaussian_probes,
    layer_parameters,
)
from kfac_ref.factors import KroneckerFactors

SEEDS = 16
# more than one sample, so that the normalisation over samples is part of what is tested
MC_SAMPLES = 2
MIN_DATA = 100
_STATISTIC = (
    "z = v^T K_MC v / v^T G v - 1 over seeds, K_MC from the candidate's factors and G the "
    "exact GGN block by autodiff; one-sample t test per (layer, probe), Holm-corrected"
)


def _inner(first: Probe, second: Probe) -> float:
    return float(sum((a.double() * b.double()).sum() for a, b in zip(first, second, strict=True)))


@dataclasses.dataclass
class ProbeForms:
    """One probe ``v`` of a layer: the exact :math:`v^\top G v` and the candidate's
    :math:`v^\top K_k v` over seeds."""

    layer: str
    flavour: str
    index: int
    probe: Probe
    exact: float
    estimates: list[float] = dataclasses.field(default_factory=list)
    _side: tuple[str, torch.Tensor, torch.Tensor] | None = dataclasses.field(
        default=None, repr=False
    )

    @property
    def block(self) -> tuple[str, str, str]:
        return (self.layer, self.flavour, str(self.index))

    @property
    def ratios(self) -> torch.Tensor:
        return torch.tensor(self.estimates, dtype=torch.float64) / self.exact

    def add(self, result: dict[str, KroneckerFactors]) -> None:
        """Append the form of ``result``'s block: :math:`\\langle B, C\rangle` with ``C`` from
        ``A`` (:func:`output_side_form`), formed again only when ``A`` or the bias mode changes.
        MC KFAC's ``A`` does not depend on the draws, so every seed after the first costs one
        product with ``B`` instead of two matrix products of the layer's size."""
        factors = result[self.layer]
        if self._side is None or not (
            factors.bias == self._side[0] and torch.equal(factors.A, self._side[1])
        ):
            self._side = (factors.bias, factors.A, output_side_form(factors, self.probe))
        side = self._side[2]
        self.estimates.append(float((factors.B.to(side) * side).sum()))

    def test(self) -> Test:
        t = t_statistic(self.ratios - 1, 1.0)
        return t_test(self.block, "scale", t, len(self.estimates) - 1)


def exact_forms(
    problem: Problem, layers: Sequence[str], flavour: str, first: dict[str, KroneckerFactors]
) -> list[ProbeForms]:
    """Every layer's probes (those of scale/type-2-exactness) with their exact forms; the
    bias mode is that of the candidate's ``first`` result."""
    forms = []
    for position, layer in enumerate(layers):
        product = LayerCurvature(problem, layer, "ggn")
        if first[layer].bias == "separate":
            # a separate bias's KFAC has no weight-bias cross terms: nor has its expectation
            product = without_cross_terms(product)
        probes = gaussian_probes(layer_parameters(problem, layer), PROBES, PROBE_SEED + position)
        forms += [
            ProbeForms(layer, flavour, index, probe, _inner(probe, product(probe)))
            for index, probe in enumerate(probes)
        ]
    return forms


def forms_over_seeds(
    problem: Problem,
    layers: Sequence[str],
    flavour: str,
    estimate: Callable[[int], dict[str, KroneckerFactors]],
    seeds: range,
) -> list[ProbeForms]:
    """The forms of ``estimate(seed)`` for every seed; each result is reduced to its forms
    at once (a result holds millions of numbers, the forms a few)."""
    forms: list[ProbeForms] = []
    for seed in seeds:
        result = estimate(seed)
        if not forms:
            forms = exact_forms(problem, layers, flavour, result)
        for form in forms:
            form.add(result)
    return forms


def _candidate_forms(session: Session, entry: CaseEntry, case: ScaleCase) -> list[ProbeForms]:
    forms: list[ProbeForms] = []
    for flavour in distinct_flavours(session, session.fresh(entry)):
        layers = case.exact_layers("type-2", flavour)
        modes = session.supported_bias_modes(entry, "mc", flavour)
        if not layers or not modes:
            continue
        request = Request("mc", flavour, mc_samples=MC_SAMPLES, bias=modes[0])
        # one problem for all seeds: every call restores it and reports any change
        problem = session.fresh(entry)
        forms += forms_over_seeds(
            session.fresh(entry),
            layers,
            flavour,
            lambda seed, p=problem, r=request: session.call(p, dataclasses.replace(r, seed=seed)),
            range(SEEDS),
        )
    if not forms:
        raise CheckSkipped(session.why_unclaimed(["mc"]))
    return forms


def _unbiased(cases: Sequence[ScaleCase]) -> Callable[[Session, CaseEntry], Measurement]:
    def measure(session: Session, entry: CaseEntry) -> Measurement:
        case = scale_case(entry, cases)

        def body(measurement: Measurement) -> None:
            forms = _candidate_forms(session, entry, case)
            tests = [form.test() for form in forms]
            for test in tests:
                measurement.record(abs(test.statistic), critical_t(test.df, len(tests)))
            measurement.details.update(
                probes_per_layer=PROBES,
                seeds=SEEDS,
                mc_samples=MC_SAMPLES,
                tests=len(tests),
                family_alpha=FAMILY_ALPHA,
                statistic=_STATISTIC,
            )
            rejected = holm_rejected(tests)
            if rejected:
                raise _biased(forms, tests, rejected)

        return measured(session, entry, body)

    return measure


def _biased(forms: list[ProbeForms], tests: list[Test], rejected: list[Test]) -> CheckFailed:
    ratio_of = {form.block: form.ratios.mean().item() for form in forms}
    found = "; ".join(
        f"layer {test.block[0]!r} ({test.block[1]}) probe {test.block[2]}: mean "
        f"v^T K_MC v / v^T G v = {ratio_of[test.block]:.4g}, |t| = {abs(test.statistic):.3g} "
        f"(p = {test.p:.2g})"
        for test in rejected
    )
    worst = rejected[0]
    ratios = [ratio_of[test.block] for test in rejected]
    common = sum(ratios) / len(ratios)
    return CheckFailed(
        f"MC KFAC is biased against the exact GGN on {len(rejected)} of {len(tests)} probe "
        f"forms (Holm, family-wise level {FAMILY_ALPHA:g}; {SEEDS} seeds with "
        f"mc_samples={MC_SAMPLES}): {found}",
        observed=abs(worst.statistic),
        tolerance=critical_t(worst.df, len(tests)),
        # the same ratio on every rejected form (within 10%): a scale, not a direction
        diagnosis=f"off by a constant factor x {common:.4g}?"
        if max(ratios) - min(ratios) <= 0.1 * abs(common)
        else None,
    )


def estimable(case: ScaleCase) -> bool:
    """MSE, enough data for near-normal forms, and type-2 KFAC exact on every layer."""
    every_layer = set(layer_names(case.architecture))
    return (
        case.loss == "mse"
        and case.num_data >= MIN_DATA
        and any(set(case.exact_layers("type-2", f)) == every_layer for f in ("expand", "reduce"))
    )


def scale_mc_checks(cases: Sequence[ScaleCase]) -> list[Check]:
    return [
        Check(
            "scale/mc-unbiased",
            "on models of millions of parameters where type-2 KFAC is exact, MC KFAC is an "
            "unbiased estimate of the exact GGN: the probe quadratic forms v^T K_MC v over "
            f"{SEEDS} seeds (mc_samples={MC_SAMPLES}) average to v^T G v by autodiff, {PROBES} "
            f"probes per layer (t tests, Holm-corrected at family-wise level {FAMILY_ALPHA:g}; "
            "measured false-positive rate in docs/statistics.md)",
            "KFAC tutorial (MC Fisher, arXiv 2507.05127); unbiasedness because B is linear in "
            "the sampled outer products",
            kind="statistical",
            measure=_unbiased(cases),
            own_cases=tuple(scale_entry(case) for case in cases if estimable(case)),
            needs=NEEDS_MC,
            profiles=frozenset({"scale"}),
        )
    ]


CHECKS = scale_mc_checks(SCALE_CASES)
