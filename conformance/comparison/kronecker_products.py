r"""Products of a layer's Kronecker-factored block with a probe, never forming the block.

Over the row-major flattening of a weight ``V`` (``d_out x d_in``, a convolution's kernel
dimensions folded into ``d_in``), :math:`(B\otimes A)\,\mathrm{vec}(V) = \mathrm{vec}(B V A^\top)`,
which costs two matrix products of the factors' sizes. The bias follows the factors'
``bias`` mode (:class:`kfac_ref.factors.KroneckerFactors`): a separate bias block is ``B``;
a joint bias is the weight's extra column, multiplied with ``A``'s last row and column.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kfac_ref.factors import KroneckerFactors


def kronecker_product(factors: KroneckerFactors, probe: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The block of ``factors`` times ``probe`` (the layer's weight, then its bias if any)."""
    _check_probe(factors, probe)
    A, B = factors.A.to(probe[0]), factors.B.to(probe[0])
    weight = probe[0].reshape(probe[0].shape[0], -1)
    if factors.bias == "joint":
        joint = B @ torch.cat([weight, probe[1].unsqueeze(1)], dim=1) @ A.T
        return joint[:, :-1].reshape(probe[0].shape), joint[:, -1]
    weight_product = (B @ weight @ A.T).reshape(probe[0].shape)
    if factors.bias == "none":
        return (weight_product,)
    return weight_product, B @ probe[1]


def _check_probe(factors: KroneckerFactors, probe: tuple[Tensor, ...]) -> None:
    expected = 1 if factors.bias == "none" else 2
    if len(probe) != expected:
        raise ValueError(
            f"factors with bias={factors.bias!r} act on {expected} parameter tensors, "
            f"the layer has {len(probe)}"
        )


def probe_norm(probe: tuple[Tensor, ...]) -> float:
    """The Euclidean norm of the probe over all its tensors."""
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in probe)))


def probe_difference(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(a - b.to(a) for a, b in zip(first, second, strict=True))


def output_side_form(factors: KroneckerFactors, probe: tuple[Tensor, ...]) -> Tensor:
    r"""The matrix ``C`` with :math:`v^\top (B \otimes A)\, v = \langle B, C\rangle` for the
    probe ``v``: ``C = V A V^T`` over the weight (a joint bias as its extra column), plus
    ``b b^T`` for a separate bias. It depends on ``A`` and the probe only, so quadratic forms
    of several blocks that share ``A`` cost one product with ``B`` each."""
    _check_probe(factors, probe)
    A = factors.A.to(probe[0])
    weight = probe[0].reshape(probe[0].shape[0], -1)
    if factors.bias == "joint":
        weight = torch.cat([weight, probe[1].unsqueeze(1)], dim=1)
    form = weight @ A @ weight.T
    if factors.bias == "separate":
        form = form + torch.outer(probe[1], probe[1])
    return form
