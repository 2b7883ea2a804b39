"""The check catalogue: one module per family, each exporting ``CHECKS``."""

from __future__ import annotations

from kfac_conformance.checks import (
    agreement,
    exactness,
    invariance,
    monte_carlo,
    parity,
    robustness,
    side_effects,
    structure,
)
from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement

ALL_CHECKS: list[Check] = [
    *exactness.CHECKS,
    *monte_carlo.CHECKS,
    *invariance.CHECKS,
    *structure.CHECKS,
    *side_effects.CHECKS,
    *robustness.CHECKS,
    *agreement.CHECKS,
    *parity.CHECKS,
]
CHECKS_BY_ID: dict[str, Check] = {check.id: check for check in ALL_CHECKS}
assert len(CHECKS_BY_ID) == len(ALL_CHECKS), "check ids must be unique"

__all__ = [
    "ALL_CHECKS",
    "CHECKS_BY_ID",
    "CaseEntry",
    "Check",
    "CheckFailed",
    "CheckSkipped",
    "Measurement",
]
