"""The items the neutral runner has for stored cases, with the PyTorch suite's check ids.

- ``exactness/<fisher type>-<flavour>`` on every stored canonical case whose ``exact`` names
  layers for it (the stored exact block is the target);
- ``mc/unbiased`` on :data:`~kfac_conformance.neutral.statistics.MC_CASE_IDS`;
- ``invariance/mean-vs-sum`` on every stored case (every Fisher type, every flavour that
  differs there: reduce only with weight sharing), ``invariance/batch-splitting`` and
  ``invariance/permutation`` on those with two data or more (the deterministic Fisher types,
  expand), as the PyTorch checks select them;
- ``agreement/<fisher type>`` (type-2, empirical, forward-only) on every stored case that
  holds the reference's KFAC for it and where no exactness check holds it (the PyTorch
  check's selection), in every flavour that differs there;
- with ``distributed=True`` (a runner whose candidates compute across devices),
  ``distributed/kfac-<fisher type>`` (type-2, empirical, forward-only) on
  :data:`DISTRIBUTED_CASE_IDS`, in every flavour that differs there.

The order is the PyTorch catalogue's (exactness, mc, invariance, agreement, distributed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kfac_conformance.neutral import fixtures
from kfac_conformance.neutral.candidate import FLAVOURS
from kfac_conformance.neutral.statistics import MC_CASE_IDS

EXACTNESS_CHECKS = tuple(
    (f"exactness/{fisher_type}-{flavour}", fisher_type, flavour)
    for fisher_type in ("type-2", "empirical")
    for flavour in FLAVOURS
)
MC_UNBIASED = "mc/unbiased"
MEAN_VS_SUM = "invariance/mean-vs-sum"
BATCH_SPLITTING = "invariance/batch-splitting"
PERMUTATION = "invariance/permutation"
DETERMINISTIC_FISHER_TYPES = ("type-2", "empirical", "forward-only")
AGREEMENT_FISHER_TYPES = DETERMINISTIC_FISHER_TYPES
FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")
DISTRIBUTED_CHECKS = tuple(
    (f"distributed/kfac-{fisher_type}", fisher_type) for fisher_type in DETERMINISTIC_FISHER_TYPES
)
# stored cases whose every batch splits into 4 equal shards, one of each kind of layer block:
# an MLP with cross-entropy over two batches, a CNN, MSE over three batches, dense layers on a
# sequence axis (kfac-jax's RepeatedDenseKroneckerFactored)
DISTRIBUTED_CASE_IDS = (
    "mlp[tanh-ce-batch]",
    "cnn[relu-ce]",
    "deep-linear[mse-mean-3batches]",
    "reduce-deep-linear[mean-pool]",
)


@dataclass(frozen=True)
class Item:
    """One check on one stored case: the Fisher types it asks for and the flavours it compares."""

    check_id: str
    case_id: str
    fisher_types: tuple[str, ...]
    flavours: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.check_id}[{self.case_id}]"


def _agreement_flavours(case: fixtures.StoredCase, fisher_type: str) -> tuple[str, ...]:
    """The flavours agreement compares on ``case`` (none: it does not run there)."""
    if fisher_type not in case.reference_fisher_types("kfac"):
        return ()
    if any(case.exact_layers(fisher_type, flavour) for flavour in FLAVOURS):
        return ()
    return _distinct_flavours(case)


def _distinct_flavours(case: fixtures.StoredCase) -> tuple[str, ...]:
    return FLAVOURS if case.weight_sharing else FLAVOURS[:1]


def plan(
    case_ids: Sequence[str] | None = None,
    check_ids: Sequence[str] | None = None,
    distributed: bool = False,
) -> list[Item]:
    """Every item on ``case_ids`` (default: all stored) of ``check_ids`` (default: all); the
    ``distributed/*`` items only with ``distributed``."""
    selected = list(case_ids) if case_ids is not None else fixtures.case_ids()
    cases = [fixtures.load(case_id) for case_id in selected]

    def wanted(check_id: str) -> bool:
        return check_ids is None or check_id in check_ids

    items = [
        Item(check_id, case.id, (fisher_type,), (flavour,))
        for check_id, fisher_type, flavour in EXACTNESS_CHECKS
        if wanted(check_id)
        for case in cases
        if case.kind == "canonical" and case.exact_layers(fisher_type, flavour)
    ]
    if wanted(MC_UNBIASED):
        items += [Item(MC_UNBIASED, c, ("mc",), ("expand",)) for c in MC_CASE_IDS if c in selected]
    if wanted(MEAN_VS_SUM):
        items += [Item(MEAN_VS_SUM, c.id, FISHER_TYPES, _distinct_flavours(c)) for c in cases]
    for check_id in (BATCH_SPLITTING, PERMUTATION):
        if wanted(check_id):
            items += [
                Item(check_id, case.id, DETERMINISTIC_FISHER_TYPES, ("expand",))
                for case in cases
                if case.num_data >= 2
            ]
    for fisher_type in AGREEMENT_FISHER_TYPES:
        check_id = f"agreement/{fisher_type}"
        if wanted(check_id):
            items += [
                Item(check_id, case.id, (fisher_type,), flavours)
                for case in cases
                if (flavours := _agreement_flavours(case, fisher_type))
            ]
    for check_id, fisher_type in DISTRIBUTED_CHECKS if distributed else ():
        if wanted(check_id):
            items += [
                Item(check_id, case.id, (fisher_type,), _distinct_flavours(case))
                for case in cases
                if case.id in DISTRIBUTED_CASE_IDS
            ]
    return items
