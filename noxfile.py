"""nox sessions: the project's tests, and the conformance suite against one candidate per environment.

Every session installs with ``constraints.txt`` so that candidate libraries share the pinned
CPU build of torch instead of pulling another one.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")

# candidate name -> the extra of pyproject.toml that installs its library ("" for none)
CANDIDATES = {"kfac_ref": ""}


def install_project(session: nox.Session, extra: str = "") -> None:
    session.install(*CONSTRAINTS, "torch")
    target = f".[test,{extra}]" if extra else ".[test]"
    session.install(*CONSTRAINTS, "-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """The project's own test suite."""
    install_project(session)
    session.run("pytest", "-n", "2", "--durations=15", *session.posargs)


@nox.session
@nox.parametrize("candidate", list(CANDIDATES))
def conformance(session: nox.Session, candidate: str) -> None:
    """The check catalogue against one candidate; the JSON report goes to reports/<candidate>.json."""
    install_project(session, CANDIDATES[candidate])
    session.run(
        "kfac-conformance", "run", "--candidate", candidate,
        "--report-json", f"reports/{candidate}.json", *session.posargs,
    )
