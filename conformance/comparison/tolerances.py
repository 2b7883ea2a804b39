"""Tolerances and the framework-free parts of the diagnosis, shared by the PyTorch and JAX runners.

Nothing here imports torch (or JAX).

Dtypes are named by their string (``"float64"``): ``str(torch.float64)`` is ``"torch.float64"``
and ``numpy.dtype("float64").name`` / ``jax.numpy.float64`` give ``"float64"``, so each runner
maps its own dtype objects onto these names (:func:`dtype_name`).
"""

from __future__ import annotations

from collections.abc import Mapping

# Relative Frobenius error allowed when a block must equal another one up to round-off.
# float64 cases are exact to ~1e-14; the slack covers ill-conditioned sums, not bugs.
ROUND_OFF_TOLERANCE = {
    "float64": 1e-10,
    "float32": 1e-4,
    "float16": 1e-2,
    "bfloat16": 5e-2,
}
# a dtype not in the table (e.g. a complex or future one) is held to the float32 bound
DEFAULT_ROUND_OFF_TOLERANCE = 1e-4

# Relative errors of a float64 result computed in float32: far above float64 round-off, at the
# level of float32's machine epsilon (6e-8) times the growth of a few sums.
FLOAT32_ROUND_OFF = (1e-8, 1e-4)


def float32_round_off(error: float, tolerance: float) -> str | None:
    """The diagnosis of an error at float32 round-off under a far tighter (float64) bound."""
    low, high = FLOAT32_ROUND_OFF
    if tolerance < low and low <= error <= high:
        return (
            f"relative error {error:.2g} is at float32 round-off level although the problem's "
            "tolerance is far tighter: computed in single precision and cast back?"
        )
    return None


def dtype_name(dtype: object) -> str:
    """``"float64"`` for ``torch.float64``, ``numpy.float64``, ``numpy.dtype("float64")``, ..."""
    name = getattr(dtype, "name", None) if not isinstance(dtype, str) else dtype
    if not isinstance(name, str):  # numpy scalar types carry the name on their dtype
        name = str(getattr(dtype, "__name__", dtype))
    return name.removeprefix("torch.")


def round_off_tolerance(dtype: object) -> float:
    return ROUND_OFF_TOLERANCE.get(dtype_name(dtype), DEFAULT_ROUND_OFF_TOLERANCE)


QUANTITY_NAMES = {
    "R": "reduction factor",
    "N": "data",
    "T": "loss terms per datum",
    "S": "shared positions of the layer",
    "K": "batches",
    "W": "devices",
}


def name_factor(factor: float, quantities: Mapping[str, float], rtol: float = 1e-6) -> str | None:
    """Express ``factor`` through the problem's counts, e.g. ``"N*T (N = 12 data, ...)"``.

    ``quantities`` maps a short name (see :data:`QUANTITY_NAMES`) to its value; quantities
    equal to one explain nothing and are ignored. Tries powers 1 and 2 of one quantity and the
    product of two, each also inverted; every match is listed, since counts can coincide.
    """
    order = list(QUANTITY_NAMES) + sorted(set(quantities) - set(QUANTITY_NAMES))
    counts = {name: float(quantities[name]) for name in order if quantities.get(name, 1) != 1}
    names = list(counts)
    expressions: list[tuple[str, tuple[str, ...], float]] = []
    for name in names:
        expressions += [(name, (name,), counts[name]), (f"{name}^2", (name,), counts[name] ** 2)]
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            expressions.append(
                (f"{first}*{second}", (first, second), counts[first] * counts[second])
            )
    matches, used = [], []
    for text, members, value in expressions:
        inverse = f"1/({text})" if "*" in text else f"1/{text}"
        for shown, target in ((text, value), (inverse, 1 / value)):
            if abs(factor - target) <= rtol * abs(target):
                matches.append(shown)
                used += [name for name in members if name not in used]
    if not matches:
        return None
    meaning = ", ".join(
        f"{name} = {counts[name]:g} {QUANTITY_NAMES.get(name, '')}".rstrip() for name in used
    )
    return f"{' or '.join(matches)} ({meaning})"


def layer_pattern(
    errors: Mapping[str, float], tolerance: float, shared_positions: Mapping[str, int]
) -> str | None:
    """Say which layers are wrong when only some are, and whether they are the shared ones."""
    wrong = [layer for layer, error in errors.items() if not error <= tolerance]
    right = [layer for layer in errors if layer not in wrong]
    if not wrong or not right:
        return None
    text = f"wrong only on layers {wrong} (right on {right})"
    shared = [layer for layer in errors if shared_positions.get(layer, 1) > 1]
    if shared and wrong == shared:
        sizes = ", ".join(f"S={shared_positions[layer]}" for layer in wrong)
        text += f": exactly the layers with shared axes ({sizes}); the weight-sharing treatment (expand/reduce) is suspect"
    return text
