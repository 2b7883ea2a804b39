"""The run profiles. Kept free of torch, so that the pytest plugin can name them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """How hard a run looks: which cases, and how many seeds the statistical checks use.

    ``dense_blocks`` profiles compare P x P blocks on small cases; the ``scale`` profile
    does not (its checks compare curvature-vector products on models of millions of
    parameters, :mod:`kfac_conformance.checks.scale`), and only checks that name it run there.
    """

    name: str
    mc_seeds: int
    quick: bool = False
    dense_blocks: bool = True


PROFILES = {
    "quick": Profile("quick", mc_seeds=32, quick=True),
    "default": Profile("default", mc_seeds=32),
    "thorough": Profile("thorough", mc_seeds=96),
    "scale": Profile("scale", mc_seeds=32, dense_blocks=False),
}
# where a check runs unless it names its profiles: every profile that compares dense blocks
BLOCK_PROFILES = frozenset(name for name, profile in PROFILES.items() if profile.dense_blocks)
