"""kfac-conformance: check any KFAC implementation against exact curvature and the theory.

The folder ``conformance/`` is the import package ``kfac_conformance`` (``conformance`` is
taken on PyPI). The public contract: :class:`Candidate`, :class:`Problem`, :class:`Request`,
:class:`Capabilities`, :class:`Conventions`, :class:`KroneckerFactors`, :class:`GroupedFactors`
(a grouped convolution's answer), :class:`NotSupported` and
:func:`load_candidate`. The programmatic API: :func:`check_candidate`, with
:class:`RunOptions` and :class:`RunLimits`, returns a :class:`Report`.

The names are imported on first use: pytest imports this package for its plugin in every
run, and that must not cost a torch import.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Candidate": "kfac_conformance.contract.problem",
    "Capabilities": "kfac_conformance.contract.problem",
    "Conventions": "kfac_conformance.contract.conventions",
    "GroupedFactors": "kfac_ref.factors",
    "KroneckerFactors": "kfac_ref.factors",
    "NotSupported": "kfac_conformance.contract.outcomes",
    "Problem": "kfac_conformance.contract.problem",
    "Report": "kfac_conformance.reports.report",
    "Request": "kfac_conformance.contract.problem",
    "RunLimits": "kfac_conformance.execution.limits",
    "RunOptions": "kfac_conformance.execution.options",
    "check_candidate": "kfac_conformance.api",
    "load_candidate": "kfac_conformance.contract.loading",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kfac_conformance' has no attribute {name!r}")
