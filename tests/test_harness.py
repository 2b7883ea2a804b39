"""The harness end to end: wrong candidates are caught by the right checks, the run completes,
and the front ends (runner, pytest plugin, external adapters, expected failures) agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from running import inline

import kfac_conformance
from kfac_conformance import Capabilities, KroneckerFactors, NotSupported, load_candidate
from kfac_conformance.contract.expected_failures import read_expected_failures
from kfac_conformance.contract.loading import SpecError
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.reference_candidate import ReferenceCandidate

ROOT = Path(__file__).resolve().parents[1]


class Scaled(ReferenceCandidate):
    """B doubled: a reduction factor applied twice."""

    name = "wrong-scale"

    def compute(self, problem, request):
        return {
            k: KroneckerFactors(f.A, 2 * f.B, f.bias)
            for k, f in super().compute(problem, request).items()
        }


class Swapped(ReferenceCandidate):
    """kron(A, B) instead of kron(B, A): column-major flattening."""

    name = "swapped"
    capabilities = Capabilities(bias_modes=frozenset({"separate"}))

    def compute(self, problem, request):
        result = {}
        for layer, f in super().compute(problem, request).items():
            if f.bias == "none" and f.A.shape == f.B.shape:
                result[layer] = KroneckerFactors(
                    f.B, f.A, f.bias
                )  # only square layers keep valid shapes
            else:
                result[layer] = f
        return result


class EmpiricalForType2(ReferenceCandidate):
    """Answers every type-2 request with the empirical Fisher."""

    name = "wrong-fisher"

    def compute(self, problem, request):
        if request.fisher_type == "type-2":
            request = type(request)(
                "empirical", request.kfac_approx, request.mc_samples, request.seed, request.bias
            )
        return super().compute(problem, request)


class GradWriter(ReferenceCandidate):
    """Leaves .grad behind: a side effect."""

    name = "side-effect"

    def compute(self, problem, request):
        for param in problem.model.parameters():
            param.grad = torch.ones_like(param)
        return super().compute(problem, request)


class Crashing(ReferenceCandidate):
    """Raises on reduce."""

    name = "crash"

    def compute(self, problem, request):
        if request.kfac_approx == "reduce":
            raise RuntimeError("reduce is broken")
        return super().compute(problem, request)


def _run(candidate, profile="quick", select=()):
    items = plan(profile, case_entries(profile), select)
    return {result.item_id: result for result in run_items(candidate, items, inline(profile))}


@pytest.fixture(scope="module")
def reference_results():
    return _run(ReferenceCandidate())


@pytest.mark.parametrize("profile", ["default"])
def test_reference_passes_every_check_of_the_default_profile(profile):
    results = _run(ReferenceCandidate(), profile)
    assert len(results) > 300
    bad = {
        i: (r.status, r.message)
        for i, r in results.items()
        if r.status not in ("passed", "skipped")
    }
    assert not bad
    assert all(
        r.message.startswith("CUDA is not available")
        for r in results.values()
        if r.status == "skipped"
    )


def test_reference_passes_every_quick_check(reference_results):
    bad = {
        i: r.status for i, r in reference_results.items() if r.status not in ("passed", "skipped")
    }
    assert not bad
    skipped = {r.message for r in reference_results.values() if r.status == "skipped"}
    assert all(message.startswith("CUDA is not available") for message in skipped)


@pytest.mark.parametrize(
    ("candidate", "killing_check", "diagnosis"),
    [
        (Scaled(), "exactness/type-2-expand", "x 2"),
        (Swapped(), "exactness/type-2-expand", "Kronecker order swapped"),
        (EmpiricalForType2(), "exactness/type-2-expand", "empirical Fisher"),
        (GradWriter(), "side-effects/none", None),
        (Crashing(), "exactness/type-2-reduce", None),
    ],
    ids=lambda value: getattr(value, "name", None) or str(value),
)
def test_wrong_candidates_fail_the_right_check_and_the_run_completes(
    candidate, killing_check, diagnosis, reference_results
):
    results = _run(candidate)
    assert set(results) == set(reference_results), "every planned check must produce a result"
    killed = [
        r
        for r in results.values()
        if r.check_id == killing_check and r.status in ("failed", "error")
    ]
    assert killed, f"{killing_check} did not catch {candidate.name}"
    if diagnosis is not None:
        assert any(diagnosis in (r.diagnosis or "") for r in killed), [r.diagnosis for r in killed]
    if isinstance(candidate, Crashing):
        assert all(
            r.status == "error" and "RuntimeError: reduce is broken" in r.message for r in killed
        )
        expand = [r for r in results.values() if r.check_id == "exactness/type-2-expand"]
        assert expand and all(r.status == "passed" for r in expand)
    if isinstance(candidate, GradWriter):
        assert "changed .grad" in killed[0].message


class ClaimsNothing(ReferenceCandidate):
    name = "claims-nothing"
    capabilities = Capabilities(fisher_types=frozenset())


def test_checks_outside_the_claim_are_skipped_with_their_reason_and_counted():
    results = _run(ClaimsNothing(), select=["exactness/*", "agreement/*"])
    assert results, "the skipped checks must still be reported"
    assert all(
        r.status == "skipped" and r.message.startswith("not supported") for r in results.values()
    )


def test_expected_failures_turn_failures_into_xfailed_and_flag_passes(tmp_path):
    xfail = tmp_path / "xfail.txt"
    xfail.write_text(
        "exactness/type-2-expand  # doubled B, see findings\nnever/matches  # stale\n"
        "invariance/permutation[mlp*]  # not really failing\n"
    )
    expected = read_expected_failures(xfail)
    items = plan(
        "quick", case_entries("quick"), ["exactness/type-2-expand*", "invariance/permutation[mlp*"]
    )
    run = run_items(Scaled(), items, inline("quick", expected=expected))
    statuses = {r.item_id: r.status for r in run}
    assert {s for i, s in statuses.items() if i.startswith("exactness")} == {"xfailed"}
    assert {s for i, s in statuses.items() if i.startswith("invariance")} == {"xpassed"}
    assert run.unused_expected_failures() == ["never/matches"]


def test_external_adapter_file_runs_end_to_end():
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfac_conformance.frontends.cli",
            "run",
            "--candidate",
            "examples/external_candidate.py:candidate",
            "--case",
            "examples/custom_case.py:two_layer_regression",
            "--profile",
            "quick",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "linear-only-example:" in completed.stdout and " 0 failed, 0 errors" in completed.stdout


def test_pytest_plugin_runs_the_catalogue_as_tests(tmp_path):
    junit = tmp_path / "kfac.xml"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--kfac-candidate",
            "kfac_ref",
            "--kfac-profile",
            "quick",
            "-k",
            "exactness or side-effects",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "failed" not in completed.stdout.splitlines()[-1]
    assert 'name="exactness/type-2-expand[deep-linear[mse-mean-3batches]]"' in junit.read_text()


def test_pytest_plugin_counts_the_checks_as_collected_tests(tmp_path):
    items = plan("quick", case_entries("quick"))
    selected = [item for item in items if "seeds-differ" in item.id]
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--kfac-candidate", "kfac_ref"),
            *("--kfac-profile", "quick", "--collect-only", "-q", "-k", "seeds-differ"),
            *("-p", "no:cacheprovider"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    total = len(items)
    assert 0 < len(selected) < total
    summary = completed.stdout.strip().splitlines()[-1]
    assert summary.startswith(
        f"{len(selected)}/{total} tests collected ({total - len(selected)} deselected)"
    ), summary


def test_pytest_plugin_reports_a_failure_with_its_diagnosis(tmp_path):
    (tmp_path / "wrong.py").write_text(
        "from kfac_conformance import KroneckerFactors\n"
        "from kfac_conformance.reference_candidate import ReferenceCandidate\n"
        "class Doubled(ReferenceCandidate):\n"
        "    name = 'doubled'\n"
        "    def compute(self, problem, request):\n"
        "        return {k: KroneckerFactors(f.A, 2 * f.B, f.bias) for k, f in super().compute(problem, request).items()}\n"
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--kfac-candidate",
            f"{tmp_path / 'wrong.py'}:Doubled",
            "--kfac-profile",
            "quick",
            "-k",
            "type-2-expand and deep-linear",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1
    assert "off by a constant factor x 2" in completed.stdout


def test_load_candidate_errors_name_the_problem(tmp_path):
    assert load_candidate("kfac_ref").name == "kfac_ref"
    with pytest.raises(SpecError, match="neither a registered name"):
        load_candidate("no-such-candidate")
    with pytest.raises(SpecError, match="does not exist"):
        load_candidate(str(tmp_path / "missing.py") + ":x")
    with pytest.raises(SpecError, match="has no attribute 'nope'"):
        load_candidate("kfac_conformance.reference_candidate:nope")
    (tmp_path / "bad.py").write_text("thing = 3\n")
    with pytest.raises(SpecError, match="lacks"):
        load_candidate(f"{tmp_path / 'bad.py'}:thing")


def test_nondeterministic_case_factory_is_rejected(tmp_path):
    (tmp_path / "case.py").write_text(
        "import torch\nfrom torch import nn\nfrom kfac_conformance import Problem\n"
        "def factory():\n"
        "    model = nn.Sequential(nn.Linear(2, 2)).double()\n"
        "    X = torch.randn(3, 2, dtype=torch.float64)\n"
        "    return Problem(model, nn.MSELoss(), [(X, torch.zeros(3, 2, dtype=torch.float64))], ['0'], 'c')\n"
    )
    from kfac_conformance.contract.loading import load_case_factory

    with pytest.raises(SpecError, match="not deterministic"):
        load_case_factory(f"{tmp_path / 'case.py'}:factory")


def test_select_by_full_item_id_reproduces_exactly_that_item():
    items = plan("default", case_entries("default"))
    for item in items[::25]:
        assert [i.id for i in plan("default", case_entries("default"), [item.id])] == [item.id]


class NoSharedAxes(ReferenceCandidate):
    name = "no-shared-axes"
    capabilities = Capabilities(weight_sharing=False)


def test_weight_sharing_claim_skips_linear_layers_on_shared_axes_only():
    results = _run(NoSharedAxes(), select=["exactness/type-2-expand*"])
    statuses = {r.case_id: (r.status, r.message) for r in results.values()}
    assert statuses["expand-deep-linear[2-axes]"] == (
        "skipped",
        "not supported: Linear layers ['0', '1', '2'] on inputs with shared axes",
    )
    assert statuses["deep-linear[mse-mean-3batches]"][0] == "passed"
    assert statuses["conv-expand[last-layer-stride2-pad1-dil2]"][0] == "passed"


class RefusesReduce(ReferenceCandidate):
    """Declines reduce and tied weights at run time, as an adapter does for what its
    Capabilities cannot describe."""

    name = "refuses-reduce"

    def compute(self, problem, request):
        if request.kfac_approx == "reduce" or problem.case_id.startswith("tied"):
            raise NotSupported("this library has no reduce flavour")
        return super().compute(problem, request)


def test_a_refusal_is_a_skip_with_its_reason_and_counts_as_raising_where_raising_is_expected():
    results = _run(RefusesReduce(), select=["exactness/type-2-*", "weight-tying/*"])
    reduce = [r for r in results.values() if r.check_id == "exactness/type-2-reduce"]
    assert reduce and all(
        r.status == "skipped"
        and r.message
        == "not supported (refused by the candidate): this library has no reduce flavour"
        for r in reduce
    )
    assert all(
        r.status == "passed" for r in results.values() if r.check_id == "exactness/type-2-expand"
    )
    assert results["weight-tying/exact-or-raises[tied-linear[mse]]"].status == "passed"


def _package_modules() -> list[str]:
    """Every module of the package, found on disk; ``jax`` and ``mlx`` need their extras."""
    root = Path(kfac_conformance.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in ("jax", "mlx") or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name]


MODULES = _package_modules()


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_first(module, monkeypatch):
    """No import cycle: each module can be the first of the package to be imported."""
    import importlib

    for name in [
        n for n in sys.modules if n == "kfac_conformance" or n.startswith("kfac_conformance.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module(f"kfac_conformance.{module}")


def test_the_pytest_plugin_does_not_import_torch_until_asked():
    """pytest loads the plugin in every run where the package is installed."""
    code = "import sys, kfac_conformance.frontends.pytest_plugin; print('torch' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert completed.stdout.strip() == "False", completed.stderr


def test_parametrize_with_checks_runs_the_catalogue_in_a_users_test_file(tmp_path):
    (tmp_path / "test_my_kfac.py").write_text(
        "from kfac_conformance.frontends.pytest_checks import parametrize_with_checks\n"
        "from kfac_conformance.reference_candidate import ReferenceCandidate\n"
        "@parametrize_with_checks(ReferenceCandidate(), profile='quick', select=['exactness/*'])\n"
        "def test_kfac(kfac_check):\n"
        "    kfac_check()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_kfac.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:]
    passed = int(completed.stdout.strip().splitlines()[-1].split()[0])
    quick_exactness = plan("quick", case_entries("quick"), ["exactness/*"])
    assert passed == len(quick_exactness) > 0


def test_listing_into_a_closed_pipe_ends_quietly():
    completed = subprocess.run(
        f"'{sys.executable}' -m kfac_conformance.frontends.cli list-checks -v | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.stdout.startswith("Conventions (default: the KFAC tutorial's")
    assert "Traceback" not in completed.stderr


def test_stored_cases_take_their_exact_blocks_from_the_fixtures(monkeypatch):
    """The oracle does not recompute what the fixtures hold."""
    from kfac_conformance.cases import stored as fixtures
    from kfac_conformance.execution.session import Session
    from kfac_conformance.oracle import blocks as oracle

    entry = next(e for e in case_entries("default") if e.id == "mlp[tanh-ce-batch]")
    session = Session(ReferenceCandidate())
    computed = []
    real_exact_blocks = oracle.exact_blocks
    monkeypatch.setattr(
        oracle,
        "exact_blocks",
        lambda *args, **kwargs: computed.append(args[-1]) or real_exact_blocks(*args, **kwargs),
    )
    for curvature in fixtures.STORED_CURVATURES:
        stored = fixtures.load_exact_blocks(entry.id, curvature)
        exact = session.exact(entry, curvature)
        assert exact.keys() == stored.keys()
        assert all(torch.equal(exact[layer], stored[layer]) for layer in stored)
    assert computed == []
    assert session.exact(entry, "ggn") is session.exact(entry, "ggn"), "not cached"
