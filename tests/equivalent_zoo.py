"""The equivalent zoo: correct candidates in unusual but valid forms.

Each one is the reference (``kfac_ref``, as :class:`ReferenceCandidate` runs it) with its
answer handed back in a form a real implementation may well use: transposed views, strided
storage, a rescaled Kronecker pair, another valid EKFAC eigenbasis, a different dict order,
computed under ``torch.no_grad`` or ``inference_mode``. The numbers are right, so each must
pass every item the reference passes: a red verdict here is a defect of the suite.

Three forms break the contract's hygiene rule (results detached, in the problem's dtype) while
their values are right. ``hygiene`` names the message the suite owes them: one item of its own
that fails (``hygiene/*``), everything else judged on the values.

Importable as ``equivalent_zoo`` from ``tests/`` (pytest puts that folder on the path).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from unittest import mock

import torch
from torch import Tensor

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref import ekfac
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors, groups_of

Factors = KroneckerFactors | EKFACFactors | GroupedFactors
TENSOR_FIELDS = {KroneckerFactors: ("A", "B"), EKFACFactors: ("QA", "QB", "S", "S_bias")}


def each_tensor(factors: Factors, change: Callable[[Tensor], Tensor]) -> Factors:
    """``factors`` with ``change`` applied to each of its tensors (an absent ``S_bias`` stays;
    a grouped layer's, group by group)."""
    if isinstance(factors, GroupedFactors):
        return GroupedFactors(tuple(each_tensor(group, change) for group in factors.groups))
    changed = {
        name: change(getattr(factors, name))
        for name in TENSOR_FIELDS[type(factors)]
        if getattr(factors, name) is not None
    }
    return dataclasses.replace(factors, **changed)


class Equivalent:
    """The reference's answer, reshaped by :meth:`form` one layer at a time; subclasses
    override :meth:`form`, or :meth:`compute` for a form of the whole call."""

    capabilities = Capabilities(
        layer_types=ReferenceCandidate.capabilities.layer_types,
        approximations=frozenset({"kfac", "ekfac"}),
        grouped_convolutions=True,
    )
    sampled_labels = ReferenceCandidate.sampled_labels
    version = ReferenceCandidate.version
    hygiene: str | None = None  # the hygiene message its one failing item must carry
    # the approximations whose answers the form changes: the others are the reference's own
    changes: frozenset[str] = frozenset({"kfac", "ekfac"})

    def __init__(self) -> None:
        self.name = f"equivalent:{type(self).__name__}"

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        result = reference_compute(problem, request)
        return {layer: self._formed(factors) for layer, factors in result.items()}

    def _formed(self, factors: Factors) -> Factors:
        if isinstance(factors, GroupedFactors):
            return GroupedFactors(tuple(self.form(group) for group in factors.groups))
        return self.form(factors)

    def form(self, factors: Factors) -> Factors:
        return factors


def _column_major(tensor: Tensor) -> Tensor:
    """The same values with transposed strides (a matrix laid out by columns)."""
    return tensor.T.contiguous().T if tensor.ndim == 2 else tensor


class TransposedViews(Equivalent):
    """Kronecker factors returned as ``A.T`` (a transposed view; ``A`` is symmetric) beside a
    contiguous ``B``; EKFAC's ``QA`` made row-major beside ``eigh``'s column-major ``QB``, and
    ``S`` laid out by columns. Mixed layouts are what ``torch.kron`` once refused."""

    def form(self, factors: Factors) -> Factors:
        if isinstance(factors, KroneckerFactors):
            return KroneckerFactors(factors.A.T, factors.B.contiguous(), factors.bias)
        return dataclasses.replace(
            factors, QA=factors.QA.contiguous(), S=_column_major(factors.S.contiguous())
        )


def _strided(tensor: Tensor) -> Tensor:
    """The same values in a buffer twice as wide plus padding, every other column used: strides
    ``(2 n + 3, 2)`` for a matrix, ``(2,)`` for a vector."""
    if tensor.ndim == 1:
        wide = torch.full((2 * tensor.shape[0],), float("nan"), dtype=tensor.dtype)
        wide[::2] = tensor
        return wide[::2]
    rows, columns = tensor.shape
    wide = torch.full((rows, 2 * columns + 3), float("nan"), dtype=tensor.dtype)
    wide[:, : 2 * columns : 2] = tensor
    return wide[:, : 2 * columns : 2]


class StridedStorage(Equivalent):
    """Every tensor a strided view into a larger, NaN-padded buffer (no tensor is contiguous)."""

    def form(self, factors: Factors) -> Factors:
        return each_tensor(factors, _strided)


class ChannelsLastInternally(Equivalent):
    """Computed on a copy of the problem whose model and 4-d inputs are channels-last: the
    convolutions run on NHWC memory, so every intermediate tensor is strided that way.
    Channels-last is a 4-d memory format: it claims Linear and Conv2d only (grouped included)."""

    capabilities = Capabilities(
        approximations=frozenset({"kfac", "ekfac"}), grouped_convolutions=True
    )

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        model = copy.deepcopy(problem.model).to(memory_format=torch.channels_last)
        batches = [
            (X.contiguous(memory_format=torch.channels_last) if X.ndim == 4 else X, y)
            for X, y in problem.batches
        ]
        return reference_compute(
            dataclasses.replace(problem, model=model, batches=batches), request
        )


RESCALING = 37.5


class RescaledPair(Equivalent):
    """``(c A, B / c)`` with ``c = 37.5``: the same Kronecker product. Only where ``B`` is not
    also the bias block (bias modes ``"none"`` and ``"joint"``); a separate bias's block is
    ``B`` itself, so there the pair is returned unchanged."""

    changes = frozenset({"kfac"})

    def form(self, factors: Factors) -> Factors:
        if isinstance(factors, EKFACFactors) or factors.bias == "separate":
            return factors
        return KroneckerFactors(RESCALING * factors.A, factors.B / RESCALING, factors.bias)


class RequiresGrad(Equivalent):
    """Every factor a leaf that requires grad (``tensor.requires_grad_()``)."""

    hygiene = "detach it"

    def form(self, factors: Factors) -> Factors:
        return each_tensor(factors, lambda tensor: tensor.clone().requires_grad_())


class CarriesAutogradHistory(Equivalent):
    """Every factor the output of an op on a tensor that requires grad (it has a ``grad_fn``)."""

    hygiene = "detach it"

    def form(self, factors: Factors) -> Factors:
        one = torch.ones((), requires_grad=True)
        return each_tensor(factors, lambda tensor: tensor * one.to(tensor.dtype))


class Float64Factors(Equivalent):
    """The answer in float64 whatever the problem's dtype (exact, but not the dtype asked)."""

    hygiene = "return the problem's dtype"

    def form(self, factors: Factors) -> Factors:
        return factors.to(torch.float64)


def _eigenspaces(eigenvalues: Tensor) -> list[slice]:
    """Runs of (ascending) eigenvalues equal to within round-off: the degenerate eigenspaces."""
    resolution = 100 * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max().item()
    runs, start = [], 0
    for index in range(1, len(eigenvalues) + 1):
        if index == len(eigenvalues) or eigenvalues[index] - eigenvalues[index - 1] > resolution:
            runs.append(slice(start, index))
            start = index
    return runs


def _rotated_within_eigenspaces(factor: Tensor, generator: torch.Generator) -> Tensor:
    """Orthonormal eigenvectors of ``factor``, each degenerate eigenspace's rotated by a random
    orthogonal matrix: another valid eigenbasis."""
    eigenvalues, basis = torch.linalg.eigh(factor)
    basis = basis.clone()
    for run in _eigenspaces(eigenvalues):
        size = run.stop - run.start
        if size > 1:
            gaussian = torch.randn(size, size, generator=generator, dtype=torch.float64)
            rotation = torch.linalg.qr(gaussian).Q.to(basis.dtype)
            basis[:, run] = basis[:, run] @ rotation
    return basis


def _signs_flipped(factor: Tensor, generator: torch.Generator) -> Tensor:
    basis = torch.linalg.eigh(factor).eigenvectors
    signs = torch.randint(0, 2, (basis.shape[1],), generator=generator) * 2 - 1
    return basis * signs.to(basis.dtype)


class _OtherEigenbasis(Equivalent):
    """EKFAC in another valid eigenbasis of KFAC's factors; the corrected eigenvalues are
    computed in that basis (the reference's own correction), so the block is the same."""

    changes = frozenset({"ekfac"})

    basis_of: Callable[[Tensor, torch.Generator], Tensor]

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        # a generator of its own: the global RNG is the caller's (side-effects/none)
        generator = torch.Generator().manual_seed(0)
        basis_of = type(self).basis_of

        def other_basis(factors: KroneckerFactors | GroupedFactors) -> tuple[Tensor, Tensor]:
            # a grouped layer's bases stacked over the groups, as kfac_ref.ekfac has them
            bases = [
                (basis_of(group.A, generator), basis_of(group.B, generator))
                for group in groups_of(factors)
            ]
            if len(bases) == 1:
                return bases[0]
            return tuple(torch.stack(side) for side in zip(*bases, strict=True))

        with mock.patch.object(ekfac, "kfac_eigenbasis", other_basis):
            return reference_compute(problem, request)


class RotatedDegenerateEigenbasis(_OtherEigenbasis):
    """Each degenerate eigenspace of ``A`` and ``B`` (repeated eigenvalues, e.g. the zero
    eigenvalues of a rank-deficient ``A``) spanned by a randomly rotated basis."""

    basis_of = staticmethod(_rotated_within_eigenspaces)


class FlippedEigenvectorSigns(_OtherEigenbasis):
    """Random signs on the eigenvectors (columns) of ``QA`` and ``QB``."""

    basis_of = staticmethod(_signs_flipped)


class UnderNoGrad(Equivalent):
    """The whole computation called inside ``torch.no_grad()``."""

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        with torch.no_grad():
            return super().compute(problem, request)


class UnderInferenceMode(Equivalent):
    """The whole computation called inside ``torch.inference_mode()``, the answer copied there
    too: its tensors are inference tensors."""

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        with torch.inference_mode():
            result = super().compute(problem, request)
            return {layer: each_tensor(f, Tensor.clone) for layer, f in result.items()}


class LayersInReverseOrder(Equivalent):
    """The layers' entries in the reverse of the problem's order."""

    def compute(self, problem: Problem, request: Request) -> Mapping[str, Factors]:
        return dict(reversed(super().compute(problem, request).items()))


EQUIVALENTS: list[type[Equivalent]] = [
    TransposedViews,
    StridedStorage,
    ChannelsLastInternally,
    RescaledPair,
    RequiresGrad,
    CarriesAutogradHistory,
    Float64Factors,
    RotatedDegenerateEigenbasis,
    FlippedEigenvectorSigns,
    UnderNoGrad,
    UnderInferenceMode,
    LayersInReverseOrder,
]
