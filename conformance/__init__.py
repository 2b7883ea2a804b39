"""kfac-conformance: check any KFAC implementation against exact curvature and the theory.

The folder ``conformance/`` is the import package ``kfac_conformance`` (``conformance`` is
taken on PyPI). The public contract: :class:`Candidate`, :class:`Problem`, :class:`Request`,
:class:`Capabilities`, :class:`KroneckerFactors`, :class:`NotSupported` and
:func:`load_candidate`.
"""

from kfac_conformance.loading import load_candidate
from kfac_conformance.outcomes import NotSupported
from kfac_conformance.problem import Candidate, Capabilities, Problem, Request
from kfac_ref.factors import KroneckerFactors

__all__ = [
    "Candidate",
    "Capabilities",
    "KroneckerFactors",
    "NotSupported",
    "Problem",
    "Request",
    "load_candidate",
]
