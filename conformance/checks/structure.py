"""Structure: every factor is symmetric positive semi-definite, for every Fisher type claimed."""

from __future__ import annotations

import torch

from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    CheckSkipped,
    FuzzProperty,
    Measurement,
)
from kfac_conformance.checks.drawn import always
from kfac_conformance.contract.problem import FISHER_TYPES, Request
from kfac_conformance.execution.session import Session, tolerance_for
from kfac_ref.factors import groups_of


def _run(session: Session, entry: CaseEntry):
    measurement, ran = Measurement(), False
    for fisher_type in FISHER_TYPES:
        modes = session.supported_bias_modes(entry, fisher_type, "expand")
        if not modes:
            continue
        problem = session.fresh(entry)
        result = session.call(problem, Request(fisher_type, "expand", mc_samples=2, bias=modes[0]))
        tolerance = tolerance_for(problem)
        for layer, factors in result.items():
            groups = groups_of(factors)
            for group, name, factor in (
                (g, name, factor)
                for g, one in enumerate(groups)
                for name, factor in (("A", one.A), ("B", one.B))
            ):
                matrix = factor.detach().double().cpu()
                scale = matrix.abs().max().item() or 1.0
                asymmetry = (matrix - matrix.T).abs().max().item() / scale
                measurement.record(asymmetry, tolerance)
                of_group = f", group {group}" if len(groups) > 1 else ""
                where = f"layer {layer!r}{of_group}, factor {name}, fisher_type={fisher_type!r}"
                if asymmetry > tolerance:
                    raise CheckFailed(
                        f"{where}: not symmetric (relative asymmetry {asymmetry:.3g})",
                        asymmetry,
                        tolerance,
                    )
                lowest = torch.linalg.eigvalsh((matrix + matrix.T) / 2).min().item() / scale
                if lowest < -tolerance:
                    raise CheckFailed(
                        f"{where}: not positive semi-definite (eigenvalue {lowest:.3g} x max entry)",
                        -lowest,
                        tolerance,
                    )
        ran = True
    if not ran:
        raise CheckSkipped(session.why_unclaimed(FISHER_TYPES))
    return measurement


CHECKS = [
    Check(
        id="structure/symmetric-psd",
        statement="A and B are symmetric positive semi-definite (shape, dtype, device and finiteness are validated on every call)",
        source="definition: both factors are sums of outer products",
        kind="guard",
        measure=_run,
        fuzz=FuzzProperty(always, order=2),
    )
]
