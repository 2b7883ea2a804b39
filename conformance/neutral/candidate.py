"""The interface a framework's candidate implements for the neutral runner.

A candidate is given a :class:`~kfac_conformance.neutral.fixtures.StoredCase` (numpy arrays:
parameters in the PyTorch layout, batches, the index record) and returns numpy factors in the
suite's layout (:mod:`kfac_conformance.neutral.factors`). Everything else, which items run,
the conversion of its declared conventions, tolerances, diagnosis and the report, is the
runner's (:mod:`kfac_conformance.neutral.runner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.neutral.factors import Factors
from kfac_conformance.neutral.fixtures import StoredCase

FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")
FLAVOURS = ("expand", "reduce")


class Refused(Exception):
    """The candidate does not offer what was asked (a limitation of its library): the item is
    skipped, worded as the PyTorch runner words a refusal."""


class Unavailable(Exception):
    """What the item needs is not there in this process (e.g. fewer devices than it shards
    over): the item is skipped with the reason, which is no verdict on the candidate."""


@runtime_checkable
class FrameworkCandidate(Protocol):
    """A KFAC implementation in some framework, seen through numpy.

    - ``name``, ``version``: what the report shows (``version`` ``None`` when unknown);
    - ``framework``: the distribution whose version the report records as
      ``"<framework>_version"`` (``"jax"``, ``"mlx"``);
    - ``dtype``: the precision it computes in (``"float64"`` or ``"float32"``); its answers
      are held to that dtype's round-off tolerance;
    - ``conventions``: its declared scales; the runner divides its blocks by the scale.
    """

    name: str
    version: str | None
    framework: str
    dtype: str
    conventions: Conventions

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        """Why the candidate does not offer KFAC of this Fisher type and flavour on ``case``
        (``None``: it does)."""

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> Mapping[str, Factors]:
        """Factors of every parameter layer over all batches of ``case`` (all data as one
        data set); for ``"mc"``, ``mc_samples`` labels per datum drawn from ``seed``. May
        raise :class:`Refused`."""


@runtime_checkable
class MultiDeviceCandidate(Protocol):
    """A candidate that also computes data-parallel, which the ``distributed/*`` items check.

    ``compute_on_devices(shards, fisher_type, flavour)`` runs on ``len(shards)`` devices at
    once, device ``d`` holding ``shards[d]`` (:func:`~kfac_conformance.neutral.transforms.sharded`:
    an equal slice of every batch of one case), and returns each device's factors, in device
    order; each must be the answer for all the data of all the shards. May raise
    :class:`Refused`, or :class:`Unavailable` where the process has too few devices.
    """

    def compute_on_devices(
        self, shards: Sequence[StoredCase], fisher_type: str, flavour: str
    ) -> Sequence[Mapping[str, Factors]]: ...
