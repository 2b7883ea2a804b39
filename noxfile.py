"""nox sessions: the project's tests, and the conformance suite against one candidate per environment.

Every session installs with ``constraints.txt`` so that candidate libraries share the pinned
CPU build of torch instead of pulling another one (BackPACK would pull a CUDA build through
torchvision).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")
MATRIX_FLAG = "--for-matrix"

# candidate name -> the extra of pyproject.toml that installs its library ("" for none)
CANDIDATES = {
    "kfac_ref": "",
    "curvlinops": "curvlinops",
    "curvlinops-ekfac": "curvlinops",
    "backpack-kfac": "backpack",
    "backpack-kflr": "backpack",
    "backpack-kfra": "backpack",
    "asdl": "asdl",
    "nngeometry": "nngeometry",
    "nngeometry-ekfac": "nngeometry",
}


def install_project(session: nox.Session, extra: str = "") -> None:
    session.install(*CONSTRAINTS, "torch")
    target = f".[test,{extra}]" if extra else ".[test]"
    session.install(*CONSTRAINTS, "-e", target)


@nox.session
def tests(session: nox.Session) -> None:
    """The project's own test suite (the README's test command)."""
    install_project(session)
    session.run("pytest", "-n", "2", "--dist", "worksteal", "--durations=15", *session.posargs)


@nox.session
@nox.parametrize("candidate", list(CANDIDATES))
def conformance(session: nox.Session, candidate: str) -> None:
    """The check catalogue against one candidate, with its expected failures.

    The JSON report goes to reports/<candidate>.json. The session fails when a check fails,
    unless it runs for the matrix (which records failures instead).
    """
    install_project(session, CANDIDATES[candidate])
    for_matrix = MATRIX_FLAG in session.posargs
    arguments = [argument for argument in session.posargs if argument != MATRIX_FLAG]
    xfail = Path(f"conformance/adapters/xfail/{candidate}.txt")
    if xfail.is_file():
        arguments = ["--xfail", str(xfail), *arguments]
    session.run(
        "kfac-conformance",
        "run",
        "--candidate",
        candidate,
        "--report-json",
        f"reports/{candidate}.json",
        *arguments,
        success_codes=[0, 1] if for_matrix else [0],
    )


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """Every conformance session, then docs/conformance-matrix.md from their reports."""
    for candidate in CANDIDATES:
        session.notify(f"conformance(candidate='{candidate}')", posargs=[MATRIX_FLAG])
    session.notify("matrix_from_reports")


@nox.session(python=False)
def matrix_from_reports(session: nox.Session) -> None:
    """docs/conformance-matrix.md from the reports already in reports/ (no installs)."""
    session.run(
        "python3",
        "docs/generate_matrix.py",
        "--reports",
        "reports",
        "--output",
        "docs/conformance-matrix.md",
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmark against the anchors; writes benchmarks/results.json (docs/performance.md)."""
    install_project(session, "curvlinops,backpack")
    session.run("python", "benchmarks/run.py", *session.posargs)
