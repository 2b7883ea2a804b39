"""The conformance checks for KFAC in JAX, run on the stored fixtures with no torch in the process.

``python -m kfac_conformance.jax --candidate kfac-jax --report-json reports/kfac-jax.json``
runs the exactness checks of the PyTorch suite, its ``mc/unbiased``, three of its
invariances and its agreement checks (against the reference's answers stored with the
agreement cases), with the same check ids, tolerances, statistics and scale conventions, and
``distributed/kfac-<fisher type>`` (the candidate across W = 2 and 4 host devices against its
own single-process answer; :mod:`.devices`, docs/distributed.md), and writes a report in the
suite's JSON schema, so that ``docs/generate_matrix.py`` shows the candidate as one more column. Install with the
optional extra ``jax`` (``pip install --no-deps -e .`` beside it keeps torch out entirely).

Everything but JAX itself is the framework-neutral core :mod:`kfac_conformance.neutral`
(fixtures, comparison, conventions, report). Here: :mod:`.network` builds the stored networks
in JAX, :mod:`.kfac_jax_candidate` is the kfac-jax adapter (a
:class:`~kfac_conformance.neutral.candidate.FrameworkCandidate`), :mod:`.runner` registers the
candidates. Nothing here imports torch, and only :mod:`.network` and the adapter import JAX.
"""
