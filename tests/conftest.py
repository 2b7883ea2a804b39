"""Test-wide settings: one torch thread, and the hypothesis profiles.

The problems are tiny, so a second intra-op thread only adds synchronisation (and ``pytest -n
2`` already uses both cores; docs/performance.md).

Hypothesis settings profiles: "ci" (the default; deterministic and small) and "thorough".

Select one with the environment variable ``HYPOTHESIS_PROFILE`` (e.g.
``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

try:
    import torch
except ImportError:  # the JAX runner's tests (nox -s tests_jax) run where torch is absent
    pass
else:
    torch.set_num_threads(1)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=15,
    deadline=None,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# A real failing run for the report tests: a bug-zoo mutant that ignores convolution geometry
# fails exactness on both conv cases of the quick profile and passes the third item.
FAILING_CANDIDATE = "zoo.sharing:ConvPatchesIgnoreGeometry"
FAILING_SELECT = "exactness/type-2-*[conv-*]"


@pytest.fixture(scope="session")
def failing_report(tmp_path_factory) -> Path:
    """The JSON report of a run with two failures (with stored blocks) and one pass."""
    from kfac_conformance.frontends.cli import main

    path = tmp_path_factory.mktemp("failing") / "report.json"
    arguments = ["run", "--candidate", FAILING_CANDIDATE, "--profile", "quick", "-q"]
    code = main([*arguments, "--select", FAILING_SELECT, "--report-json", str(path)])
    assert code == 1 and path.is_file()
    return path
