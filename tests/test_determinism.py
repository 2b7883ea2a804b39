"""Every item starts from the same global RNG state, in every mode, whatever the process.

Torch seeds its global generators at random in each process; a candidate that draws from
them (the zoo's ``McGlobalRng``) would otherwise get another verdict in every run. The run
seeds them before it takes its baseline (:func:`seeded_baseline`), and gives the caller its
own state back at the end (:data:`ITEM_SEED`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from running import run_items

from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.reference_candidate import ReferenceCandidate

TESTS = Path(__file__).resolve().parent
MODES = ("supervised", "child", "thread", "inline")
# the statuses of McGlobalRng's seed-reproducible items in each mode, as JSON
SCRIPT = """
import json
import sys
from kfac_conformance import RunOptions, check_candidate

statuses = {}
for mode in sys.argv[1:]:
    options = RunOptions(mode=mode, timeout_s=None if mode == "inline" else 120)
    report = check_candidate(
        "zoo.monte_carlo:McGlobalRng", select=["mc/seed-reproducible*"], options=options
    )
    statuses[mode] = {result.item_id: result.status for result in report.results}
print(json.dumps(statuses))
"""


def statuses_in_a_fresh_process() -> dict[str, dict[str, str]]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, *MODES],
        cwd=TESTS.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(completed.stdout)


def test_a_candidate_on_the_global_rng_gets_the_same_verdicts_in_every_process():
    first, second = statuses_in_a_fresh_process(), statuses_in_a_fresh_process()
    assert first == second
    assert set(first) == set(MODES)
    for mode, statuses in first.items():
        assert len(statuses) >= 4, mode
        assert statuses == first["inline"], mode  # and the same in every mode
    assert "failed" in first["inline"].values()  # the mutant is killed


class DrawsFromTheGlobalRng(ReferenceCandidate):
    """Records the first number it draws from torch's global generator in each call."""

    name = "draws-from-the-global-rng"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.draws: list[float] = []

    def compute(self, problem, request):
        self.draws.append(torch.rand(()).item())
        return super().compute(problem, request)


@pytest.mark.parametrize("timeout", [None, 60], ids=["inline", "thread"])
def test_each_item_starts_from_one_state_and_the_caller_keeps_its_own(timeout):
    items = plan("quick", case_entries("quick"), ["side-effects/none[*]"])[:1] * 3
    draws = []
    for caller_seed in (987, 654):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        candidate = DrawsFromTheGlobalRng()
        results = list(run_items(candidate, items, "quick", timeout=timeout))
        assert [result.status for result in results] == ["failed"] * len(items)  # it drew
        assert torch.equal(torch.get_rng_state(), before)
        draws.append(candidate.draws)
    # the same item three times: the same number each time, and in each run
    assert len(set(draws[0])) == 1 and draws[0] == draws[1]
