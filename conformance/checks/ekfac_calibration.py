"""Measure the false-positive rate of ``ekfac/mc-trace-unbiased`` on a correct candidate.

Trial ``t`` runs the test on one case with the seeds ``[t*K, (t+1)*K)`` (``K`` the profile's
``mc_seeds``), so trials are independent repetitions; the reference is correct, so every
failing trial is a false positive. Run::

    python -m kfac_conformance.checks.ekfac_calibration --trials 100

and record the printed table (with the date and the command) in docs/statistics.md.
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.checks.ekfac.statistical import mc_trace_t
from kfac_conformance.checks.mc import STATISTICAL_CASE_IDS, T_CRITICAL
from kfac_conformance.checks.mc_calibration import upper_bound_95
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.session import Session
from kfac_conformance.reference_candidate import ReferenceCandidate


def calibrate(trials: int, profile: str = "default") -> dict[str, list[float]]:
    """``|t|`` of every trial, per case the check runs on."""
    session = Session(ReferenceCandidate(), PROFILES[profile])
    seeds_per_trial = PROFILES[profile].mc_seeds
    statistics = {}
    for case_id in sorted(STATISTICAL_CASE_IDS):
        case = ALL_CASES[case_id]
        entry = CaseEntry(case.id, case.make_problem, case)
        statistics[case_id] = [
            abs(
                mc_trace_t(session, entry, range(t * seeds_per_trial, (t + 1) * seeds_per_trial))[0]
            )
            for t in range(trials)
        ]
    return statistics


def table(statistics: dict[str, list[float]]) -> str:
    lines = [
        f"| case | trials | failures (abs t > {T_CRITICAL:g}) | largest abs t |",
        "|---|---|---|---|",
    ]
    for case_id, values in statistics.items():
        failures = sum(not value <= T_CRITICAL for value in values)
        lines.append(f"| {case_id} | {len(values)} | {failures} | {max(values):.2f} |")
    every = [value for values in statistics.values() for value in values]
    failures = sum(not value <= T_CRITICAL for value in every)
    lines.append(
        f"| all | {len(every)} | {failures} (95% upper bound "
        f"{upper_bound_95(failures, len(every)):.2g}) | {max(every):.2f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="independent trials per case")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    statistics = calibrate(args.trials)
    print(
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(table(statistics))


if __name__ == "__main__":
    main()
