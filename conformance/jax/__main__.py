"""``python -m kfac_conformance.jax``: the checks of stored cases against a JAX candidate."""

from __future__ import annotations

import sys

from kfac_conformance.jax.devices import request_host_devices
from kfac_conformance.jax.runner import CANDIDATES, DEFAULT_CANDIDATE, MODULE
from kfac_conformance.neutral.checks import WORLD_SIZES
from kfac_conformance.neutral.cli import main

if __name__ == "__main__":
    # before the candidate's module starts JAX: the distributed items' devices
    request_host_devices(max(WORLD_SIZES))
    sys.exit(main(None, MODULE, CANDIDATES, DEFAULT_CANDIDATE, distributed=True))
