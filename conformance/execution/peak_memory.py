"""The peak memory of a piece of work, for the scale profile's reports.

``tracemalloc`` does not see torch's allocations, so on the CPU this reads the kernel's
high-water mark of the process's resident set (``VmHWM`` in ``/proc/self/status``) after
resetting it to the current resident set (writing ``5`` to ``/proc/self/clear_refs``, Linux
3.11 and later): the peak is the growth of the resident set above what the process held
when the work began, whatever allocated it. On CUDA it is torch's own peak of allocated
device memory, reset the same way. Where neither is possible the peak is unknown (``None``).
"""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK_RSS = "5"


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.bytes`` is the work's peak growth
    of resident memory (CPU) or of allocated device memory (CUDA), or ``None``."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")
        self.bytes: int | None = None
        self._start: int | None = None

    @property
    def method(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
        return "resident set high-water mark (VmHWM) after a reset via /proc/self/clear_refs"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        try:
            _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
        except OSError:
            return self
        self._start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._start is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._start
            return
        peak = _status_kib("VmHWM")
        if peak is not None:
            self.bytes = max(peak - self._start, 0) * 1024

    def describe(self) -> str:
        if self.bytes is None:
            return "peak memory not measurable here"
        return f"peak memory {self.bytes / 2**20:.0f} MiB ({self.method})"
