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
    # opt-in: the distributed/* family alone (it starts processes; docs/distributed.md)
    "distributed": Profile("distributed", mc_seeds=32, quick=True),
}
# the profiles a check runs in unless it names its own (the opt-in ones run only their family)
GENERAL_PROFILES = frozenset({"quick", "default", "thorough"})
