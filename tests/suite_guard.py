"""The guard every run of a known candidate passes: the suite's own code never raised.

An exception from harness code is a defect of the suite, never a verdict on the candidate;
the runner reports it as an ``error`` whose message starts with :data:`SUITE_RAISED` (an
internal error of the suite, with a request for a bug report).
Importable as ``suite_guard`` from ``tests/`` (pytest puts that folder on the path).
"""

from __future__ import annotations

from collections.abc import Iterable

from kfac_conformance.execution.execute import INTERNAL_ERROR
from kfac_conformance.execution.result import Result

SUITE_RAISED = INTERNAL_ERROR


def suite_exceptions(results: Iterable[Result]) -> list[str]:
    """``item: message`` of every result the suite's own exception produced."""
    return [
        f"{result.item_id}: {result.message}"
        for result in results
        if result.message.startswith(SUITE_RAISED)
    ]
