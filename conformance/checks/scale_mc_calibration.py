"""Measure the false-positive rate of ``scale/mc-unbiased`` on the reference.

Trial ``t`` runs the check's statistic on ``kfac_ref`` with the seeds
``[t*SEEDS, (t+1)*SEEDS)``: trials use disjoint seeds, so they are independent repetitions of
the test, and every failing trial is a false positive. Each trial also records its smallest
Bonferroni-adjusted p-value, the smallest family-wise level at which it would have failed: at
levels large enough to be observed (0.05, 0.01) the fraction of trials failing must be
consistent with the level. Run::

    python -m kfac_conformance.checks.scale_mc_calibration --trials 1000
    python -m kfac_conformance.checks.scale_mc_calibration --trials 4 --full

(the first on the tests' small deep linear network, the second on the profile's own) and
record the printed lines, with the date and the command, in docs/statistics.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from kfac_conformance.cases.scale import MINI_SCALE_CASES, SCALE_CASES, ScaleCase
from kfac_conformance.checks.scale_mc import (
    MC_SAMPLES,
    SEEDS,
    ProbeForms,
    estimable,
    forms_over_seeds,
)
from kfac_conformance.checks.significance import FAMILY_ALPHA, holm_rejected, smallest_adjusted_p
from kfac_ref import compute_kfac

LEVELS = (0.05, 0.01)


def _reference(case: ScaleCase, flavour: str):
    problem = case.make_problem()

    def estimate(seed: int):
        return compute_kfac(
            problem.model,
            problem.loss_func,
            problem.batches,
            fisher_type="mc",
            kfac_approx=flavour,
            mc_samples=MC_SAMPLES,
            seed=seed,
        )

    return problem, estimate


def calibrate(case: ScaleCase, trials: int) -> dict[str, object]:
    """The fraction of ``trials`` that fail, and that would fail at each of ``LEVELS``."""
    flavour = next(f for f in ("expand", "reduce") if case.exact_layers("type-2", f))
    layers = case.exact_layers("type-2", flavour)
    problem, estimate = _reference(case, flavour)
    template: list[ProbeForms] = []
    failed, adjusted, ratios = 0, [], []
    for trial in range(trials):
        seeds = range(trial * SEEDS, (trial + 1) * SEEDS)
        if template:
            forms = [dataclasses.replace(form, estimates=[]) for form in template]
            for seed in seeds:
                result = estimate(seed)
                for form in forms:
                    form.add(result)
        else:
            forms = template = forms_over_seeds(problem, layers, flavour, estimate, seeds)
        tests = [form.test() for form in forms]
        failed += bool(holm_rejected(tests))
        adjusted.append(smallest_adjusted_p(tests))
        ratios += [ratio for form in forms for ratio in form.ratios.tolist()]
    spread = torch.tensor(ratios, dtype=torch.float64)
    return {
        "case": case.id,
        "trials": trials,
        "tests_per_trial": len(tests),
        "failed_at_family_alpha": failed,
        **{
            f"adjusted_p<={level:g}": sum(p <= level for p in adjusted) / trials for level in LEVELS
        },
        "mean_ratio": spread.mean().item(),
        "ratio_sd": spread.std().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--full", action="store_true", help="the profile's case, not the tests'")
    arguments = parser.parse_args()
    # the trials run one after another: on a loaded machine a second thread per call only
    # waits (measured 50x slower on the small case with the machine's two cores busy)
    torch.set_num_threads(1)
    cases = SCALE_CASES if arguments.full else MINI_SCALE_CASES
    case = next(case for case in cases if estimable(case))
    started = time.perf_counter()
    figures = calibrate(case, arguments.trials)
    print(
        f"{figures} (family-wise level {FAMILY_ALPHA:g}, {SEEDS} seeds x mc_samples="
        f"{MC_SAMPLES} per trial; {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
