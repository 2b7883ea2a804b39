"""The environment variables the front ends read. Torch-free: the pytest plugin imports it in
every run."""

from __future__ import annotations

import os
from collections.abc import Mapping

# like array-api-tests' ARRAY_API_TESTS_MODULE: the candidate SPEC when no option names one
CANDIDATE_VARIABLE = "KFAC_CONFORMANCE_CANDIDATE"


def candidate_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """The SPEC in :data:`CANDIDATE_VARIABLE`; ``None`` when it is unset or blank."""
    return environ.get(CANDIDATE_VARIABLE, "").strip() or None
