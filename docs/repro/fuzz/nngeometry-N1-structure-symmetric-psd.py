"""A failure found and shrunk by `kfac-conformance fuzz`: structure/symmetric-psd on nngeometry.

the candidate raised RuntimeError: expected m1 and m2 to have the same dtype, but got: double != float

Drawn: fisher_type='type-2', kfac_approx='expand'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate nngeometry --case docs/repro/fuzz/nngeometry-N1-structure-symmetric-psd.py:problem --select 'structure/symmetric-psd[fuzz-1cd4e2d39f]'
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
    fisher_type="type-2",
    kfac_approx="expand",
    mc_samples=1,
    seed=0,
    bias="joint",
    approximation="kfac",
)

# the --case factory: rebuilds the problem (the same every call) and carries CASE and REQUEST
problem = DrawnExample(CASE, REQUEST)
