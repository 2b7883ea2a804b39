"""Speed benchmark: ratios that do not depend on the machine, and the profiles' wall times.

Run ``python benchmarks/run.py`` from the repository root (``nox -s bench`` does). It prints
every figure and writes them, with the date and the machine, to ``benchmarks/results.json``
(``--output`` to change; sections not run keep their stored results). Sections (``--only``
to pick some):

- ``oracle``: the exact oracle against the coordinate-by-coordinate computation of the same
  GGN block (:mod:`naive_oracle`) on layers of a few hundred to a few thousand parameters;
  the ratio is the oracle's speed-up, checked at equal results.
- ``libraries``: ``kfac_ref`` against curvlinops' ``KFACLinearOperator`` (type-2, factors
  only) and BackPACK's ``KFLR`` on an MLP of about a million parameters (batch 256) and a
  small CNN, with the agreement of their Kronecker products. A library that is not installed
  is recorded as ``"not installed"``.
- ``profiles``: ``kfac-conformance run --profile quick`` and ``default`` as subprocesses
  (process start included) against their budgets, the same with ``--no-supervise`` (the
  ratio is the cost of running the checks in a supervised worker process; on Linux the CPU
  time counts the fork server and workers, which the CLI does not wait for itself),
  and ``pytest --kfac-candidate kfac_ref``
  with and without ``-n 2``, each started in an empty folder as in a user's project (no
  conftest or pytest settings of this repository apply); best of ``--repeats`` runs.
- ``suite`` (only on request, ``--only suite``: it takes minutes): the project's own test
  suite under ``pytest -n 2 --durations=10``, with the slowest tests.
- ``scaling``: the oracle's and ``kfac_ref``'s cost against layer width, batch size and the
  number of shared positions, and the largest block that fits in memory.
- ``scale`` (only on request, ``--only scale``, or ``nox -s scale``: it takes minutes): the
  scale profile's wall time, every item's time and peak memory, and the cost of its checks
  against the width of a deep linear network (:mod:`scale`).

Timings are the best of a few repeats after a warm-up call, so that a busy machine disturbs
them less; the load average at the start of each section is recorded next to them.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

import kfac_ref
from kfac_conformance.oracle.blocks import exact_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive_oracle import METHODS, naive_ggn_block  # noqa: E402
from scale import bench_scale  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("oracle", "libraries", "profiles", "suite", "scaling", "scale")
# the project's own test suite takes minutes and changes with every test added: run it on request
DEFAULT_SECTIONS = ("oracle", "libraries", "profiles", "scaling")
SUBPROCESS_TIMEOUT_S = 900
BUDGETS_S = {"quick": 15.0, "default": 60.0}
# the naive computation's cost is the same for every column, so on big layers a sample of
# columns is timed and the total extrapolated (and the sampled columns compared)
NAIVE_MAX_COLUMNS = 200
MEMORY_GIB = 24
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, in seconds."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        # this process's setting; the subprocesses timed always cache bytecode (see below)
        "writes_bytecode": not sys.flags.dont_write_bytecode,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def relative_difference(approx: Tensor, exact: Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


# ------------------------------------------------------------------------------------------
# oracle against the coordinate-by-coordinate computation


def mlp(widths: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        if index:
            modules.append(activation())
        modules.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*modules)


def oracle_problem(width: int, batch: int, seed: int = 0):
    """A tanh MLP 20-width-width-10 with cross-entropy; the measured layer is the middle one."""
    torch.manual_seed(seed)
    model = mlp([20, width, width, 10]).double()
    X = torch.randn(batch, 20, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,))
    return model, nn.CrossEntropyLoss(), [(X, y)], "2"


def bench_oracle(repeats: int) -> list[dict]:
    rows = []
    for width in (16, 32, 45, 64):
        model, loss_func, batches, layer = oracle_problem(width, batch=32)
        size = sum(p.numel() for p in model.get_submodule(layer).parameters())
        oracle_s = best_time(partial(exact_blocks, model, loss_func, batches, [layer]), repeats)
        exact = exact_blocks(model, loss_func, batches, [layer])[layer]
        columns = _sampled_columns(size)
        row = {
            "layer": f"Linear({width}, {width}) of an MLP 20-{width}-{width}-10, tanh, CE",
            "parameters": size,
            "batch": 32,
            "outputs_per_datum": 10,
            "oracle_s": oracle_s,
            "naive_columns_timed": len(columns),
        }
        line = f"oracle  P={size:5d}: oracle {oracle_s:.3f} s"
        for method in METHODS:
            naive = partial(naive_ggn_block, model, loss_func, batches, layer, columns, method)
            naive_s = best_time(naive, repeats) * size / len(columns)
            row[f"naive_{method}_s"] = naive_s
            row[f"speedup_over_{method}"] = naive_s / oracle_s
            row[f"relative_difference_{method}"] = relative_difference(naive(), exact[:, columns])
            line += (
                f", naive ({method}) {naive_s:.2f} s: speed-up x{naive_s / oracle_s:.0f} "
                f"at difference {row[f'relative_difference_{method}']:.1e}"
            )
        rows.append(row)
        print(line + ("" if len(columns) == size else f" (naive from {len(columns)} columns)"))
    return rows


def _sampled_columns(size: int) -> list[int]:
    if size <= NAIVE_MAX_COLUMNS:
        return list(range(size))
    return torch.linspace(0, size - 1, NAIVE_MAX_COLUMNS).round().long().unique().tolist()


# ------------------------------------------------------------------------------------------
# kfac_ref against curvlinops and BackPACK


def library_problem(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mlp":
        model = mlp([784, 1024, 192, 10], nn.ReLU)
        X, batch = torch.randn(256, 784), 256
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 10),
        )
        X, batch = torch.randn(128, 3, 32, 32), 128
    y = torch.randint(0, 10, (batch,))
    return model, nn.CrossEntropyLoss(), X, y


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def kfac_ref_factors(model, loss_func, X, y) -> dict[str, tuple[Tensor, Tensor]]:
    result = kfac_ref.compute_kfac(model, loss_func, [(X, y)], fisher_type="type-2")
    return {name: (factors.A, factors.B) for name, factors in result.items()}


def curvlinops_factors(model, loss_func, X, y) -> dict[str, tuple[Tensor, Tensor]]:
    from curvlinops import KFACLinearOperator

    operator = KFACLinearOperator(
        model,
        loss_func,
        list(model.parameters()),
        [(X, y)],
        fisher_type="type-2",
        check_deterministic=False,
    )
    operator.compute_kronecker_factors()
    return {
        name: (operator._input_covariances[name], operator._gradient_covariances[name])
        for name in _layer_names(model)
    }


def backpack_factors(model, loss_func, X, y) -> dict[str, tuple[Tensor, Tensor]]:
    """BackPACK stores ``weight.kflr = [B, A]``; a convolution's ``A`` is over its patches."""
    from backpack import backpack
    from backpack.extensions import KFLR

    loss = loss_func(model(X), y)
    with backpack(KFLR()):
        loss.backward()
    factors = {}
    for name in _layer_names(model):
        B, A = model.get_submodule(name).weight.kflr
        factors[name] = (A, B)
    return factors


def kronecker_difference(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> float:
    r"""``|B1 x A1 - B2 x A2| / |B2 x A2|`` (Frobenius) without forming either product.

    Uses :math:`\|B\otimes A\|^2 = \|B\|^2\|A\|^2` and
    :math:`\langle B_1\otimes A_1, B_2\otimes A_2\rangle = \langle B_1,B_2\rangle\langle A_1,A_2\rangle`,
    in float64 so that the cancellation stays below the float32 differences measured.
    """
    (A1, B1), (A2, B2) = [(A.double(), B.double()) for A, B in (first, second)]
    square = lambda M: (M * M).sum()  # noqa: E731
    inner = (B1 * B2).sum() * (A1 * A2).sum()
    difference = square(B1) * square(A1) + square(B2) * square(A2) - 2 * inner
    return (difference.clamp(min=0).sqrt() / (square(B2) * square(A2)).sqrt()).item()


LIBRARIES = {"curvlinops": curvlinops_factors, "backpack": backpack_factors}
# measured: BackPACK's A of a convolution is kfac_ref's expand A times the number of output
# positions, and its B points along kfac_ref's *reduce* B (to 2e-7), so neither flavour matches
BACKPACK_CONV_NOTE = (
    "BackPACK's KFLR for Conv2d is neither flavour: A is the expand A summed (not averaged) "
    "over output positions, B is the reduce B (position-summed backpropagated vectors)"
)


def _installed(library: str) -> bool:
    module = {"curvlinops": "curvlinops", "backpack": "backpack"}[library]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _time_library(library: str, factors_of, kind: str, repeats: int):
    """Best time of ``factors_of`` on the problem ``kind``, and its factors."""
    model, loss_func, X, y = library_problem(kind)
    if library != "backpack":
        return best_time(partial(factors_of, model, loss_func, X, y), repeats), factors_of(
            model, loss_func, X, y
        )
    from backpack import extend

    # BackPACK keeps its quantities on the model: a fresh extended model for every call
    models = [extend(library_problem(kind)[0]) for _ in range(repeats + 2)]
    loss_func = extend(loss_func)
    seconds = best_time(lambda: factors_of(models.pop(), loss_func, X, y), repeats)
    return seconds, factors_of(models.pop(), loss_func, X, y)


def bench_libraries(repeats: int) -> dict:
    results = {}
    for kind in ("mlp", "cnn"):
        model, loss_func, X, y = library_problem(kind)
        parameters = sum(p.numel() for p in model.parameters())
        reference = kfac_ref_factors(model, loss_func, X, y)
        row: dict = {
            "parameters": parameters,
            "batch": X.shape[0],
            "loss": "CrossEntropyLoss(reduction='mean')",
            "dtype": "float32",
            "kfac_ref_s": best_time(partial(kfac_ref_factors, model, loss_func, X, y), repeats),
        }
        line = f"{kind}: {parameters} parameters, kfac_ref {row['kfac_ref_s']:.3f} s"
        for library, factors_of in LIBRARIES.items():
            if not _installed(library):
                row[library] = "not installed"
                line += f", {library} not installed"
                continue
            seconds, factors = _time_library(library, factors_of, kind, repeats)
            differences = {
                f"{name} ({type(model.get_submodule(name)).__name__})": kronecker_difference(
                    reference[name], factors[name]
                )
                for name in reference
            }
            row[library] = {
                "seconds": seconds,
                "kfac_ref_over_library": row["kfac_ref_s"] / seconds,
                "weight_block_relative_difference": differences,
            }
            if library == "backpack" and kind == "cnn":
                row[library]["note"] = BACKPACK_CONV_NOTE
            line += (
                f", {library} {seconds:.3f} s (kfac_ref / {library} = "
                f"{row['kfac_ref_s'] / seconds:.2f}; weight blocks differ by "
                + ", ".join(f"{difference:.1e}" for difference in differences.values())
                + ")"
            )
        results[kind] = row
        print(line)
    return results


# ------------------------------------------------------------------------------------------
# the profiles as a user runs them


def _adopt_orphans() -> bool:
    """Make this process the Linux "child subreaper" of what it starts: a descendant whose
    parent exits without waiting for it (the CLI's fork server and its workers) is then
    waited for here, so that its CPU time is counted in ``RUSAGE_CHILDREN``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _reap_orphans() -> None:
    """Wait for the adopted descendants of the last timed command (they end with it)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _timed_subprocess(command: list[str], cwd: str | Path = ROOT) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # As Python and torch are on a user's machine: torch picks its default number of threads,
    # and Python caches bytecode (the first of a section's repeats writes the cache).
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "PYTHONDONTWRITEBYTECODE")
    }
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            env=environment,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
        returncode, output = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = "timed out"
        output = f"timed out after {SUBPROCESS_TIMEOUT_S} s\n{expired.stdout or ''}"
    wall = time.perf_counter() - start
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": " ".join(command),
        "returncode": returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "output": output if isinstance(output, str) else output.decode(errors="replace"),
    }


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("kfac-conformance")
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "kfac_conformance.frontends.cli"]
    )


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return False
    return True


def bench_profiles(repeats: int) -> dict:
    """The profiles as users start them (the CLI and the plugin use one torch thread), and
    pytest-xdist against serial pytest; the fastest of ``repeats`` runs of each."""
    cli = [*_cli(), "run", "--candidate", "kfac_ref", "-q"]
    plugin = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--kfac-candidate",
        "kfac_ref",
    ]
    xdist = ["-n", "2", "--dist", "worksteal"]
    thorough = ["--kfac-profile", "thorough"]
    variants = [
        ("cli quick", [*cli, "--profile", "quick"], BUDGETS_S["quick"]),
        ("cli default", [*cli, "--profile", "default"], BUDGETS_S["default"]),
        ("cli quick --no-supervise", [*cli, "--profile", "quick", "--no-supervise"], None),
        ("cli default --no-supervise", [*cli, "--profile", "default", "--no-supervise"], None),
        ("pytest plugin default", plugin, None),
        ("pytest plugin default -n 2", [*plugin, *xdist], None),
        ("pytest plugin thorough", [*plugin, *thorough], None),
        ("pytest plugin thorough -n 2", [*plugin, *thorough, *xdist], None),
    ]
    runs: dict = {"cpu_counts_orphaned_descendants": _adopt_orphans()}
    with tempfile.TemporaryDirectory() as users_project:
        for name, command, budget in variants:
            if "-n" in command and not _has_xdist():
                runs[name] = "pytest-xdist not installed"
                continue
            load = load_average()
            attempts = [_timed_subprocess(command, users_project) for _ in range(repeats)]
            run = min(attempts, key=lambda attempt: attempt["wall_s"])
            run.update(
                load_average_before=load,
                wall_s_of_each_run=[attempt["wall_s"] for attempt in attempts],
                output=run["output"][-400:],
            )
            if budget is not None:
                run.update(budget_s=budget, within_budget=run["wall_s"] < budget)
            runs[name] = run
            print(
                f"{name}: {run['wall_s']:.1f} s wall ({run['cpu_s']:.1f} s CPU), best of "
                f"{repeats}"
                + (f", budget {budget:.0f} s" if budget else "")
                + f", exit code {run['returncode']}"
            )
    for profile in ("quick", "default"):
        supervised, in_process = runs[f"cli {profile}"], runs[f"cli {profile} --no-supervise"]
        overhead = {
            measure: supervised[f"{measure}_s"] / in_process[f"{measure}_s"]
            for measure in ("wall", "cpu")
        }
        runs[f"supervision overhead {profile}"] = overhead
        print(
            f"supervision overhead against --no-supervise, {profile} profile: wall "
            f"x{overhead['wall']:.2f} ({supervised['wall_s'] - in_process['wall_s']:+.1f} s), "
            f"CPU x{overhead['cpu']:.2f} ({supervised['cpu_s'] - in_process['cpu_s']:+.1f} s)"
        )
    for profile in ("default", "thorough"):
        serial, parallel = runs[f"pytest plugin {profile}"], runs[f"pytest plugin {profile} -n 2"]
        if isinstance(parallel, dict):
            speedup = serial["wall_s"] / parallel["wall_s"]
            runs[f"xdist speed-up {profile}"] = speedup
            print(f"pytest-xdist -n 2 speed-up, {profile} profile: x{speedup:.2f}")
    return runs


def bench_suite() -> dict:
    if not _has_xdist():
        return {"skipped": "pytest-xdist not installed"}
    load = load_average()
    run = _timed_subprocess(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "worksteal",
            "--durations=10",
            "tests",
        ]
    )
    run["load_average_before"] = load
    output = run.pop("output")
    run["slowest"] = [
        {"seconds": float(seconds), "phase": phase, "test": test}
        for seconds, phase, test in re.findall(r"^(\d+\.\d+)s (\w+)\s+(\S+)", output, re.M)
    ]
    run["summary"] = output.strip().splitlines()[-1] if output.strip() else ""
    print(f"test suite -n 2: {run['wall_s']:.1f} s wall, exit code {run['returncode']}")
    return run


# ------------------------------------------------------------------------------------------
# scaling


def scaling_problem(width: int, batch: int, positions: int, seed: int = 0):
    """Linear(16, width) - tanh - Linear(width, width) - tanh - Linear(width, 4) on ``positions``
    shared positions per datum, MSE on every position; the measured layer is the middle one."""
    torch.manual_seed(seed)
    model = mlp([16, width, width, 4]).double()
    shape = (batch, 16) if positions == 1 else (batch, positions, 16)
    X = torch.randn(shape, dtype=torch.float64)
    y = torch.randn((*shape[:-1], 4), dtype=torch.float64)
    return model, nn.MSELoss(), [(X, y)], "2"


def bench_scaling(repeats: int) -> dict:
    base = {"width": 32, "batch": 32, "positions": 1}
    grid = {"width": (16, 32, 64), "batch": (16, 64, 256), "positions": (1, 4, 16)}
    results: dict = {}
    for axis, values in grid.items():
        rows = []
        for value in values:
            sizes = {**base, axis: value}
            model, loss_func, batches, layer = scaling_problem(**sizes)
            oracle_s = best_time(partial(exact_blocks, model, loss_func, batches, [layer]), repeats)
            reference = partial(kfac_ref.compute_kfac, model, loss_func, batches, layers=[layer])
            reference_s = best_time(reference, repeats)
            size = sum(p.numel() for p in model.get_submodule(layer).parameters())
            rows.append(
                {**sizes, "parameters": size, "oracle_s": oracle_s, "kfac_ref_s": reference_s}
            )
            print(
                f"scaling {axis}={value:4d} (P={size}): oracle {oracle_s * 1e3:.1f} ms, "
                f"kfac_ref {reference_s * 1e3:.1f} ms"
            )
        results[axis] = rows
    limit = int(math.sqrt(MEMORY_GIB * 2**30 / 2 / 8))
    results["memory"] = {
        "machine_gib": MEMORY_GIB,
        "largest_float64_block_parameters": limit,
        "note": "the block of a layer with P parameters holds P^2 float64 numbers; the oracle "
        "also keeps one chunk of per-datum Jacobian products (at most 2^24 numbers) and the "
        "block's copy it returns, so half the memory bounds P",
    }
    print(f"largest layer whose float64 block fits in half of {MEMORY_GIB} GiB: P = {limit}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results.json"))
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(DEFAULT_SECTIONS),
        help="sections to run (default: all but 'suite' and 'scale'); the others keep their "
        "stored results",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the in-process timings (default 1: least disturbed by a busy "
        "machine); the subprocesses of 'profiles' and 'suite' set their own",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    results: dict = json.loads(output.read_text()) if output.exists() else {}
    results["machine"] = machine()
    runners = {
        "oracle": lambda: bench_oracle(args.repeats),
        "libraries": lambda: bench_libraries(args.repeats),
        "profiles": lambda: bench_profiles(args.repeats),
        "suite": bench_suite,
        "scaling": lambda: bench_scaling(args.repeats),
        "scale": bench_scale,
    }
    for section in args.only:
        load = load_average()
        start = time.perf_counter()
        results[section] = runners[section]()
        results.setdefault("sections", {})[section] = {
            "date": datetime.date.today().isoformat(),
            "seconds": time.perf_counter() - start,
            "load_average_before": load,
        }
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
