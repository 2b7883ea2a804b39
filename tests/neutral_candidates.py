"""Candidates of the neutral runner written in numpy alone, for tests/test_neutral_core.py.

:class:`StoredReference` answers every request with the reference KFAC stored in the fixtures
(the agreement cases hold it), so it passes agreement by construction; each subclass changes
one thing, and the test says which verdict that must give.
"""

from __future__ import annotations

import numpy as np

from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import TUTORIAL, Conventions
from kfac_conformance.neutral.candidate import Refused
from kfac_conformance.neutral.factors import Factors, per_group
from kfac_conformance.neutral.fixtures import LOSS_CLASSES, StoredCase


class StoredReference:
    name = "stored-reference"
    version = None
    framework = "numpy"
    dtype = "float64"
    conventions: Conventions = TUTORIAL
    bias = "joint"

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        if fisher_type not in case.reference_fisher_types("kfac"):
            return f"no stored reference answer for {fisher_type!r}"
        return None

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> dict[str, Factors]:
        return dict(case.reference_kfac(fisher_type, flavour, self.bias))


class SeparateBias(StoredReference):
    name = "stored-reference-separate-bias"
    bias = "separate"


class DoubledB(StoredReference):
    """Twice the reference: a wrong scale."""

    name = "doubled-b"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        return {
            layer: per_group(f, lambda g: Factors(g.A, 2 * g.B, g.bias))
            for layer, f in result.items()
        }


class ConvertsToTutorialScale(StoredReference):
    """The reference times ``1/R`` (the ``sum-nll`` convention), declared: passes."""

    name = "sum-nll-declared"
    conventions = Conventions(curvature="sum-nll", empirical_fisher="sum-nll")

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        factor = 1.0 if fisher_type == "forward-only" else 1.0 / case.counts["R"]
        return {
            layer: per_group(f, lambda g: Factors(g.A, factor * g.B, g.bias))
            for layer, f in result.items()
        }


class Float32(StoredReference):
    """The reference rounded to float32, declared as float32: held to the float32 bound."""

    name = "float32"
    dtype = "float32"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        return {
            layer: per_group(
                f, lambda g: Factors(g.A.astype(np.float32), g.B.astype(np.float32), g.bias)
            )
            for layer, f in result.items()
        }


class Float32DeclaredFloat64(Float32):
    """The same float32 answers, declared as float64: held to 1e-10, they fail."""

    name = "float32-declared-float64"
    dtype = "float64"


class RefusesReduce(StoredReference):
    name = "refuses-reduce"

    def refusal(self, case, fisher_type, flavour):
        return "no reduce" if flavour == "reduce" else super().refusal(case, fisher_type, flavour)


class Crashes(StoredReference):
    name = "crashes"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        raise RuntimeError("boom")


class RefusesInCompute(StoredReference):
    name = "refuses-in-compute"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        raise Refused("decided late")


class LacksFramework:
    """Declares no ``framework`` and no ``dtype``: not a FrameworkCandidate."""

    name = "lacks-framework"
    version = None
    conventions = TUTORIAL

    def refusal(self, case, fisher_type, flavour):
        return None

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        return {}


class McIsItsExpectation(StoredReference):
    """MC answered with its expectation, the reference's type-2 KFAC: unbiased, no variance."""

    name = "mc-is-its-expectation"

    def refusal(self, case, fisher_type, flavour):
        return super().refusal(case, "type-2" if fisher_type == "mc" else fisher_type, flavour)

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        asked = "type-2" if fisher_type == "mc" else fisher_type
        return dict(case.reference_kfac(asked, flavour, self.bias))


class McDoubled(McIsItsExpectation):
    name = "mc-doubled"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        return {
            layer: per_group(f, lambda g: Factors(g.A, 2 * g.B, g.bias))
            for layer, f in result.items()
        }


class NumpyEmpiricalKFAC:
    """Empirical KFAC computed in numpy from the stored data, for networks of ``linear`` layers
    and elementwise activations on ``(N, D)`` inputs: ``A = (1/N) sum_n a_n a_n^T`` (the ones
    appended last for a joint bias), ``B = R sum_n g_n g_n^T`` with ``g_n`` the gradient of the
    tutorial's ``c_n`` at the layer's output. Refuses everything else."""

    name = "numpy-empirical-kfac"
    version = None
    framework = "numpy"
    dtype = "float64"
    conventions = TUTORIAL
    ACTIVATIONS = {
        "tanh": (np.tanh, lambda y: 1 - y**2),
        "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda y: y * (1 - y)),
        "relu": (lambda x: np.maximum(x, 0), lambda y: (y > 0).astype(y.dtype)),
    }

    def refusal(self, case, fisher_type, flavour):
        kinds = {spec[0] for spec in case.architecture}
        if fisher_type != "empirical" or not kinds <= {"linear", *self.ACTIVATIONS}:
            return "only the empirical Fisher of linear layers and activations"
        if any(X.ndim != 2 for X, _ in case.batches):
            return "only (N, D) inputs"
        return None

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        return self.normalised(self.sums(case), case.counts["R"])

    @staticmethod
    def normalised(sums: dict, R: float) -> dict[str, Factors]:
        return {
            layer: Factors(A / count, R * G, bias) for layer, (A, count, G, bias) in sums.items()
        }

    def sums(self, case) -> dict[str, tuple[np.ndarray, int, np.ndarray, str]]:
        """Per layer: the sum of ``a_n a_n^T``, the number of data, the sum of ``g_n g_n^T``
        and the bias mode."""
        X = np.concatenate([X for X, _ in case.batches])
        y = np.concatenate([y for _, y in case.batches])
        inputs, outputs, f = {}, [], X
        for index, spec in enumerate(case.architecture):
            layer = str(index)
            if spec[0] == "linear":
                inputs[layer] = f
                bias = case.parameter(layer, "bias")
                f = f @ case.parameter(layer, "weight").T + (0 if bias is None else bias)
            else:
                f = self.ACTIVATIONS[spec[0]][0](f)
            outputs.append(f)
        gradient = self._loss_gradient(case.loss, f, y)
        result = {}
        for index in reversed(range(len(case.architecture))):
            spec, layer = case.architecture[index], str(index)
            if spec[0] == "linear":
                a = inputs[layer]
                if case.parameter(layer, "bias") is not None:
                    a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
                bias = "joint" if a.shape[1] > inputs[layer].shape[1] else "none"
                result[layer] = (a.T @ a, a.shape[0], gradient.T @ gradient, bias)
                gradient = gradient @ case.parameter(layer, "weight")
            else:
                gradient = gradient * self.ACTIVATIONS[spec[0]][1](outputs[index])
        return result

    @staticmethod
    def _loss_gradient(loss, f, y):
        """Per datum, the gradient of the tutorial's criterion at the output."""
        if loss == "mse":
            return f - y
        if loss == "bce":
            return 1 / (1 + np.exp(-f)) - y
        p = np.exp(f - f.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        return p


class ReductionIgnored(NumpyEmpiricalKFAC):
    """``R`` of a summed loss whatever the reduction: wrong on every mean-reduced case."""

    name = "numpy-empirical-kfac-reduction-ignored"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        summed = (2.0 if case.loss == "mse" else 1.0) / case.counts["R"]
        return {layer: Factors(f.A, summed * f.B, f.bias) for layer, f in result.items()}


class OrderWeighted(NumpyEmpiricalKFAC):
    """Scales layer 0's block by a function of the first datum: depends on the order of the
    data, not on how it is batched."""

    name = "numpy-empirical-kfac-order-weighted"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        first = case.batches[0][0][0]
        return {
            layer: Factors(f.A * (1 + abs(float(first[0]))), f.B, f.bias) if layer == "0" else f
            for layer, f in result.items()
        }


class NumpyDataParallel(NumpyEmpiricalKFAC):
    """Data-parallel empirical KFAC as ``kfac_ref`` does it: each device's sums of outer
    products and its count of data, summed over the devices (an all-reduce), normalised once
    with the reduction factor of all the data. Right on every device."""

    name = "numpy-data-parallel"

    def compute_on_devices(self, shards, fisher_type, flavour):
        return [self.normalised(*self.all_reduced(shards))] * len(shards)

    def all_reduced(self, shards) -> tuple[dict, float]:
        """The sums of every device, summed, and the reduction factor of all the data."""
        each = [self.sums(shard) for shard in shards]
        summed = {
            layer: (*(sum(sums[layer][part] for sums in each) for part in range(3)), bias)
            for layer, (*_, bias) in each[0].items()
        }
        case = shards[0]
        N = sum(shard.num_data for shard in shards)
        loss = LOSS_CLASSES[case.loss]
        return summed, conventions.reduction_factor(loss, case.reduction, N, case.counts["T"])


class DevicesNotCombined(NumpyDataParallel):
    """Each device answers for its own shard."""

    name = "numpy-devices-not-combined"

    def compute_on_devices(self, shards, fisher_type, flavour):
        return [self.compute(shard, fisher_type, flavour) for shard in shards]


class GradientSumsNotCombined(NumpyDataParallel):
    """The input sums and counts all-reduced, the gradient sums not: ``B`` of the device's
    shard alone, normalised with the reduction factor of all the data."""

    name = "numpy-gradient-sums-not-combined"

    def compute_on_devices(self, shards, fisher_type, flavour):
        summed, R = self.all_reduced(shards)
        answers = []
        for shard in shards:
            own = self.sums(shard)
            mixed = {
                layer: (A, count, own[layer][2], bias)
                for layer, (A, count, _, bias) in summed.items()
            }
            answers.append(self.normalised(mixed, R))
        return answers


class AnswersForOneDevice(NumpyDataParallel):
    """One answer, whatever the number of devices: malformed."""

    name = "numpy-answers-for-one-device"

    def compute_on_devices(self, shards, fisher_type, flavour):
        return super().compute_on_devices(shards, fisher_type, flavour)[:1]
