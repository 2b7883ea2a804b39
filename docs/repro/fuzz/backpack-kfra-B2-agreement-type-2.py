"""A failure found and shrunk by `kfac-conformance fuzz`: agreement/type-2 on backpack-kfra.

layer '0' (kfac_approx=expand, bias=separate): relative error 0.00721 > tolerance 1e-10

Diagnosis: off by a constant factor x 0.992789: a reduction or convention factor?; wrong only on layers ['0'] (right on ['2'])

Drawn: fisher_type='type-2', kfac_approx='expand'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate backpack-kfra --case docs/repro/fuzz/backpack-kfra-B2-agreement-type-2.py:problem --select 'agreement/type-2[fuzz-97cd153f4d]'
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = DrawnCase(
    id="fuzz-97cd153f4d",
    architecture=[["linear", 1, 1, False], ["tanh"], ["linear", 1, 2, False]],
    input_shape=(2, 1),
    loss="ce",
    reduction="mean",
    num_batches=1,
    seed=0,
    exact={},
    per_position=False,
    quick=False,
    statement="drawn by kfac-conformance fuzz; exact layers by exactness_map",
    source="KFAC tutorial (arXiv 2507.05127), exactness tests",
    batch_sizes=(2,),
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
