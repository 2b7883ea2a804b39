"""The contract between a candidate and the suite: problems, requests, claims, conventions,
outcomes, loading a candidate, and the implementer's expected-failure lists. Torch-free at
import (``conventions`` is shared with the runners for other frameworks)."""
