"""The JAX candidates and their run, on the neutral core (:mod:`kfac_conformance.neutral`).

``python -m kfac_conformance.jax`` (:mod:`.__main__`) runs the neutral items (exactness,
``mc/unbiased``, invariances, agreement with the stored reference answers, and the
``distributed/*`` items across host devices) against a candidate registered here or given as
``module:Class``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.neutral import runner
from kfac_conformance.neutral.plan import Item
from kfac_conformance.neutral.plan import plan as neutral_plan

MODULE = "kfac_conformance.jax"
CANDIDATES = {"kfac-jax": "kfac_conformance.jax.kfac_jax_candidate:KfacJaxCandidate"}
DEFAULT_CANDIDATE = "kfac-jax"


def plan(
    case_ids: Sequence[str] | None = None, check_ids: Sequence[str] | None = None
) -> list[Item]:
    """The neutral items with the ``distributed/*`` ones: JAX candidates compute across devices
    (the process needs them before JAX starts: :mod:`.devices`)."""
    return neutral_plan(case_ids, check_ids, distributed=True)


def run(
    spec: str,
    items: Sequence[Item],
    expected: Sequence[ExpectedFailure] = (),
    report_path: Path | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Run ``items`` against the JAX candidate ``spec``; the report after the last result."""
    candidate = runner.load_candidate(spec, CANDIDATES)
    return runner.run(
        spec, candidate, items, f"python -m {MODULE}", expected, report_path, on_result
    )


__all__ = ["CANDIDATES", "MODULE", "plan", "run"]
