"""How a check ends other than passing: the exceptions every layer of the harness shares."""

from __future__ import annotations

STATUSES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


class CheckFailed(AssertionError):
    """The property does not hold; carries the observed error and the tolerance.

    ``evidence`` holds the compared blocks of the first wrong layer, when blocks were compared
    (see :mod:`kfac_conformance.comparison.evidence`); ``scale`` the factors of a scale-only
    failure (see :mod:`kfac_conformance.comparison.scale_records`).
    """

    def __init__(
        self,
        message: str,
        observed: float | None = None,
        tolerance: float | None = None,
        diagnosis: str | None = None,
        evidence: dict | None = None,
        scale: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.observed, self.tolerance, self.diagnosis = (
            message,
            observed,
            tolerance,
            diagnosis,
        )
        self.evidence, self.scale = evidence, scale


class CheckSkipped(Exception):
    """The check does not apply (e.g. outside the candidate's claimed capabilities)."""


class NotSupported(NotImplementedError):
    """Raised by a candidate for an input its :class:`Capabilities` cannot describe.

    The check is then *skipped* with the message as its reason, like a check outside the
    claimed capabilities; in the checks that expect an exception (``unsupported/*``,
    ``weight-tying/*``) it counts as the exception.
    """


class CandidateRefused(CheckSkipped):
    """The candidate raised :class:`NotSupported`."""
