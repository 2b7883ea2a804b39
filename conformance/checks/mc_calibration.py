"""Measure the false-positive rates of the statistical MC checks on a correct candidate.

A trial runs the tests of ``mc/unbiased``, ``mc/sqrt-m-convergence`` and
``ekfac/mc-trace-unbiased`` on one case, with the seeds ``[t*K, (t+1)*K)`` for trial ``t`` and
``K`` the profile's ``mc_seeds``: trials use disjoint seeds, so they are independent
repetitions of the tests. The reference is correct, so every failing trial is a false
positive. Each trial also records its smallest Bonferroni-adjusted p-value, the smallest
family-wise level at which it would have failed: at levels large enough to be observed
(0.05, 0.01, 0.001) the fraction of trials failing must be consistent with the level, which
checks the per-layer correction itself. Run::

    python -m kfac_conformance.checks.mc_calibration --trials 600 --jobs 2

and record the printed tables (with the date and the command) in docs/statistics.md.

The reference's blocks are replayed (:mod:`kfac_conformance.checks.mc_replay`): the work that
does not depend on the seed is done once per case, and the replay is verified against the
checks' own calls of the reference on the first trial of every task.
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.checks.ekfac.statistical import ggn_traces, mc_traces, trace_statistics
from kfac_conformance.checks.mc import MC_CASE_IDS, STATISTICAL_CASE_IDS
from kfac_conformance.checks.mc_replay import ReferenceReplay, rows_of, verify
from kfac_conformance.checks.mc_statistics import (
    CONVERGENCE_BOUNDS,
    CONVERGENCE_SAMPLES,
    UNBIASED_SAMPLES,
    BlockEstimates,
    block_convergence,
    block_estimates,
    block_statistics,
    convergence_failures,
    convergence_tests,
    mc_requests,
    unbiased_tests,
)
from kfac_conformance.checks.significance import (
    FAMILY_ALPHA,
    Test,
    holm_rejected,
    smallest_adjusted_p,
)
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.session import Session
from kfac_conformance.reference_candidate import ReferenceCandidate

CHECK_IDS = ("mc/unbiased", "mc/sqrt-m-convergence", "ekfac/mc-trace-unbiased")
# family-wise levels at which failures are frequent enough to compare with the level
OBSERVABLE_LEVELS = (0.05, 0.01, 0.001)


@dataclass(frozen=True)
class Trial:
    """One check's outcome on one case in one trial."""

    failed: bool
    adjusted_p: float  # the smallest family-wise level at which the item would fail
    largest: float  # the largest |statistic| of its tests
    ratios: tuple[float, float] | None = None  # convergence: smallest and largest ratio


def _trial(tests: list[Test], failed: bool, ratios: tuple[float, float] | None = None) -> Trial:
    largest = max(abs(test.statistic) for test in tests)
    return Trial(failed, smallest_adjusted_p(tests), largest, ratios)


@dataclass
class CaseCalibration:
    """Every trial's outcome of each check on one case."""

    case_id: str
    trials: dict[str, list[Trial]] = field(default_factory=lambda: {c: [] for c in CHECK_IDS})

    def failures(self, check_id: str) -> int:
        return sum(trial.failed for trial in self.trials[check_id])

    def at_level(self, check_id: str, level: float) -> int:
        return sum(trial.adjusted_p <= level for trial in self.trials[check_id])


class CaseReplay:
    """One case's replayed reference (per tested flavour), its targets, and the statistics of a
    trial computed by the checks' own functions."""

    def __init__(self, case_id: str, profile: str, verified_seeds: range):
        case = ALL_CASES[case_id]
        # built from the case definition (what the stored fixtures hold), so that a run of
        # many minutes does not depend on the fixture files staying unchanged meanwhile
        entry = CaseEntry(case.id, case.make_problem, case)
        session = Session(ReferenceCandidate(), PROFILES[profile])
        self.requests = mc_requests(session, entry)
        self.replays = [ReferenceReplay(session.fresh(entry), r) for r in self.requests]
        self.targets: list[dict] = []
        for request, replay in zip(self.requests, self.replays, strict=True):
            called = block_estimates(session, entry, request, UNBIASED_SAMPLES, verified_seeds)
            verify(replay.kfac_rows(UNBIASED_SAMPLES, verified_seeds), rows_of(called), "KFAC")
            self.targets.append({block.layer: block.target for block in called})
        for samples in CONVERGENCE_SAMPLES:
            called = block_estimates(session, entry, self.requests[0], samples, verified_seeds)
            verify(self.replays[0].kfac_rows(samples, verified_seeds), rows_of(called), "KFAC")
        self.ekfac_requests = mc_requests(session, entry, "ekfac")
        self.ekfac_replays = [ReferenceReplay(session.fresh(entry), r) for r in self.ekfac_requests]
        for request, replay in zip(self.ekfac_requests, self.ekfac_replays, strict=True):
            called = mc_traces(session, entry, request, verified_seeds)
            replayed = replay.ekfac_traces(UNBIASED_SAMPLES, verified_seeds)
            verify(replayed, called, "EKFAC trace")
        self.ggn_traces = ggn_traces(session, entry)

    def _blocks(self, index: int, samples: int, seeds: range) -> list[BlockEstimates]:
        rows = self.replays[index].kfac_rows(samples, seeds)
        flavour = self.requests[index].kfac_approx
        return [
            BlockEstimates(layer, flavour, rows[layer], target)
            for layer, target in self.targets[index].items()
            if target.abs().max() > 0
        ]

    def trial(self, seeds: range) -> dict[str, Trial]:
        statistics = [
            block_statistics(block)
            for index in range(len(self.requests))
            for block in self._blocks(index, UNBIASED_SAMPLES, seeds)
        ]
        tests = unbiased_tests(statistics)
        outcomes = {"mc/unbiased": _trial(tests, bool(holm_rejected(tests)))}
        few, many = (self._blocks(0, samples, seeds) for samples in CONVERGENCE_SAMPLES)
        convergence = [
            found
            for pair in zip(few, many, strict=True)
            if (found := block_convergence(*pair)) is not None
        ]
        ratios = [block.ratio for block in convergence]
        outcomes["mc/sqrt-m-convergence"] = _trial(
            convergence_tests(convergence),
            bool(convergence_failures(convergence)),
            (min(ratios), max(ratios)),
        )
        traces = []
        for request, replay in zip(self.ekfac_requests, self.ekfac_replays, strict=True):
            replayed = replay.ekfac_traces(UNBIASED_SAMPLES, seeds)
            traces += trace_statistics(replayed, self.ggn_traces, request.kfac_approx)[0]
        tests = [block.test() for block in traces]
        outcomes["ekfac/mc-trace-unbiased"] = _trial(tests, bool(holm_rejected(tests)))
        return outcomes


def _seeds(trial: int, profile: str) -> range:
    size = PROFILES[profile].mc_seeds
    return range(trial * size, (trial + 1) * size)


def _run_task(task: tuple[str, int, int, str]) -> tuple[str, list[dict[str, Trial]]]:
    case_id, first, stop, profile = task
    torch.set_num_threads(1)
    replay = CaseReplay(case_id, profile, _seeds(first, profile))
    return case_id, [replay.trial(_seeds(trial, profile)) for trial in range(first, stop)]


def calibrate(
    trials: int = 600,
    first_trial: int = 0,
    case_ids: Iterable[str] = sorted(STATISTICAL_CASE_IDS),
    profile: str = "default",
    jobs: int = 1,
) -> list[CaseCalibration]:
    """Run ``trials`` independent repetitions of the statistical tests per case (see the
    module doc), split over ``jobs`` processes. By default on the cases the statistical
    checks run on; ``case_ids`` may name any MC case."""
    case_ids = list(case_ids)
    chunk = math.ceil(trials / jobs)
    tasks = [
        (case_id, start, min(start + chunk, first_trial + trials), profile)
        for case_id in case_ids
        for start in range(first_trial, first_trial + trials, chunk)
    ]
    results = {case_id: CaseCalibration(case_id) for case_id in case_ids}
    if jobs == 1:
        outputs: Iterable = map(_run_task, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        outputs = pool.imap(_run_task, tasks)
    for case_id, outcomes in outputs:
        for outcome in outcomes:
            for check_id, trial in outcome.items():
                results[case_id].trials[check_id].append(trial)
    if jobs > 1:
        pool.close()
        pool.join()
    return [results[case_id] for case_id in case_ids]


def binomial_cdf(k: int, n: int, p: float) -> float:
    """:math:`P(X \\le k)` for :math:`X \\sim \\mathrm{Bin}(n, p)`, summed in log space."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(j + 1)
        - math.lgamma(n - j + 1)
        + j * math.log(p)
        + (n - j) * math.log1p(-p)
        for j in range(k + 1)
    ]
    return min(1.0, sum(math.exp(value) for value in logs))


def _bisect(condition, low: float = 0.0, high: float = 1.0) -> float:
    """The boundary in ``[low, high]`` where ``condition`` turns from true to false."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if condition(middle) else (low, middle)
    return high


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a rate (exact binomial, Clopper-Pearson)."""
    if failures >= trials:
        return 1.0
    return _bisect(lambda p: binomial_cdf(failures, trials, p) > 1 - confidence)


def upper_bound_95(failures: int, trials: int) -> float:
    return upper_bound(failures, trials, 0.95)


def interval_95(failures: int, trials: int) -> tuple[float, float]:
    """Two-sided 95% Clopper-Pearson interval of a rate."""
    high = upper_bound(failures, trials, 0.975)
    if failures == 0:
        return 0.0, high
    low = _bisect(lambda p: 1 - binomial_cdf(failures - 1, trials, p) < 0.025)
    return low, high


def _levels(results: Sequence[CaseCalibration], check_id: str) -> list[str]:
    return [str(sum(r.at_level(check_id, level) for r in results)) for level in OBSERVABLE_LEVELS]


def table(results: Sequence[CaseCalibration], check_id: str) -> str:
    levels = " | ".join(f"adjusted p <= {level:g}" for level in OBSERVABLE_LEVELS)
    convergence = check_id == "mc/sqrt-m-convergence"
    extra = (
        f" | ratio range | trials with a ratio outside {list(CONVERGENCE_BOUNDS)}"
        if convergence
        else ""
    )
    lines = [
        f"| case | trials | failures (level {FAMILY_ALPHA:g}) | {levels} | largest abs statistic{extra} |",
        "|---" * (4 + len(OBSERVABLE_LEVELS) + 2 * convergence) + "|",
    ]
    for result in results:
        trials = result.trials[check_id]
        row = [
            result.case_id,
            str(len(trials)),
            str(result.failures(check_id)),
            *(str(result.at_level(check_id, level)) for level in OBSERVABLE_LEVELS),
            f"{max(trial.largest for trial in trials):.2f}",
        ]
        if convergence:
            low, high = CONVERGENCE_BOUNDS
            row.append(
                f"{min(t.ratios[0] for t in trials):.2f} .. {max(t.ratios[1] for t in trials):.2f}"
            )
            row.append(str(sum(t.ratios[0] < low or t.ratios[1] > high for t in trials)))
        lines.append("| " + " | ".join(row) + " |")
    total = sum(len(result.trials[check_id]) for result in results)
    failures = sum(result.failures(check_id) for result in results)
    lines.append(
        f"| **all** | {total} | **{failures}** | {' | '.join(_levels(results, check_id))} "
        f"| {max(max(t.largest for t in r.trials[check_id]) for r in results):.2f}"
        + (" | |" if convergence else "")
        + " |"
    )
    return "\n".join(lines)


def summary(results: Sequence[CaseCalibration], check_id: str) -> str:
    """The bound on the rate, per item and pooled, and the observable levels' intervals."""
    per_case = min(len(result.trials[check_id]) for result in results)
    total = sum(len(result.trials[check_id]) for result in results)
    failures = sum(result.failures(check_id) for result in results)
    worst = max(result.failures(check_id) for result in results)
    lines = [
        f"- at the checks' level {FAMILY_ALPHA:g}: {failures} failures in {total} trials; per "
        f"case at most {worst} of {per_case}, one-sided 95% upper bound "
        f"{upper_bound_95(worst, per_case):.2g} per item ({upper_bound_95(failures, total):.2g} "
        "pooled over the cases)"
    ]
    for level in OBSERVABLE_LEVELS:
        count = sum(result.at_level(check_id, level) for result in results)
        low, high = interval_95(count, total)
        verdict = "consistent with" if low <= level else "ABOVE"
        lines.append(
            f"- at level {level:g}: {count} of {total} = {count / total:.4f}, 95% interval "
            f"[{low:.4f}, {high:.4f}]: {verdict} a rate of at most {level:g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=600, help="independent trials per case")
    parser.add_argument("--first-trial", type=int, default=0, help="offset of the seed blocks")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument(
        "--case", action="append", choices=sorted(MC_CASE_IDS), help="only these cases"
    )
    args = parser.parse_args(argv)
    start, cpu = time.perf_counter(), time.process_time()
    results = calibrate(
        trials=args.trials,
        first_trial=args.first_trial,
        case_ids=args.case or sorted(STATISTICAL_CASE_IDS),
        jobs=args.jobs,
    )
    children = os.times()
    print(
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s wall, "
        f"{time.process_time() - cpu + children.children_user + children.children_system:.0f} s CPU"
    )
    for check_id in CHECK_IDS:
        print(f"\n### {check_id}\n\n{table(results, check_id)}\n\n{summary(results, check_id)}")


if __name__ == "__main__":
    main()
