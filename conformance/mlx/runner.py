"""The MLX candidates, registered for the neutral runner (:mod:`kfac_conformance.neutral`).

``python -m kfac_conformance.mlx`` (:mod:`.__main__`) runs the neutral items against a
candidate registered here or given as ``module:Class``; the candidate's module (and with it
MLX) is imported only when the candidate is loaded.
"""

from __future__ import annotations

MODULE = "kfac_conformance.mlx"
CANDIDATES = {"mlx-kfac": "kfac_conformance.mlx.mlx_kfac_candidate:MlxKfacCandidate"}
DEFAULT_CANDIDATE = "mlx-kfac"
