"""Run the exactness checks of stored cases against a JAX candidate; write the suite's report.

The report follows ``kfac_conformance.reports.report`` (schema version 1) so that
``docs/generate_matrix.py`` reads it like any other; ``torch_version`` is ``"not used"`` and
``jax_version`` and the declared ``conventions`` are added. Statuses, messages of refusals and
expected failures are worded as the PyTorch runner words them.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from kfac_conformance.checks.significance import FAMILY_ALPHA, critical_t, holm_rejected
from kfac_conformance.comparison.tolerances import round_off_tolerance
from kfac_conformance.contract import conventions
from kfac_conformance.contract.expected_failures import ExpectedFailure, match
from kfac_conformance.jax import network, stored
from kfac_conformance.jax.candidate import JaxCandidate, Refused, dense_block
from kfac_conformance.jax.checks import (
    CURVATURE,
    EXACTNESS_CHECKS,
    MC_CASE_IDS,
    MC_SEEDS,
    NAMES,
    UNBIASED_SAMPLES,
    compare_layers,
    unbiased_tests,
)

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
CANDIDATES = {"kfac-jax": "kfac_conformance.jax.kfac_jax_candidate:KfacJaxCandidate"}
LOSS_CLASSES = {"mse": "MSELoss", "ce": "CrossEntropyLoss", "bce": "BCEWithLogitsLoss"}


@dataclass(frozen=True)
class Item:
    check_id: str
    fisher_type: str
    flavour: str
    case_id: str

    @property
    def id(self) -> str:
        return f"{self.check_id}[{self.case_id}]"


def load_candidate(spec: str) -> JaxCandidate:
    """A registered name (``kfac-jax``) or ``module:attribute`` naming a candidate class."""
    target = CANDIDATES.get(spec, spec)
    module, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(
            f"unknown JAX candidate {spec!r}: use one of {sorted(CANDIDATES)} or 'module:Class'"
        )
    return getattr(importlib.import_module(module), attribute)()


MC_UNBIASED = "mc/unbiased"


def plan(
    case_ids: Sequence[str] | None = None, check_ids: Sequence[str] | None = None
) -> list[Item]:
    """Every exactness check on every stored canonical case that claims it, then
    ``mc/unbiased`` on :data:`~kfac_conformance.jax.checks.MC_CASE_IDS`."""
    selected = list(case_ids) if case_ids is not None else stored.case_ids()
    items = []
    for check_id, fisher_type, flavour in EXACTNESS_CHECKS:
        if check_ids is not None and check_id not in check_ids:
            continue
        for case_id in selected:
            case = stored.load(case_id)
            if case.kind == "canonical" and case.exact_layers(fisher_type, flavour):
                items.append(Item(check_id, fisher_type, flavour, case_id))
    if check_ids is None or MC_UNBIASED in check_ids:
        items += [Item(MC_UNBIASED, "mc", "expand", c) for c in MC_CASE_IDS if c in selected]
    return items


def problem_counts(case: stored.StoredCase) -> tuple[dict[str, float], dict[str, int]]:
    """``({"N", "T", "K"}, {layer: S})`` as ``kfac_conformance.comparison.diagnosis`` counts them:
    data, loss terms per datum, batches; shared positions per datum of each layer."""
    params = network.jax_params(case)
    x = jnp.asarray(case.batches[0][0])
    shared = {}
    for index, spec in enumerate(case.architecture):
        output = network.layer_function(spec, str(index))(params, x)
        if spec[0] == "linear":
            shared[str(index)] = int(x[0, ..., 0].size)
        elif spec[0] == "conv2d":
            shared[str(index)] = int(output[0, 0].size)
        x = output
    terms = x[0, 0].size if case.loss == "ce" else x[0].size
    counts = {"N": float(case.num_data), "T": float(terms), "K": float(len(case.batches))}
    return counts, shared


def quantities(case: stored.StoredCase, counts: dict[str, float]) -> dict[str, object]:
    """What :func:`kfac_conformance.contract.conventions.scale` reads: ``N``, the tutorial's ``R``,
    the loss's PyTorch class name."""
    loss = LOSS_CLASSES[case.loss]
    R = conventions.reduction_factor(loss, case.reduction, int(counts["N"]), int(counts["T"]))
    return {"N": counts["N"], "R": R, "loss": loss}


def run_item(candidate: JaxCandidate, item: Item, command: str) -> dict:
    start = time.perf_counter()
    result = {
        "check_id": item.check_id,
        "case_id": item.case_id,
        "status": "passed",
        "message": "",
        "observed": None,
        "tolerance": None,
        "diagnosis": None,
        "reproduction": {"command": command, "problem": item.case_id},
    }
    case = stored.load(item.case_id)
    missing = case.kinds_without_jax_network
    if missing:
        result.update(status="skipped", message=f"not supported by the JAX runner: {missing}")
        result["duration_s"] = time.perf_counter() - start
        return result
    refusal = candidate.refusal(case, item.fisher_type, item.flavour)
    try:
        if refusal is not None:
            raise Refused(refusal)
        if item.check_id == MC_UNBIASED:
            outcome = _unbiased(candidate, case)
        else:
            outcome = _compare(
                candidate, item, case, candidate.compute(case, item.fisher_type, item.flavour)
            )
    except Refused as refused:
        result.update(
            status="skipped", message=f"not supported (refused by the candidate): {refused}"
        )
    except Exception as exception:  # a crash of the candidate is a result, not the run's end
        trace = traceback.format_exception_only(type(exception), exception)
        result.update(status="error", message="candidate raised " + "".join(trace).strip())
    else:
        result.update(outcome)
    result["duration_s"] = time.perf_counter() - start
    return result


def _compare(candidate: JaxCandidate, item: Item, case: stored.StoredCase, computed) -> dict:
    curvature, other = CURVATURE[item.fisher_type]
    counts, shared = problem_counts(case)
    scale = conventions.scale(candidate.conventions, item.fisher_type, quantities(case, counts))
    tolerance = round_off_tolerance("float64")
    layers = case.exact_layers(item.fisher_type, item.flavour)
    missing = [layer for layer in layers if layer not in computed]
    if missing:
        return {
            "status": "error",
            "message": f"the candidate returned no factors for layers {missing}",
        }
    worst, mismatch, pattern = compare_layers(
        computed,
        scale,
        case.exact(curvature),
        layers,
        tolerance,
        (NAMES[other], case.exact(other)),
        counts,
        shared,
    )
    fields = {"observed": worst, "tolerance": tolerance}
    if mismatch is None:
        return fields
    message = (
        f"layer {mismatch.layer!r} (bias={computed[mismatch.layer].bias}): relative error "
        f"{mismatch.error:.3g} > tolerance {tolerance:.1g}"
    )
    diagnosis = "; ".join(part for part in (mismatch.diagnosis, pattern) if part) or None
    return {**fields, "status": "failed", "message": message, "diagnosis": diagnosis}


def _unbiased(candidate: JaxCandidate, case: stored.StoredCase) -> dict:
    """``mc/unbiased``: the mean of MC KFAC over seeds is the exact GGN, on every layer's block
    (two t-tests each, Holm-corrected across the layers)."""
    counts, _ = problem_counts(case)
    scale = conventions.scale(candidate.conventions, "mc", quantities(case, counts))
    results = [
        candidate.compute(case, "mc", "expand", mc_samples=UNBIASED_SAMPLES, seed=seed)
        for seed in range(MC_SEEDS)
    ]
    ggn = case.exact("ggn")
    tests, ratios = [], {}
    for layer in case.layers:
        target = ggn[layer].ravel()
        if not np.abs(target).max() > 0:
            continue
        estimates = np.stack([(dense_block(result[layer]) / scale).ravel() for result in results])
        layer_tests, ratios[layer] = unbiased_tests(layer, estimates, target)
        tests += layer_tests
    worst = max(tests, key=lambda test: abs(test.statistic) / critical_t(test.df, len(tests)))
    fields = {
        "observed": abs(worst.statistic),
        "tolerance": critical_t(worst.df, len(tests)),
    }
    rejected = holm_rejected(tests)
    if not rejected:
        return fields
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
    diagnosis = f"off by a constant factor x {scaled[0]:.4g}?" if scaled else None
    return {
        **fields,
        "status": "failed",
        "message": message,
        "diagnosis": diagnosis,
        "observed": abs(rejected[0].statistic),
        "tolerance": critical_t(rejected[0].df, len(tests)),
    }


def apply_expected_failures(result: dict, expected: Sequence[ExpectedFailure]) -> dict:
    entry = match(list(expected), f"{result['check_id']}[{result['case_id']}]", result["check_id"])
    if entry is None:
        return result
    if result["status"] in ("failed", "error"):
        result["message"] = f"expected failure ({entry.reason}): {result['message']}"
        result["status"] = "xfailed"
    elif result["status"] == "passed":
        result["status"] = "xpassed"
        result["message"] = f"expected to fail ({entry.reason}) but passed"
    return result


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def report(spec: str, candidate: JaxCandidate, items: Sequence[Item], results: list[dict]) -> dict:
    done = {f"{r['check_id']}[{r['case_id']}]" for r in results}
    not_run = [item.id for item in items if item.id not in done]
    summary = {"total": len(items), "ran": len(results)}
    summary.update({status: sum(r["status"] == status for r in results) for status in STATUSES})
    summary["not_run"] = len(not_run)
    complete = not not_run
    return {
        "schema_version": SCHEMA_VERSION,
        "suite_version": _version("kfac-conformance") or "unknown",
        "complete": complete,
        "state": "complete" if complete else "running",
        "interruption": None,
        "candidate": {
            "spec": spec,
            "name": candidate.name,
            "version": candidate.version,
            "conventions": candidate.conventions.describe(),
        },
        "torch_version": "not used",
        "jax_version": _version("jax"),
        "device": "cpu",
        "profile": "stored-cases",
        "timeout_s": None,
        "isolate": False,
        "summary": summary,
        "not_run": not_run,
        "unused_expected_failures": [],
        "results": [{"id": f"{r['check_id']}[{r['case_id']}]", **r} for r in results],
    }


def write(path: Path, document: dict) -> None:
    """Atomically, as ``kfac_conformance.reports.report.Report.write`` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1, default=str))
    os.replace(temporary, path)


def run(
    spec: str,
    items: Sequence[Item],
    expected: Sequence[ExpectedFailure] = (),
    report_path: Path | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Run ``items`` against the candidate ``spec``; the report after the last result (and
    rewritten to ``report_path`` after every result)."""
    candidate = load_candidate(spec)
    results: list[dict] = []
    document = report(spec, candidate, items, results)
    for item in items:
        command = f"python -m kfac_conformance.jax --candidate {spec} --item '{item.id}'"
        results.append(apply_expected_failures(run_item(candidate, item, command), expected))
        if on_result is not None:
            on_result(results[-1])
        document = report(spec, candidate, items, results)
        if report_path is not None:
            write(report_path, document)
    used = {
        entry.pattern
        for entry in expected
        if any(entry.matches(f"{r['check_id']}[{r['case_id']}]", r["check_id"]) for r in results)
    }
    document["unused_expected_failures"] = [e.pattern for e in expected if e.pattern not in used]
    if report_path is not None:
        write(report_path, document)
    return document
