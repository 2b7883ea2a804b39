"""A failure found and shrunk by `kfac-conformance fuzz`: exactness/type-2-reduce on curvlinops.

layer '0' (bias=separate): relative error 1 > tolerance 1e-10

Drawn: fisher_type='type-2', kfac_approx='reduce'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate curvlinops --case docs/repro/fuzz/curvlinops-C1-exactness-type-2-reduce.py:problem --select 'exactness/type-2-reduce[fuzz-5009da2878]'
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = DrawnCase(
    id="fuzz-5009da2878",
    architecture=[["conv2d", 1, 2, 1, 1, 0, 1, False]],
    input_shape=(1, 1, 1, 1),
    loss="mse",
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
    fisher_type="type-2",
    kfac_approx="reduce",
    mc_samples=1,
    seed=0,
    bias="separate",
    approximation="kfac",
)

# the --case factory: rebuilds the problem (the same every call) and carries CASE and REQUEST
problem = DrawnExample(CASE, REQUEST)
