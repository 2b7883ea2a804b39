"""A supervised kronfluence run leaves no semaphore behind (where kronfluence is installed).

tqdm's first progress bar creates a multiprocessing lock; in a forkserver worker, which the
supervisor ends with SIGKILL, that lock was a leaked named semaphore and the resource tracker
warned at exit (see ``progress_bars_without_a_semaphore``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kronfluence")


def test_a_supervised_run_leaks_no_semaphore(tmp_path):
    command = Path(sys.executable).parent / "kfac-conformance"
    select = "agreement/empirical[mlp[tanh-ce-batch]]"
    result = subprocess.run(
        [command, "run", "--candidate", "kronfluence-kfac", "--profile", "quick"]
        + ["--select", select],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert "1 checks ran of 1 (complete)" in result.stdout, result.stdout + result.stderr
    assert "leaked semaphore" not in result.stderr, result.stderr
