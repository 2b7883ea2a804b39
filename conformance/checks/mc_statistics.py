r"""The statistics of the MC checks, per layer's block: MC estimates over seeds, the t tests of
``mc/unbiased``, the error ratios of ``mc/sqrt-m-convergence``, and their tests.

Every layer's block is tested on its own (a block pooled with larger ones hides its bias), in
every flavour that is tested: ``expand``, and ``reduce`` on problems with shared axes (the two
coincide elsewhere). The tests of one item are corrected together
(:mod:`kfac_conformance.checks.significance`).

``K`` seeds give independent estimates :math:`X_k` of a block with target :math:`T` (type-2
KFAC); with :math:`E_k = X_k - T`:

- scale: :math:`z_k = \langle E_k, T\rangle / \|T\|^2`, a t test with ``K - 1`` degrees of
  freedom (a wrong reduction or sample normalisation moves its mean away from zero);
- direction: the first half of the seeds estimates the bias direction :math:`d = \bar E`, the
  second half is tested along it, :math:`z_k = \langle E_k, d\rangle / (\|d\|\,\|T\|)`
  (independent halves keep the test valid and catch biases in any direction);
- convergence: with :math:`u_k, v_k` the squared errors at ``M = 1`` and ``M = 16`` samples,
  the ratio of RMS errors :math:`\sqrt{\bar u/\bar v}` is 4 for ``M`` independent samples;
  :math:`\zeta = (\log(\bar u/\bar v) - \log 16)/\mathrm{se}` with the delta-method
  :math:`\mathrm{se}^2 = \mathrm{var}(u_k/\bar u - v_k/\bar v)/K` is referred to Student's t
  with ``K - 1`` degrees of freedom. The squared errors are heavy-tailed and this test is
  anti-conservative (measured in docs/statistics.md): a block fails only when its ratio also
  leaves :data:`CONVERGENCE_BOUNDS`, which is what holds the false-positive rate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kfac_conformance.checks.base import CaseEntry, CheckSkipped
from kfac_conformance.checks.significance import Test, holm_rejected, t_test
from kfac_conformance.comparison.blocks import kfac_pattern, restrict
from kfac_conformance.comparison.diagnosis import problem_counts
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import Session, tolerance_for

UNBIASED_SAMPLES = 4
CONVERGENCE_SAMPLES = (1, 16)
CONVERGENCE_BOUNDS = (2.0, 8.0)  # expected ratio of RMS errors: sqrt(16 / 1) = 4
EXPECTED_RATIO = math.sqrt(CONVERGENCE_SAMPLES[1] / CONVERGENCE_SAMPLES[0])


def mc_requests(session: Session, entry: CaseEntry, approximation: str = "kfac") -> list[Request]:
    """The MC requests the statistics test (``mc_samples`` and ``seed`` to be set): ``expand``,
    and ``reduce`` where a layer has shared axes, each with the first bias mode the candidate
    claims; the flavours it does not claim are left out, and the check is skipped without any."""
    problem = session.fresh(entry)
    _, shared = problem_counts(problem)
    flavours = ("expand", "reduce") if any(size > 1 for size in shared.values()) else ("expand",)
    requests = []
    for flavour in flavours:
        modes = session.supported_bias_modes(entry, "mc", flavour, approximation)
        if modes:
            requests.append(Request("mc", flavour, bias=modes[0], approximation=approximation))
    if not requests:
        what = "fisher type 'mc'" + (" with EKFAC" if approximation == "ekfac" else "")
        raise CheckSkipped(f"not supported: {what}")
    return requests


def layer_types(session: Session, entry: CaseEntry) -> dict[str, str]:
    problem = session.fresh(entry)
    return {layer: type(problem.model.get_submodule(layer)).__name__ for layer in problem.layers}


def _flat(factors) -> Tensor:
    return factors.to_dense().detach().double().cpu().flatten()


@dataclass
class BlockEstimates:
    """One layer's MC estimates over seeds (one flattened block per row) and their target."""

    layer: str
    flavour: str
    rows: Tensor
    target: Tensor

    @property
    def errors(self) -> Tensor:
        return self.rows - self.target


def _targets(session: Session, entry: CaseEntry, request: Request, result) -> dict[str, Tensor]:
    """Type-2 KFAC: the exact GGN where KFAC is exact, else the reference's type-2 KFAC."""
    problem = session.fresh(entry)
    flavour = request.kfac_approx
    exact_layers = entry.case.exact_layers("type-2", flavour) if entry.case else ()
    if set(exact_layers) == set(problem.layers):
        ggn = session.exact(entry, "ggn")
        return {
            layer: restrict(ggn[layer], kfac_pattern(result[layer])).flatten()
            for layer in problem.layers
        }
    reference = session.reference(entry, Request("type-2", flavour, bias=request.bias))
    return {layer: _flat(reference[layer]) for layer in problem.layers}


def block_estimates(
    session: Session, entry: CaseEntry, request: Request, mc_samples: int, seeds: range
) -> list[BlockEstimates]:
    """Every layer's estimates over ``seeds`` for ``request`` with ``mc_samples``; the check is
    skipped when type-2 KFAC is zero on every layer (nothing to estimate)."""
    rows: dict[str, list[Tensor]] = {}
    targets = None
    # one problem for all seeds: every call restores it (and reports any change as a side
    # effect), and building it per seed was a third of the cost of the checks
    problem = session.fresh(entry)
    for seed in seeds:
        asked = dataclasses.replace(request, mc_samples=mc_samples, seed=seed)
        result = session.call(problem, asked)
        if targets is None:
            targets = _targets(session, entry, request, result)
        for layer in problem.layers:
            rows.setdefault(layer, []).append(_flat(result[layer]))
    if not any(target.abs().max() > 0 for target in targets.values()):
        # e.g. every input a weight sees is zero padding
        raise CheckSkipped("type-2 KFAC is zero on this problem: there is nothing to estimate")
    return [
        BlockEstimates(layer, request.kfac_approx, torch.stack(rows[layer]), targets[layer])
        for layer in targets
    ]


def zero_target_blocks(blocks: list[BlockEstimates], tolerance: float) -> list[str]:
    """Layers whose type-2 block is zero (a dead or zero-padded layer: every MC draw must be
    zero there too) although an estimate is not, relative to the largest target."""
    largest = max(block.target.norm().item() for block in blocks)
    return [
        block.layer
        for block in blocks
        if not block.target.abs().max() > 0
        and not block.rows.norm(dim=1).max().item() <= tolerance * largest
    ]


def t_statistic(z: Tensor, scale: float) -> float:
    """One-sample t statistic of ``z`` against zero; infinite for a constant nonzero ``z``."""
    mean, spread = z.mean().item(), z.std().item()
    if spread <= 1e-12 * scale:
        return 0.0 if abs(mean) <= 1e-9 * scale else math.copysign(float("inf"), mean)
    return mean / (spread / len(z) ** 0.5)


@dataclass(frozen=True)
class BlockStatistics:
    """The scale and direction t statistics of one block, and its mean estimate along the
    target relative to the target (1 for an unbiased candidate)."""

    layer: str
    flavour: str
    scale_t: float
    direction_t: float
    mean_ratio: float
    seeds: int

    def tests(self) -> list[Test]:
        half = self.seeds // 2
        block = (self.layer, self.flavour)
        return [
            t_test(block, "scale", self.scale_t, self.seeds - 1),
            t_test(block, "direction", self.direction_t, self.seeds - half - 1),
        ]


def block_statistics(block: BlockEstimates) -> BlockStatistics:
    errors, target = block.errors, block.target
    norm2 = (target @ target).item()
    scale_z = errors @ target / norm2
    half = len(errors) // 2
    direction = errors[:half].mean(0)
    direction_z = errors[half:] @ direction / (direction.norm().item() * norm2**0.5 or 1.0)
    return BlockStatistics(
        block.layer,
        block.flavour,
        t_statistic(scale_z, 1.0),
        t_statistic(direction_z, 1.0),
        1 + scale_z.mean().item(),
        len(errors),
    )


def unbiased_tests(statistics: list[BlockStatistics]) -> list[Test]:
    return [test for block in statistics for test in block.tests()]


def unbiased_statistics(
    session: Session, entry: CaseEntry, seeds: range
) -> tuple[list[BlockStatistics], list[str]]:
    """The t statistics of every tested block over ``seeds`` (see the module docstring), and
    the layers whose zero target an estimate misses (:func:`zero_target_blocks`).

    The check uses ``range(profile.mc_seeds)``; other ranges of the same length give independent
    repetitions of the test, which is how its false-positive rate is measured
    (:mod:`kfac_conformance.checks.mc_calibration`).
    """
    statistics, nonzero = [], []
    for request in mc_requests(session, entry):
        blocks = block_estimates(session, entry, request, UNBIASED_SAMPLES, seeds)
        nonzero += zero_target_blocks(blocks, tolerance_for(session.fresh(entry)))
        statistics += [block_statistics(block) for block in blocks if block.target.abs().max() > 0]
    return statistics, nonzero


@dataclass(frozen=True)
class BlockConvergence:
    """One block's relative RMS errors at the two ``CONVERGENCE_SAMPLES``, their ratio, and the
    studentised log ratio against :data:`EXPECTED_RATIO` (``seeds - 1`` degrees of freedom)."""

    layer: str
    flavour: str
    rms: tuple[float, float]
    ratio: float
    z: float
    seeds: int

    def test(self) -> Test:
        return t_test((self.layer, self.flavour), "convergence", self.z, self.seeds - 1)

    @property
    def outside_bounds(self) -> bool:
        low, high = CONVERGENCE_BOUNDS
        return not low <= self.ratio <= high


def block_convergence(few: BlockEstimates, many: BlockEstimates) -> BlockConvergence | None:
    """``None`` for a block without any error at either sample count (nothing converges)."""
    u, v = few.errors.pow(2).sum(1), many.errors.pow(2).sum(1)
    u_mean, v_mean = u.mean().item(), v.mean().item()
    if u_mean == 0 and v_mean == 0:
        return None
    norm = few.target.norm().item()
    rms = (u_mean**0.5 / norm, v_mean**0.5 / norm)
    ratio = (u_mean / v_mean) ** 0.5 if v_mean > 0 else float("inf")
    deviation = 2 * math.log(ratio / EXPECTED_RATIO) if u_mean > 0 else -float("inf")
    if math.isinf(deviation):
        return BlockConvergence(few.layer, few.flavour, rms, ratio, deviation, len(u))
    spread = (u / u_mean - v / v_mean).std().item() / len(u) ** 0.5
    if spread <= 1e-12:
        z = 0.0 if abs(deviation) <= 1e-9 else math.copysign(float("inf"), deviation)
    else:
        z = deviation / spread
    return BlockConvergence(few.layer, few.flavour, rms, ratio, z, len(u))


def convergence_statistics(
    session: Session, entry: CaseEntry, seeds: range
) -> list[BlockConvergence]:
    """Every layer's convergence over ``seeds`` in the first tested flavour (independent
    repetitions use disjoint ranges, as for :func:`unbiased_statistics`)."""
    statistics = []
    # the rate of convergence is a property of the draws, which the flavours share: the first
    # tested flavour suffices (mc/unbiased tests every flavour's scale)
    for request in mc_requests(session, entry)[:1]:
        few, many = (
            block_estimates(session, entry, request, samples, seeds)
            for samples in CONVERGENCE_SAMPLES
        )
        for pair in zip(few, many, strict=True):
            if pair[0].target.abs().max() > 0:
                convergence = block_convergence(*pair)
                if convergence is not None:
                    statistics.append(convergence)
    return statistics


def convergence_tests(statistics: list[BlockConvergence]) -> list[Test]:
    return [block.test() for block in statistics]


def convergence_failures(statistics: list[BlockConvergence]) -> list[BlockConvergence]:
    """The blocks whose ratio is outside :data:`CONVERGENCE_BOUNDS` and whose test Holm
    rejects: an item fails when there is one."""
    rejected = {test.block for test in holm_rejected(convergence_tests(statistics))}
    return [
        block
        for block in statistics
        if (block.layer, block.flavour) in rejected and block.outside_bounds
    ]
