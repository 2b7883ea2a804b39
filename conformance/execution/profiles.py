"""The run profiles. Kept free of torch, so that the pytest plugin can name them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """How hard a run looks: which cases, and how many seeds the statistical checks use."""

    name: str
    mc_seeds: int
    quick: bool = False


PROFILES = {
    "quick": Profile("quick", mc_seeds=32, quick=True),
    "default": Profile("default", mc_seeds=32),
    "thorough": Profile("thorough", mc_seeds=96),
    # opt-in, each running only the checks that name it: curvature-vector products on models
    # of millions of parameters, no dense block (kfac_conformance.checks.scale) ...
    "scale": Profile("scale", mc_seeds=32),
    # ... and the distributed/* family, which starts processes (docs/distributed.md)
    "distributed": Profile("distributed", mc_seeds=32, quick=True),
}
# the profiles a check runs in unless it names its own: those that compare P x P blocks on
# small cases (the opt-in ones run only their family)
GENERAL_PROFILES = frozenset({"quick", "default", "thorough"})
