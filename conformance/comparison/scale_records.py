"""What the run-level scale summary needs from each item, as plain JSON (``Result.scale``).

Whether a scale convention explains a candidate's constant factors can only be judged across
a run: a factor that one problem's counts name by coincidence is refuted by another problem,
and a convention that fixes one failure may break an item that passes. So each item records

- ``answers``: every answer :meth:`Session.call` converted for a fisher type that a
  convention governs (its fisher type, loss, reduction, ``N`` and ``R``, distinct, in call
  order): declaring another convention would rescale exactly these;
- ``verdict_scale``: how the item's verdict depends on the scale of those answers (see
  :data:`VERDICT_SCALES`);
- ``failure``: for a failure whose every compared layer is a constant multiple of its target
  (a *scale-only* failure), each layer's factor with the counts of its problem
  (:func:`failure_record`).

:mod:`kfac_conformance.reports.scale_summary` reads them. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from kfac_conformance.contract.conventions import governing_field

# How a check's verdict depends on the scale of the candidate's answers, by its kind (a check
# whose kind says otherwise sets Check.verdict_scale):
# - "absolute": it compares answers with exact or reference blocks (or their statistics) at
#   a tolerance far below any convention's factor, so it changes unless every answer keeps
#   its scale;
# - "relative": it compares answers with each other (invariance) or tests scale-free
#   properties (guards: symmetry, definiteness, exceptions), so a factor common to all its
#   answers leaves it unchanged.
_VERDICT_SCALE_OF_KIND = {
    "exact": "absolute",
    "reference": "absolute",
    "statistical": "absolute",
    "invariance": "relative",
    "guard": "relative",
}
# and "unknown": a wrong scale can pass or fail the check, which is left out of the judgement
VERDICT_SCALES = ("absolute", "relative", "unknown")


class Judged(Protocol):
    """What :func:`item_record` reads of a check (a :class:`~kfac_conformance.checks.base.Check`)."""

    kind: str
    verdict_scale: str | None


def _answer_fields(fisher_type: str, quantities: Mapping[str, object]) -> dict:
    return {
        "fisher_type": fisher_type,
        "loss": str(quantities["loss"]),
        "reduction": str(quantities["reduction"]),
        "N": int(quantities["N"]),  # type: ignore[call-overload]
        "R": float(quantities["R"]),  # type: ignore[arg-type]
    }


def answer_record(fisher_type: str, quantities: Mapping[str, object]) -> dict | None:
    """What declaring another convention depends on for one answer (``None``: nothing, e.g.
    forward-only). ``quantities``: :meth:`Problem.scale_quantities`."""
    if governing_field(fisher_type) is None:
        return None
    return _answer_fields(fisher_type, quantities)


def layer_record(layer: str, layer_type: str, shared: int, factor: float, residual: float):
    """One compared layer of a scale-only failure: its block is ``factor`` times the target,
    up to ``residual`` (the relative error left once the factor is divided out)."""
    return {"layer": layer, "type": layer_type, "S": shared, "factor": factor, "residual": residual}


def failure_record(
    fisher_type: str,
    quantities: Mapping[str, object],
    counts: Mapping[str, float],
    tolerance: float,
    layers: Sequence[dict],
    against: Mapping[str, object] | None = None,
) -> dict:
    """A scale-only failure: the answer's :func:`answer_record`, the problem's counts ``T``
    (loss terms per datum) and ``K`` (batches), the comparison's tolerance, every compared
    layer's :func:`layer_record`, and ``against``: the :func:`answer_record` of the
    candidate's own answer that was the target (invariance checks), or ``None`` when the
    target was an exact or reference block."""
    return {
        **_answer_fields(fisher_type, quantities),
        "T": int(counts["T"]),
        "K": int(counts["K"]),
        "tolerance": tolerance,
        "layers": list(layers),
        "against": None if against is None else _answer_fields(fisher_type, against),
    }


def item_record(check: Judged, answers: Sequence[dict], failure: dict | None) -> dict | None:
    """``Result.scale`` of an item of ``check``: ``None`` when the item converted no governed
    answer and has no scale-only failure (nothing a convention could change)."""
    distinct: dict[tuple, dict] = {}
    for answer in answers:
        distinct.setdefault(tuple(sorted(answer.items())), answer)
    if not distinct and failure is None:
        return None
    return {
        "verdict_scale": check.verdict_scale or _VERDICT_SCALE_OF_KIND.get(check.kind, "unknown"),
        "answers": list(distinct.values()),
        "failure": failure,
    }
