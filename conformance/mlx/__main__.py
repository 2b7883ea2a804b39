"""``python -m kfac_conformance.mlx``: the checks of stored cases against an MLX candidate."""

from __future__ import annotations

import sys

from kfac_conformance.mlx.runner import CANDIDATES, DEFAULT_CANDIDATE, MODULE
from kfac_conformance.neutral.cli import main

if __name__ == "__main__":
    sys.exit(main(None, MODULE, CANDIDATES, DEFAULT_CANDIDATE))
