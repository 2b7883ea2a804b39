"""The conformance checks for KFAC in JAX, run on the stored fixtures with no torch in the process.

``python -m kfac_conformance.jax --candidate kfac-jax --report-json reports/kfac-jax.json``
runs the exactness checks of the PyTorch suite and its ``mc/unbiased`` (same check ids,
tolerances, statistics and scale conventions) on the stored canonical cases and writes a
report in the suite's JSON schema, so
that ``docs/generate_matrix.py`` shows the candidate as one more column. Install with the
optional extra ``jax`` (``pip install --no-deps -e .`` beside it keeps torch out entirely).

Modules: :mod:`.stored` reads the fixtures, :mod:`.network` builds their networks in JAX,
:mod:`.candidate` is the contract a JAX candidate meets, :mod:`.kfac_jax_candidate` the
kfac-jax adapter, :mod:`.checks` compares and diagnoses, :mod:`.runner` writes the report.
Nothing here imports torch, and only :mod:`.network` and the adapter import JAX.
"""
