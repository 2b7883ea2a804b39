"""A failure found and shrunk by `kfac-conformance fuzz`: mc/unbiased on asdl.

MC KFAC is biased (scale test): |t| = 24.9 > 8.0 over 32 seeds with mc_samples=4; mean estimate / type-2 along the target = 0.2503

Diagnosis: off by a constant factor x 0.2503?

Drawn: fisher_type='mc', kfac_approx='expand'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate asdl --case docs/repro/fuzz/asdl-A1-mc-unbiased.py:problem --select 'mc/unbiased[fuzz-1cd4e2d39f]'
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = DrawnCase(
    id="fuzz-1cd4e2d39f",
    architecture=[["linear", 1, 2, False]],
    input_shape=(1, 1),
    loss="ce",
    reduction="mean",
    num_batches=1,
    seed=0,
    exact={
        "type-2/expand": ("0",),
        "type-2/reduce": ("0",),
        "empirical/expand": ("0",),
        "empirical/reduce": ("0",),
    },
    per_position=False,
    quick=False,
    statement="drawn by kfac-conformance fuzz; exact layers by exactness_map",
    source="KFAC tutorial (arXiv 2507.05127), exactness tests",
    batch_sizes=(1,),
    dtype="float64",
)
REQUEST = Request(
    fisher_type="mc",
    kfac_approx="expand",
    mc_samples=1,
    seed=0,
    bias="separate",
    approximation="kfac",
)

# the --case factory: rebuilds the problem (the same every call) and carries CASE and REQUEST
problem = DrawnExample(CASE, REQUEST)
