"""The check catalogue: every family's ``CHECKS``, in the order runs and reports list them.

Listing a family here is its only registration: the plan
(:mod:`kfac_conformance.execution.plan`) and the fuzzer
(:mod:`kfac_conformance.fuzzing.properties`) read where each check runs from the check itself.

It lives outside the ``checks`` package so that importing one check module (or
``checks.base``) does not import every other one.
"""

from __future__ import annotations

from kfac_conformance.checks import (
    agreement,
    distributed,
    ekfac,
    exactness,
    hygiene,
    invariance,
    mc,
    parity,
    scale,
    scale_mc,
    side_effects,
    structure,
    unsupported,
    weight_tying,
)
from kfac_conformance.checks.base import Check

ALL_CHECKS: list[Check] = [
    *exactness.CHECKS,
    *mc.CHECKS,
    *invariance.CHECKS,
    *structure.CHECKS,
    *hygiene.CHECKS,
    *side_effects.CHECKS,
    *weight_tying.CHECKS,
    *unsupported.CHECKS,
    *agreement.CHECKS,
    *ekfac.CHECKS,
    *parity.CHECKS,
    *scale.CHECKS,
    *scale_mc.CHECKS,
    *distributed.CHECKS,
]
if len({check.id for check in ALL_CHECKS}) != len(ALL_CHECKS):
    raise RuntimeError("check ids must be unique: users' expected-failure files name them")
