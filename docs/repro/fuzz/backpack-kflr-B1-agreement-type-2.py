"""A failure found and shrunk by `kfac-conformance fuzz`: agreement/type-2 on backpack-kflr.

layer '0' (kfac_approx=expand, bias=separate): relative error 2.2 > tolerance 1e-10

Diagnosis: off by a constant factor x 3.19766: a reduction or convention factor?; wrong only on layers ['0'] (right on ['2']): exactly the layers with shared axes (S=9); the weight-sharing treatment (expand/reduce) is suspect

Drawn: fisher_type='type-2', kfac_approx='expand'

Reproduce through the catalogue (``problem`` carries the drawn case, with its exactness map,
and the drawn request, so the plan runs on it the properties the fuzzer ran):

    kfac-conformance run --candidate backpack-kflr --case docs/repro/fuzz/backpack-kflr-B1-agreement-type-2.py:problem --select 'agreement/type-2[fuzz-5c68a3765b]'
"""

from kfac_conformance.contract.problem import Request
from kfac_conformance.fuzzing.case_files import DrawnExample
from kfac_conformance.fuzzing.problems import DrawnCase

CASE = DrawnCase(
    id="fuzz-5c68a3765b",
    architecture=[["conv2d", 1, 1, 1, 1, 1, 1, False], ["flatten"], ["linear", 9, 1, False]],
    input_shape=(1, 1, 1, 1),
    loss="mse",
    reduction="mean",
    num_batches=1,
    seed=0,
    exact={"type-2/expand": ("2",), "type-2/reduce": ("2",)},
    per_position=False,
    quick=False,
    statement="drawn by kfac-conformance fuzz; exact layers by exactness_map",
    source="Eschenhagen et al. 2023, KFAC-expand and KFAC-reduce",
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
