"""The conformance checks for KFAC in MLX, run on the stored fixtures with no torch and no JAX.

``python -m kfac_conformance.mlx --candidate mlx-kfac --report-json reports/mlx-kfac.json``
runs the neutral runner's items (:mod:`kfac_conformance.neutral`: exactness, ``mc/unbiased``,
the invariances and agreement, with the PyTorch suite's check ids and tolerances) against an
MLX candidate and writes a report in the suite's JSON schema, so that
``docs/generate_matrix.py`` shows it as one more column. Install with the optional extra
``mlx`` (``pip install --no-deps -e .`` beside it keeps torch and JAX out entirely).

Here: :mod:`.network` builds the stored networks in MLX, :mod:`.mlx_kfac_candidate` is the
mlx-kfac adapter (a :class:`~kfac_conformance.neutral.candidate.FrameworkCandidate`),
:mod:`.runner` registers the candidates. Only :mod:`.network` and the adapter import MLX, so
the registry imports without it. See ``docs/mlx.md``.
"""
