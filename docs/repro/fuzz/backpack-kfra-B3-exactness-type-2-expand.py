"""A failure found and shrunk by `kfac-conformance fuzz`: exactness/type-2-expand on backpack-kfra.

the candidate raised RuntimeError: expected scalar type Double but found Float

Drawn: fisher_type='type-2', kfac_approx='expand'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate backpack-kfra --case docs/repro/fuzz/backpack-kfra-B3-exactness-type-2-expand.py:problem --select 'exactness/type-2-expand[fuzz-2de3ea1d52]'
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = DrawnCase(
    id="fuzz-2de3ea1d52",
    architecture=[["linear", 1, 1, False], ["linear", 1, 2, False]],
    input_shape=(1, 1),
    loss="mse",
    reduction="mean",
    num_batches=1,
    seed=0,
    exact={
        "type-2/expand": ("0", "1"),
        "type-2/reduce": ("0", "1"),
        "empirical/expand": ("0", "1"),
        "empirical/reduce": ("0", "1"),
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
    bias="separate",
    approximation="kfac",
)

# the --case factory: rebuilds the problem (the same every call) and carries CASE and REQUEST
problem = DrawnExample(CASE, REQUEST)
