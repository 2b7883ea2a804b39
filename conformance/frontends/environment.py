"""The environment variables the front ends read. Torch-free: the pytest plugin imports it in
every run."""

from __future__ import annotations

import os
from collections.abc import Mapping

# like array-api-tests' ARRAY_API_TESTS_MODULE: the candidate SPEC when no option names one
CANDIDATE_VARIABLE = "KFAC_CONFORMANCE_CANDIDATE"


def candidate_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """The SPEC in :data:`CANDIDATE_VARIABLE`; ``None`` when it is unset or blank."""
    return environ.get(CANDIDATE_VARIABLE, "").strip() or None


CANDIDATE_OPTION_HELP = (
    "registered name (see list-candidates), module:attr or file.py:attr; required, unless "
    f"{CANDIDATE_VARIABLE} names it"
)
NO_CANDIDATE = (
    "no candidate to run: pass --candidate SPEC (a registered name from "
    "'kfac-conformance list-candidates', module:attr or file.py:attr), or set "
    f"{CANDIDATE_VARIABLE}"
)


def chosen_candidate(option: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The SPEC a command runs: ``--candidate`` if given and not blank, else the environment
    variable's; ``None`` when neither names one (the command then exits 2 with
    :data:`NO_CANDIDATE`: an empty CI variable must not test some default)."""
    return (option or "").strip() or candidate_from_environment(environ)
