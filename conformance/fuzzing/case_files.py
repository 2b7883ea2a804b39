"""``--case`` files of what the fuzzer found: standalone Python files that rebuild a shrunk
problem, carry the drawn example, and name the command that replays it through the catalogue.

A case file's factory is a :class:`DrawnExample`: besides the problem it carries the drawn case,
with its exactness map, and the drawn request, from which the plan runs on it the very fuzz
properties that ran on it when it was drawn (:func:`kfac_conformance.execution.plan.entries_of`),
so ``run --case FILE:problem`` replays the property the file is named after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kfac_conformance.cases.canonical import Case
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.fuzzing.properties import drawn_request

if TYPE_CHECKING:
    from kfac_conformance.fuzzing.search import Failure


@dataclass(frozen=True)
class DrawnExample:
    """A ``--case`` factory of one drawn example: calling it rebuilds the problem (the same
    every call); ``case`` and ``request`` are what the plan needs to run its properties."""

    case: Case
    request: Request

    def __call__(self) -> Problem:
        return self.case.make_problem()


def case_file_text(failure: Failure, candidate_spec: str, path: str) -> str:
    """A standalone ``--case`` file that rebuilds the shrunk problem deterministically."""
    message = failure.result.message.strip()
    if failure.result.status == "error":  # the exception, without the traceback's local paths
        message = message.splitlines()[0]
    return case_file_source(
        failure.property,
        candidate_spec,
        message,
        failure.result.diagnosis,
        failure.case,
        failure.request,
        path,
    )


def case_file_source(
    property_id: str,
    candidate_spec: str,
    message: str,
    diagnosis: str | None,
    case: Case,
    request: Request,
    path: str,
) -> str:
    """The text of a case file for a failure of ``property_id`` on ``case`` and ``request``."""
    message = message.replace('"""', "'''")
    diagnosis_line = f"\nDiagnosis: {diagnosis}\n" if diagnosis else ""
    return f'''"""A failure found and shrunk by `kfac-conformance fuzz`: {property_id} on {candidate_spec}.

{message}
{diagnosis_line}
Drawn: {drawn_request(request)}

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    {reproduction_command(candidate_spec, path, property_id, case.id)}
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = {case!r}
REQUEST = {request!r}

# the --case factory: rebuilds the problem (the same every call) and carries CASE and REQUEST
problem = DrawnExample(CASE, REQUEST)
'''


def reproduction_command(candidate_spec: str, path: str, property_id: str, case_id: str) -> str:
    return (
        f"kfac-conformance run --candidate {candidate_spec} --case {path}:problem "
        f"--select '{property_id}[{case_id}]'"
    )
