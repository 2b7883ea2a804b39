"""Measure the false-positive rate of the statistical MC checks on a correct candidate.

A trial is one run of ``mc/unbiased`` and of ``mc/sqrt-m-convergence`` on one case, with the
seeds ``[t*K, (t+1)*K)`` for trial ``t`` and ``K`` the profile's ``mc_seeds``: trials use
disjoint seeds, so they are independent repetitions of the tests. The reference is correct,
so every failing trial is a false positive. Run::

    python -m kfac_conformance.checks.mc_calibration --trials 200

and record the printed table (with the date and the command) in docs/statistics.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.checks.mc import (
    CONVERGENCE_BOUNDS,
    MC_CASE_IDS,
    STATISTICAL_CASE_IDS,
    T_CRITICAL,
    convergence_statistics,
    unbiased_statistics,
)
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.session import Session
from kfac_conformance.reference_candidate import ReferenceCandidate


@dataclass
class CaseCalibration:
    """The statistics of every trial on one case."""

    case_id: str
    max_abs_t: list[float]
    ratios: list[float]

    @property
    def unbiased_failures(self) -> int:
        return sum(not t <= T_CRITICAL for t in self.max_abs_t)

    @property
    def convergence_failures(self) -> int:
        low, high = CONVERGENCE_BOUNDS
        return sum(not low <= ratio <= high for ratio in self.ratios)


def calibrate(
    candidate: Candidate | None = None,
    trials: int = 200,
    first_trial: int = 0,
    case_ids: Iterable[str] = sorted(STATISTICAL_CASE_IDS),
    profile: str = "default",
    convergence: bool = True,
) -> list[CaseCalibration]:
    """Run ``trials`` independent repetitions of the MC tests per case (see the module doc).

    By default on the cases the statistical checks run on; ``case_ids`` may name any MC case."""
    session = Session(candidate or ReferenceCandidate(), PROFILES[profile])
    seeds_per_trial = PROFILES[profile].mc_seeds
    results = []
    for case_id in case_ids:
        # built from the case definition (what the stored fixtures hold), so that a run of
        # many minutes does not depend on the fixture files staying unchanged meanwhile
        case = ALL_CASES[case_id]
        entry = CaseEntry(case.id, case.make_problem, case)
        calibration = CaseCalibration(case_id, [], [])
        for trial in range(first_trial, first_trial + trials):
            seeds = range(trial * seeds_per_trial, (trial + 1) * seeds_per_trial)
            statistics = unbiased_statistics(session, entry, seeds)
            calibration.max_abs_t.append(max(abs(statistics.scale_t), abs(statistics.direction_t)))
            if convergence:
                calibration.ratios.append(convergence_statistics(session, entry, seeds)[0])
        results.append(calibration)
    return results


def upper_bound_95(failures: int, trials: int) -> float:
    """One-sided 95% upper confidence bound of a rate (exact binomial, Clopper-Pearson)."""
    if failures >= trials:
        return 1.0
    low, high = failures / trials, 1.0
    for _ in range(60):  # bisection on P(X <= failures | p) = 0.05
        middle = (low + high) / 2
        tail = sum(
            math.comb(trials, k) * middle**k * (1 - middle) ** (trials - k)
            for k in range(failures + 1)
        )
        low, high = (middle, high) if tail > 0.05 else (low, middle)
    return high


def table(results: list[CaseCalibration]) -> str:
    low, high = CONVERGENCE_BOUNDS
    lines = [
        f"| case | trials | mc/unbiased failures (abs t > {T_CRITICAL:g}) | largest abs t "
        f"| mc/sqrt-m-convergence failures (ratio outside [{low:g}, {high:g}]) | ratio range |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        ratios = f"{min(result.ratios):.2f} .. {max(result.ratios):.2f}" if result.ratios else "-"
        lines.append(
            f"| {result.case_id} | {len(result.max_abs_t)} | {result.unbiased_failures} "
            f"| {max(result.max_abs_t):.2f} "
            f"| {result.convergence_failures} "
            f"| {ratios} |"
        )
    trials = sum(len(result.max_abs_t) for result in results)
    unbiased = sum(result.unbiased_failures for result in results)
    converged = sum(result.convergence_failures for result in results)
    convergence_trials = sum(len(result.ratios) for result in results)
    lines.append(
        f"| all | {trials} | {unbiased} (95% upper bound {upper_bound_95(unbiased, trials):.2g}) "
        f"| {max(max(result.max_abs_t) for result in results):.2f} "
        f"| {converged} of {convergence_trials} "
        f"(95% upper bound {upper_bound_95(converged, max(convergence_trials, 1)):.2g}) | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="independent trials per case")
    parser.add_argument("--first-trial", type=int, default=0, help="offset of the seed blocks")
    parser.add_argument(
        "--case", action="append", choices=sorted(MC_CASE_IDS), help="only these cases"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = calibrate(
        trials=args.trials,
        first_trial=args.first_trial,
        case_ids=args.case or sorted(STATISTICAL_CASE_IDS),
    )
    print(
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(table(results))


if __name__ == "__main__":
    main()
