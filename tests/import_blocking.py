"""Python source that makes packages unimportable in a child process, for the tests that prove
a part of the suite runs without them (run it first, e.g. ``python -c PRELUDE + code``)."""

from __future__ import annotations


def blocking_prelude(*packages: str) -> str:
    """A prelude after which importing any of ``packages`` (or a submodule) raises ImportError."""
    return f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {packages!r}:
            raise ImportError(f"{{name}} is blocked in this process")
        return None

sys.meta_path.insert(0, Blocked())
"""
