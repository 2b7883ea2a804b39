"""``--case`` files of what the fuzzer found: standalone Python files that rebuild a shrunk
problem, and the command that reruns the catalogue on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kfac_conformance.fuzzing.properties import drawn_request

if TYPE_CHECKING:
    from kfac_conformance.fuzzing.search import Failure


def case_file_text(failure: Failure, candidate_spec: str, path: str) -> str:
    """A standalone ``--case`` file that rebuilds the shrunk problem deterministically."""
    message = failure.result.message.strip().replace('"""', "'''")
    if failure.result.status == "error":  # the exception, without the traceback's local paths
        message = message.splitlines()[0]
    diagnosis = f"\nDiagnosis: {failure.result.diagnosis}\n" if failure.result.diagnosis else ""
    return f'''"""A failure found and shrunk by `kfac-conformance fuzz`: {failure.property} on {candidate_spec}.

{message}
{diagnosis}
Drawn: {drawn_request(failure.request)}

Reproduce through the catalogue:

    {reproduction_command(candidate_spec, path, failure.case.id)}
"""

from kfac_conformance.fuzzing.problems import DrawnCase
from kfac_conformance.contract.problem import Request

CASE = {failure.case!r}
REQUEST = {failure.request!r}


def problem():
    """The shrunk problem, rebuilt from its seed (the same every call)."""
    return CASE.make_problem()
'''


def reproduction_command(candidate_spec: str, path: str, case_id: str) -> str:
    return (
        f"kfac-conformance run --candidate {candidate_spec} --case {path}:problem "
        f"--select '*[{case_id}]'"
    )
