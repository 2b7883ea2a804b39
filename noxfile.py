"""nox sessions: the project's tests, and the conformance suite against one candidate per environment.

Every session installs with ``constraints.txt`` so that candidate libraries share the pinned
CPU build of torch instead of pulling another one (BackPACK would pull a CUDA build through
torchvision).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import nox
import tomllib

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
    "kronfluence-kfac": "kronfluence",
    "kronfluence-ekfac": "kronfluence",
    # laplace-torch pins an older ASDL (asdfghjkl 0.1a4): never in the same environment as "asdl"
    "laplace-curvlinops": "laplace",
    "laplace-asdl": "laplace",
    "laplace-backpack": "laplace",
    "nngeometry-ekfac": "nngeometry",
}

# packages an extra pulls in that must go again: laplace-torch's torchmetrics imports
# torchvision when present, and the PyPI torchvision wheel does not load beside the CPU build
# of torch ("operator torchvision::nms does not exist"); without it torchmetrics works
REMOVE_AFTER_INSTALL = {"laplace": ("torchvision",)}
# JAX candidate name -> the extra of pyproject.toml that installs its library
JAX_CANDIDATES = {"kfac-jax": "jax"}
JAX_ENV = {"JAX_PLATFORMS": "cpu"}
# MLX candidate name -> the extra of pyproject.toml that installs its library
MLX_CANDIDATES = {"mlx-kfac": "mlx"}


def install_project(session: nox.Session, extra: str = "") -> None:
    session.install(*CONSTRAINTS, "torch")
    target = f".[test,{extra}]" if extra else ".[test]"
    session.install(*CONSTRAINTS, "-e", target)
    for name in extra.split(","):
        for package in REMOVE_AFTER_INSTALL.get(name, ()):
            session.run_install("python", "-m", "pip", "uninstall", "--yes", package)


@nox.session
def tests(session: nox.Session) -> None:
    """The project's own test suite (the README's test command)."""
    install_project(session)
    session.run("pytest", "-n", "2", "--dist", "worksteal", "--durations=15", *session.posargs)


def run_conformance(
    session: nox.Session,
    candidate: str,
    *command: str,
    env: dict | None = None,
    report: str | None = None,
) -> None:
    """``command`` with the candidate, its report path (reports/<candidate>.json unless
    ``report``), expected failures and the posargs; with --for-matrix a failing check does not
    fail the session (the matrix records it)."""
    for_matrix = MATRIX_FLAG in session.posargs
    arguments = [argument for argument in session.posargs if argument != MATRIX_FLAG]
    xfail = Path(f"conformance/adapters/xfail/{candidate}.txt")
    if xfail.is_file():
        arguments = ["--xfail", str(xfail), *arguments]
    session.run(
        *command,
        "--candidate",
        candidate,
        "--report-json",
        report or f"reports/{candidate}.json",
        *arguments,
        env=env,
        success_codes=[0, 1] if for_matrix else [0],
    )


@nox.session
@nox.parametrize("candidate", list(CANDIDATES))
def conformance(session: nox.Session, candidate: str) -> None:
    """The check catalogue against one candidate, with its expected failures.

    The JSON report goes to reports/<candidate>.json, the HTML one (with heatmaps of every
    failing block) to reports/<candidate>.html. The session fails when a check fails,
    unless it runs for the matrix (which records failures instead).
    """
    # "report": matplotlib, for the heatmaps of the HTML report
    install_project(session, ",".join(filter(None, [CANDIDATES[candidate], "report"])))
    html = ("--report-html", f"reports/{candidate}.html")
    run_conformance(session, candidate, "kfac-conformance", "run", *html)
    if MATRIX_FLAG in session.posargs:
        # the matrix also shows the opt-in distributed/* family: a candidate that does not
        # claim distribution gets its items skipped with the reason (docs/distributed.md)
        distributed = f"reports/distributed/{candidate}.json"
        run_conformance(
            session, candidate, "kfac-conformance", "run", "--profile", "distributed",
            report=distributed,
        )  # fmt: skip


def install_torch_free(session: nox.Session, extra: str) -> None:
    """The extra's pins, the project's torch-free dependencies, and the project itself without
    dependencies: torch is never installed, so the JAX and MLX runners provably run without it."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    torch_free = [d for d in project["dependencies"] if not d.startswith("torch")]
    session.install(*torch_free, *project["optional-dependencies"][extra])
    session.install("--no-deps", "-e", ".")


@nox.session
def tests_jax(session: nox.Session) -> None:
    """The JAX runner's tests, in an environment without torch (kfac-jax and JAX on the CPU)."""
    install_torch_free(session, "jax")
    session.run("pytest", "tests/test_jax_runner.py", *session.posargs, env=JAX_ENV)


@nox.session
@nox.parametrize("candidate", list(JAX_CANDIDATES))
def conformance_jax(session: nox.Session, candidate: str) -> None:
    """Exactness, mc/unbiased, invariances, agreement and (across host devices) distributed
    items on the stored cases against a JAX candidate, without torch; the JSON report goes to reports/<candidate>.json (--for-matrix
    as for conformance)."""
    install_torch_free(session, JAX_CANDIDATES[candidate])
    run_conformance(session, candidate, "python", "-m", "kfac_conformance.jax", env=JAX_ENV)


@nox.session
def tests_mlx(session: nox.Session) -> None:
    """The MLX runner's tests, in an environment without torch and without JAX."""
    install_torch_free(session, "mlx")
    session.run(
        "pytest",
        "tests/test_mlx_runner.py",
        "tests/test_mlx_network.py",
        "tests/test_mlx_separation.py",
        *session.posargs,
    )


@nox.session
@nox.parametrize("candidate", list(MLX_CANDIDATES))
def conformance_mlx(session: nox.Session, candidate: str) -> None:
    """The neutral items on the stored cases against an MLX candidate, without torch or JAX;
    the JSON report goes to reports/<candidate>.json (--for-matrix as for conformance)."""
    install_torch_free(session, MLX_CANDIDATES[candidate])
    run_conformance(session, candidate, "python", "-m", "kfac_conformance.mlx")


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """Every conformance session, then docs/conformance-matrix.md from their reports."""
    for candidate in CANDIDATES:
        session.notify(f"conformance(candidate='{candidate}')", posargs=[MATRIX_FLAG])
    for candidate in JAX_CANDIDATES:
        session.notify(f"conformance_jax(candidate='{candidate}')", posargs=[MATRIX_FLAG])
    for candidate in MLX_CANDIDATES:
        session.notify(f"conformance_mlx(candidate='{candidate}')", posargs=[MATRIX_FLAG])
    session.notify("matrix_from_reports")


@nox.session(python=False)
def matrix_from_reports(session: nox.Session) -> None:
    """docs/conformance-matrix.md and .html, and the README's summary of them, from the reports
    already in reports/ (no installs).

    The HTML matrix links each cell to the candidate's HTML report in reports/.
    """
    session.run(
        "python3",
        "docs/generate_matrix.py",
        "--reports",
        "reports",
        "--output",
        "docs/conformance-matrix.md",
        "--html",
        "docs/conformance-matrix.html",
        "--readme",
        "README.md",
    )


@nox.session(python=False)
def coverage(session: nox.Session) -> None:
    """docs/coverage.md: which checks exercise each value of the reference's full claim, per
    Fisher type and approximation, under the default profile (``kfac-conformance coverage``)."""
    session.run(
        "kfac-conformance",
        "coverage",
        "--candidate",
        "kfac_ref",
        "--profile",
        "default",
        "--format",
        "markdown",
        "--output",
        "docs/coverage.md",
    )


@nox.session
def browser(session: nox.Session) -> None:
    """The HTML report of a failing run in headless Chromium (tests/test_browser.py).

    Installs Debian's chromium with apt-get when it is absent and the session runs as root;
    the tests then may not skip (KFAC_CONFORMANCE_REQUIRE_BROWSER=1).
    """
    if shutil.which("chromium") is None:
        if os.geteuid() != 0:
            session.error("chromium is absent; install it (Debian: apt-get install chromium)")
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", "chromium", external=True)
    install_project(session, "report")
    session.run(
        "pytest",
        "tests/test_browser.py",
        "tests/test_html_report.py",
        *session.posargs,
        env={"KFAC_CONFORMANCE_REQUIRE_BROWSER": "1"},
    )


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the sdist and the wheel, check their metadata, install the wheel into a fresh
    environment outside the checkout and run the quick profile and the pytest plugin there."""
    session.install(*CONSTRAINTS, "build")
    session.run("python", "scripts/check_wheel.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmark against the anchors; writes benchmarks/results.json (docs/performance.md)."""
    install_project(session, "curvlinops,backpack")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def scale(session: nox.Session) -> None:
    """The scale profile against kfac_ref (time and peak memory per item, budget 5 minutes)
    and its cost against width; prints them and stores them in benchmarks/results.json."""
    install_project(session)
    session.run("python", "benchmarks/run.py", "--only", "scale", *session.posargs)


def _findings_repros():
    """conformance/reports/findings/repros.py (standard library only, loaded by path: nox's
    own interpreter has not installed the project)."""
    path = Path("conformance/reports/findings/repros.py")
    spec = importlib.util.spec_from_file_location("findings_repros", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


FINDINGS_REPROS = _findings_repros()
# the environments of `nox -s findings`: every extra of a candidate or a reproduction script
FINDINGS_EXTRAS = sorted(
    {extra for extra in CANDIDATES.values() if extra}
    | set(JAX_CANDIDATES.values())
    | {repro.extra for repro in FINDINGS_REPROS.REPROS}
)
FINDINGS_RAW = "reports/findings"


@nox.session(python=False)
def findings(session: nox.Session) -> None:
    """docs/findings.md from fresh measurements: every reproduction script and every cell of the
    findings, one environment per extra, then the rendering. An environment that cannot be
    built keeps its last measurement (docs/findings/measured.json says which versions); the
    ones of a development head (repros.HEAD_INSTALLS) install from GitHub, so need the network."""
    for extra in FINDINGS_EXTRAS:
        session.notify(f"findings_measure(extra='{extra}')")
    session.notify("findings_render")


@nox.session
@nox.parametrize("extra", FINDINGS_EXTRAS)
def findings_measure(session: nox.Session, extra: str) -> None:
    """The reproductions that need ``extra``, and the findings' cells of its candidates, into
    reports/findings/<extra>.json (kfac_conformance.reports.findings.measure)."""
    if extra in FINDINGS_REPROS.HEAD_INSTALLS:  # a library's development head, over its release
        base, requirement = FINDINGS_REPROS.HEAD_INSTALLS[extra]
        install_project(session, base)
        session.install(*CONSTRAINTS, requirement)
        candidates, runner, env = [], [], None
    elif extra in JAX_CANDIDATES.values():
        install_torch_free(session, extra)
        candidates = [name for name, value in JAX_CANDIDATES.items() if value == extra]
        runner, env = ["--jax"], JAX_ENV
    else:
        install_project(session, extra)
        candidates = [name for name, value in CANDIDATES.items() if value == extra]
        runner, env = [], None
    output = f"{FINDINGS_RAW}/{extra.replace(',', '+')}.json"
    options = [option for name in candidates for option in ("--candidate", name)]
    session.run(
        "python", "-m", "kfac_conformance.reports.findings", "measure", "--extra", extra,
        *options, *runner, "--output", output, env=env,
    )  # fmt: skip


@nox.session
def findings_render(session: nox.Session) -> None:
    """docs/findings/measured.json from reports/findings/*.json, and docs/findings.md from it
    (standard library only: the project without its dependencies)."""
    session.install("--no-deps", "-e", ".")
    session.run(
        "python", "-m", "kfac_conformance.reports.findings", "render", "--raw", FINDINGS_RAW
    )
