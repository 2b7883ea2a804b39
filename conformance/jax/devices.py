"""The host (CPU) devices that the ``distributed/*`` items shard over, asked for before JAX
starts; importable without JAX.

XLA fixes the number of CPU devices when JAX initialises its backend, from
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, and nothing changes it later in the
process. So ``python -m kfac_conformance.jax`` calls :func:`request_host_devices` first, for
the largest W of the items (the other items run on the first device, as with one). A process
that started JAX earlier, or whose own ``XLA_FLAGS`` ask for fewer, has fewer devices: the
items that need more are skipped, and the reason names the flag.
"""

from __future__ import annotations

import os

HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def request_host_devices(count: int) -> None:
    """Ask XLA for ``count`` CPU devices, unless ``XLA_FLAGS`` already sets a number (kept)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={count}".strip()


def too_few(present: int, world: int) -> str:
    """Why ``world`` devices cannot be had in this process."""
    return (
        f"{world} JAX CPU devices needed, {present} present: set "
        f"XLA_FLAGS={HOST_DEVICE_FLAG}={world} before JAX starts "
        "(python -m kfac_conformance.jax does)"
    )
