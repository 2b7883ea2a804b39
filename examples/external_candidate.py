"""An adapter as a library author writes it: plug a KFAC implementation into the suite.

Run it with::

    kfac-conformance run --candidate examples/external_candidate.py:candidate

Here the "library" is kfac_ref's functional API; replace the body of ``compute`` with calls
into your own code. Capabilities are claimed narrowly on purpose: the checks outside them are
reported as skipped, not failed.
"""

from kfac_conformance import Capabilities, KroneckerFactors, Problem, Request
from kfac_ref import compute_kfac


class LinearOnlyKFAC:
    name = "linear-only-example"
    version = "0.1"
    capabilities = Capabilities(
        layer_types=frozenset({"Linear"}), fisher_types=frozenset({"type-2", "empirical"})
    )

    def compute(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        return compute_kfac(
            problem.model,
            problem.loss_func,
            problem.batches,
            fisher_type=request.fisher_type,
            kfac_approx=request.kfac_approx,
            bias=request.bias,
            layers=problem.layers,
        )


candidate = LinearOnlyKFAC()
