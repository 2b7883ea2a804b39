"""The fuzzer as pytest tests: ``pytest --kfac-candidate SPEC --kfac-fuzz`` adds one test per
property, ``fuzz/<property id>``, each a search of its own (:func:`kfac_conformance.fuzzing.search.search`)
that fails with the shrunk problem and its diagnosis.

Failures are kept in the example database (:data:`kfac_conformance.fuzzing.search.DEFAULT_DATABASE`,
relative to the directory pytest runs in) and replayed first by the next run.
"""

from __future__ import annotations

from collections.abc import Callable

from kfac_conformance.contract.problem import Candidate
from kfac_conformance.frontends.pytest_checks import ConformanceFailure
from kfac_conformance.fuzzing.properties import PROPERTY_IDS, failure_text
from kfac_conformance.fuzzing.search import DEFAULT_DATABASE, search


def fuzz_tests(
    candidate: Candidate, max_examples: int, seed: int, database: str | None = DEFAULT_DATABASE
) -> dict[str, Callable[[], None]]:
    """``{"fuzz/<property id>": test}``, one search per property."""

    def test_for(property_id: str) -> Callable[[], None]:
        def test() -> None:
            outcome = search(
                candidate, max_examples, seed, database=database, properties=[property_id]
            )
            if outcome.failures:
                raise ConformanceFailure(
                    "\n\n".join(
                        failure_text(failure.result, failure.case, failure.request)
                        for failure in outcome.failures
                    )
                )

        return test

    return {f"fuzz/{property_id}": test_for(property_id) for property_id in PROPERTY_IDS}
