"""Test-wide settings: one torch thread, and the hypothesis profiles.

The problems are tiny, so a second intra-op thread only adds synchronisation (and ``pytest -n
2`` already uses both cores; docs/performance.md).

Hypothesis settings profiles: "ci" (the default; deterministic and small) and "thorough".

Select one with the environment variable ``HYPOTHESIS_PROFILE`` (e.g.
``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

from __future__ import annotations

import os

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
