r"""The measurements of the neutral runner's items: each returns the result fields it decides
(``status``, ``message``, ``observed``, ``tolerance``, ``diagnosis``) or raises
:class:`~kfac_conformance.neutral.candidate.Refused`.

- exactness: the candidate's block over its declared scale equals the stored exact block
  (``ggn`` for type-2, ``empirical`` for the empirical Fisher) on the layers the case's
  ``exact`` names;
- agreement: it equals the stored reference KFAC (``kfac_ref``'s) on every layer, in the bias
  mode the candidate answers with;
- ``mc/unbiased``: the mean of MC KFAC over seeds is the stored GGN (two t tests per layer,
  Holm-corrected across the layers);
- ``distributed/kfac-<fisher type>``: computed on W = 2 and 4 devices, each holding an equal
  shard of every batch, the candidate's KFAC is on every device its own single-process KFAC
  of all the data (what data parallelism must not change; agreement and exactness hold the
  single-process answer to the reference).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from kfac_conformance.checks.significance import FAMILY_ALPHA, critical_t, holm_rejected
from kfac_conformance.contract import conventions
from kfac_conformance.neutral import transforms
from kfac_conformance.neutral.candidate import FrameworkCandidate, MultiDeviceCandidate, Refused
from kfac_conformance.neutral.comparison import (
    Comparison,
    compare_layers,
    restricted,
    tolerance,
)
from kfac_conformance.neutral.factors import Factors, dense_block
from kfac_conformance.neutral.fixtures import StoredCase
from kfac_conformance.neutral.plan import MC_UNBIASED, MEAN_VS_SUM, PERMUTATION, Item
from kfac_conformance.neutral.statistics import MC_SEEDS, UNBIASED_SAMPLES, unbiased_tests

# exactness/<fisher type>-<flavour> compares with this stored block; the other is a hypothesis
CURVATURE = {"type-2": ("ggn", "empirical"), "empirical": ("empirical", "ggn")}
NAMES = {"ggn": "GGN", "empirical": "empirical Fisher"}
WORLD_SIZES = (2, 4)
# the diagnosis's hypothesis for a device whose answer is wrong
OWN_SHARD = "single-process KFAC of this device's shard alone (the devices' factors not combined)"


def scale_of(candidate: FrameworkCandidate, fisher_type: str, case: StoredCase) -> float:
    """The factor the candidate's declared convention puts on the tutorial's block."""
    return conventions.scale(candidate.conventions, fisher_type, case.quantities())


def _missing(result: Mapping[str, Factors], layers: list[str]) -> dict | None:
    missing = [layer for layer in layers if layer not in result]
    if not missing:
        return None
    return {"status": "error", "message": f"the candidate returned no factors for layers {missing}"}


def _verdict(
    comparison: Comparison, result: Mapping[str, Factors], tol: float, context: str
) -> dict:
    fields = {"observed": comparison.worst, "tolerance": tol}
    if comparison.wrong_layer is None:
        return fields
    layer = comparison.wrong_layer
    message = (
        f"layer {layer!r} ({context}bias={result[layer].bias}): relative error "
        f"{comparison.wrong_error:.3g} > tolerance {tol:.1g}"
    )
    return {**fields, "status": "failed", "message": message, "diagnosis": comparison.diagnosis}


def _refuse_unless_offered(
    candidate: FrameworkCandidate, case: StoredCase, fisher_type: str, flavour: str
) -> None:
    reason = candidate.refusal(case, fisher_type, flavour)
    if reason is not None:
        raise Refused(reason)


def exactness(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    ((fisher_type,), (flavour,)) = item.fisher_types, item.flavours
    _refuse_unless_offered(candidate, case, fisher_type, flavour)
    curvature, other = CURVATURE[fisher_type]
    result = candidate.compute(case, fisher_type, flavour)
    layers = case.exact_layers(fisher_type, flavour)
    missing = _missing(result, layers)
    if missing is not None:
        return missing
    tol = tolerance(candidate.dtype)
    comparison = compare_layers(
        result,
        scale_of(candidate, fisher_type, case),
        case.exact(curvature),
        layers,
        tol,
        case.counts,
        case.shared_positions,
        (NAMES[other], case.exact(other)),
    )
    return _verdict(comparison, result, tol, "")


def _bias_key(factors: Factors) -> str:
    """The stored reference answer to compare with: a layer without a bias is stored alike
    under every bias mode, so ``"none"`` reads the joint one."""
    return "joint" if factors.bias == "none" else factors.bias


def agreement(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    (fisher_type,) = item.fisher_types
    tol = tolerance(candidate.dtype)
    scale = scale_of(candidate, fisher_type, case)
    refusals, worst = [], 0.0
    for flavour in item.flavours:
        reason = candidate.refusal(case, fisher_type, flavour)
        if reason is not None:
            refusals.append(f"{flavour}: {reason}")
            continue
        result = candidate.compute(case, fisher_type, flavour)
        missing = _missing(result, case.layers)
        if missing is not None:
            return missing
        # the reference in each layer's own bias mode (layers may differ: one has no bias)
        reference = {
            layer: case.reference_kfac(fisher_type, flavour, _bias_key(factors))[layer]
            for layer, factors in result.items()
            if layer in case.layers
        }
        comparison = compare_layers(
            result,
            scale,
            {layer: dense_block(factors) for layer, factors in reference.items()},
            case.layers,
            tol,
            case.counts,
            case.shared_positions,
        )
        verdict = _verdict(comparison, result, tol, f"kfac_approx={flavour}, ")
        if verdict.get("status") == "failed":
            return verdict
        worst = max(worst, comparison.worst)
    if len(refusals) == len(item.flavours):
        raise Refused("; ".join(refusals))
    return {"observed": worst, "tolerance": tol}


def _type2_kfac(case: StoredCase, result: Mapping[str, Factors]) -> dict[str, np.ndarray]:
    """What MC KFAC estimates, in the candidate's bias modes: the GGN where type-2 KFAC-expand
    is exact on every layer, else the reference's stored type-2 KFAC-expand."""
    if set(case.exact_layers("type-2", "expand")) == set(case.layers):
        ggn = case.exact("ggn")
        return {layer: restricted(ggn[layer], result[layer]) for layer in case.layers}
    return {
        layer: dense_block(case.reference_kfac("type-2", "expand", _bias_key(result[layer]))[layer])
        for layer in case.layers
    }


def mc_unbiased(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    _refuse_unless_offered(candidate, case, "mc", "expand")
    scale = scale_of(candidate, "mc", case)
    results = [
        candidate.compute(case, "mc", "expand", mc_samples=UNBIASED_SAMPLES, seed=seed)
        for seed in range(MC_SEEDS)
    ]
    missing = _missing(results[0], case.layers)
    if missing is not None:
        return missing
    targets = _type2_kfac(case, results[0])
    tests, ratios = [], {}
    for layer in case.layers:
        target = targets[layer].ravel()
        if not np.abs(target).max() > 0:
            continue
        estimates = np.stack([(dense_block(result[layer]) / scale).ravel() for result in results])
        layer_tests, ratios[layer] = unbiased_tests(layer, estimates, target)
        tests += layer_tests
    worst = max(tests, key=lambda test: abs(test.statistic) / critical_t(test.df, len(tests)))
    rejected = holm_rejected(tests)
    if not rejected:
        return {"observed": abs(worst.statistic), "tolerance": critical_t(worst.df, len(tests))}
    found = "; ".join(
        f"layer {test.block[0]!r} {test.name} |t| = {abs(test.statistic):.3g} (p = {test.p:.2g}), "
        f"mean estimate / type-2 along the target = {ratios[test.block[0]]:.4g}"
        for test in rejected
    )
    message = (
        f"MC KFAC is biased on {len({test.block for test in rejected})} of {len(ratios)} blocks "
        f"(Holm, family-wise level {FAMILY_ALPHA:g} over {len(tests)} t tests, {MC_SEEDS} "
        f"seeds with mc_samples={UNBIASED_SAMPLES}): {found}"
    )
    scaled = [ratios[test.block[0]] for test in rejected if test.name == "scale"]
    return {
        "status": "failed",
        "message": message,
        "diagnosis": f"off by a constant factor x {scaled[0]:.4g}?" if scaled else None,
        "observed": abs(rejected[0].statistic),
        "tolerance": critical_t(rejected[0].df, len(tests)),
    }


def _transformed_case(item: Item, case: StoredCase) -> tuple[StoredCase, float]:
    """The case the invariance compares with, and the factor on its answers (loss curvature
    only: forward-only's ``B`` does not depend on the loss)."""
    if item.check_id == MEAN_VS_SUM:
        other = transforms.with_reduction(case, "sum" if case.reduction == "mean" else "mean")
        return other, case.counts["R"] / other.counts["R"]
    if item.check_id == PERMUTATION:
        return transforms.permuted(case), 1.0
    several = len(case.batches) > 1
    return (transforms.concatenated(case) if several else transforms.split_in_two(case)), 1.0


def invariance(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    """The candidate's answer equals ``factor`` times its answer to the transformed case, each
    over its own declared scale, for every Fisher type and flavour of the item it offers."""
    other, factor = _transformed_case(item, case)
    tol = tolerance(candidate.dtype)
    asked = [
        (fisher_type, flavour) for fisher_type in item.fisher_types for flavour in item.flavours
    ]
    offered = [
        (fisher_type, flavour)
        for fisher_type, flavour in asked
        if candidate.refusal(case, fisher_type, flavour) is None
        and candidate.refusal(other, fisher_type, flavour) is None
    ]
    if not offered:
        raise Refused(f"none of the fisher types {list(item.fisher_types)} is offered")
    worst = 0.0
    for fisher_type, flavour in offered:
        original = candidate.compute(case, fisher_type, flavour)
        transformed = candidate.compute(other, fisher_type, flavour)
        missing = _missing(original, case.layers) or _missing(transformed, case.layers)
        if missing is not None:
            return missing
        scaled = factor if conventions.governing_field(fisher_type) else 1.0
        scaled /= scale_of(candidate, fisher_type, other)
        expected = {layer: scaled * dense_block(transformed[layer]) for layer in case.layers}
        comparison = compare_layers(
            original,
            scale_of(candidate, fisher_type, case),
            expected,
            case.layers,
            tol,
            case.counts,
            case.shared_positions,
        )
        context = f"against {other.id}, fisher_type={fisher_type!r}, kfac_approx={flavour}, "
        verdict = _verdict(comparison, original, tol, context)
        if verdict.get("status") == "failed":
            return verdict
        worst = max(worst, comparison.worst)
    return {"observed": worst, "tolerance": tol}


def _on_world(
    candidate: MultiDeviceCandidate,
    item: Item,
    case: StoredCase,
    flavour: str,
    world: int,
    expected: dict[str, np.ndarray],
) -> dict:
    """Every device's answer on ``world`` devices against ``expected`` (the single-process
    blocks over the scale): the first wrong device's verdict, else the worst error."""
    (fisher_type,) = item.fisher_types
    tol = tolerance(candidate.dtype)
    scale = scale_of(candidate, fisher_type, case)
    shards = transforms.sharded(case, world)
    answers = list(candidate.compute_on_devices(shards, fisher_type, flavour))
    if len(answers) != world:
        message = f"the candidate returned {len(answers)} answers for {world} devices"
        return {"status": "error", "message": message}
    worst = 0.0
    for device, answer in enumerate(answers):
        missing = _missing(answer, case.layers)
        if missing is not None:
            return missing
        # a factor between devices and one process is named by W alone (no shared positions)
        compare = functools.partial(
            compare_layers, answer, scale, expected, case.layers, tol, {"W": world}, {}
        )
        comparison = compare()
        if comparison.wrong_layer is not None:
            own = candidate.compute(shards[device], fisher_type, flavour)
            mistake = {layer: dense_block(own[layer]) / scale for layer in own}
            context = (
                f"device {device} of W={world} holding {shards[device].num_data} of the "
                f"{case.num_data} data, kfac_approx={flavour}, "
            )
            return _verdict(compare((OWN_SHARD, mistake)), answer, tol, context)
        worst = max(worst, comparison.worst)
    return {"observed": worst, "tolerance": tol}


def on_devices(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    """Every device's answer equals the candidate's single-process answer for all the data, for
    W in :data:`WORLD_SIZES` and every flavour of the item that the candidate offers."""
    if not isinstance(candidate, MultiDeviceCandidate):
        raise Refused("the candidate computes on one device only (it has no compute_on_devices)")
    (fisher_type,) = item.fisher_types
    offered = [f for f in item.flavours if candidate.refusal(case, fisher_type, f) is None]
    if not offered:
        _refuse_unless_offered(candidate, case, fisher_type, item.flavours[0])
    scale = scale_of(candidate, fisher_type, case)
    worst = 0.0
    for flavour in offered:
        single = candidate.compute(case, fisher_type, flavour)
        missing = _missing(single, case.layers)
        if missing is not None:
            return missing
        expected = {layer: dense_block(single[layer]) / scale for layer in case.layers}
        for world in WORLD_SIZES:
            verdict = _on_world(candidate, item, case, flavour, world, expected)
            if "status" in verdict:
                return verdict
            worst = max(worst, verdict["observed"])
    return {"observed": worst, "tolerance": tolerance(candidate.dtype)}


def measure(candidate: FrameworkCandidate, item: Item, case: StoredCase) -> dict:
    """The item's measurement (the check family is the part of its id before the ``/``)."""
    family = item.check_id.partition("/")[0]
    if item.check_id == MC_UNBIASED:
        return mc_unbiased(candidate, item, case)
    if family == "agreement":
        return agreement(candidate, item, case)
    if family == "invariance":
        return invariance(candidate, item, case)
    if family == "distributed":
        return on_devices(candidate, item, case)
    return exactness(candidate, item, case)
