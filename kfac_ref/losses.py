r"""Loss pieces: the reduction factor, the per-datum criterion and its Hessian factorisation.

Every supported loss is written as the KFAC tutorial's empirical risk (arXiv 2507.05127,
eq. 1)

.. math::  L = R \sum_n c_n, \qquad c_n = \sum_t \ell(f_{n,t}, y_{n,t}),

where ``n`` runs over data, ``t`` over the loss *terms* of one datum (the positions of a
multi-dimensional output) and ``R`` is the reduction factor. The split of ``L`` into ``R``
and ``c`` is the tutorial's (examples "Square loss" and "Cross-entropy loss"):

- MSE: :math:`\ell = \tfrac12 (f - y)^2`, :math:`R = 2` for ``"sum"`` and :math:`2/(NT)` for
  ``"mean"``;
- CE: :math:`\ell = -\log\mathrm{softmax}(f)_y`, :math:`R = 1` or :math:`1/(NT)`;
- BCE-with-logits (not in the tutorial; split the same way, as the Bernoulli negative
  log-likelihood): :math:`\ell = -y\log\sigma(f) - (1-y)\log(1-\sigma(f))`, :math:`R = 1`
  or :math:`1/(NT)`.

Each criterion is then the negative log-likelihood of the model's predictive distribution
(for MSE a unit-variance Gaussian). The GGN does not depend on the split; the empirical Fisher
:math:`R\sum_n \nabla c_n \nabla c_n^\top` does. The outputs are viewed in *terms layout*
``(N, T, C)``: cross-entropy has ``C`` classes per term; MSE and BCE are element-wise, so
every output element is a term with ``C = 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SUPPORTED_LOSSES = (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)


def check_loss_supported(loss_func: nn.Module) -> None:
    """Raise a ``NotImplementedError`` naming what is unsupported about ``loss_func``."""
    if not isinstance(loss_func, SUPPORTED_LOSSES):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LOSSES)
        raise NotImplementedError(
            f"loss {type(loss_func).__name__} is not supported; supported losses: {names}"
        )
    if loss_func.reduction not in ("mean", "sum"):
        raise NotImplementedError(
            f"{type(loss_func).__name__}(reduction={loss_func.reduction!r}) is not supported; "
            "use reduction='mean' or 'sum'"
        )
    if getattr(loss_func, "weight", None) is not None:
        raise NotImplementedError(f"{type(loss_func).__name__} with class weights is not supported")
    if getattr(loss_func, "pos_weight", None) is not None:
        raise NotImplementedError("BCEWithLogitsLoss with pos_weight is not supported")
    if getattr(loss_func, "label_smoothing", 0.0) != 0.0:
        raise NotImplementedError("CrossEntropyLoss with label_smoothing is not supported")


def check_labels(loss_func: nn.Module, output: Tensor, labels: Tensor) -> None:
    """Raise a ``ValueError`` when ``labels`` cannot be the targets of ``output``."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        expected = (output.shape[0], *output.shape[2:])
        if labels.dtype not in (torch.int64, torch.int32) or tuple(labels.shape) != expected:
            raise ValueError(
                "CrossEntropyLoss needs integer class labels of shape "
                f"{expected} for outputs of shape {tuple(output.shape)}, got "
                f"{labels.dtype} labels of shape {tuple(labels.shape)} (probability targets "
                "are not supported)"
            )
        num_classes = output.shape[1]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"class labels must lie in [0, {num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
    elif labels.shape != output.shape:
        raise ValueError(
            f"{type(loss_func).__name__} needs targets of the output's shape "
            f"{tuple(output.shape)}, got {tuple(labels.shape)}"
        )


def to_terms(loss_func: nn.Module, output: Tensor) -> Tensor:
    """View an output of shape ``(N, ...)`` in terms layout ``(N, T, C)``."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return output.movedim(1, -1).reshape(output.shape[0], -1, output.shape[1])
    return output.reshape(output.shape[0], -1, 1)


def from_terms(loss_func: nn.Module, terms: Tensor, output_shape: torch.Size) -> Tensor:
    """Inverse of :func:`to_terms` for tensors with extra leading axes ``(..., N, T, C)``."""
    lead = terms.shape[:-3]
    if isinstance(loss_func, nn.CrossEntropyLoss):
        moved = (output_shape[0], *output_shape[2:], output_shape[1])
        return terms.reshape(*lead, *moved).movedim(-1, len(lead) + 1)
    return terms.reshape(*lead, *output_shape)


def labels_to_terms(loss_func: nn.Module, labels: Tensor) -> Tensor:
    """Labels in terms layout: ``(N, T)`` class indices for CE, ``(N, T, 1)`` otherwise."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return labels.reshape(labels.shape[0], -1)
    return labels.reshape(labels.shape[0], -1, 1)


def labels_from_terms(loss_func: nn.Module, labels: Tensor, output_shape: torch.Size) -> Tensor:
    """Inverse of :func:`labels_to_terms` for labels with extra leading axes ``(..., N, T[, 1])``:
    the layout of ``y`` for outputs of shape ``output_shape``."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        lead = labels.shape[:-2]
        return labels.reshape(*lead, output_shape[0], *output_shape[2:])
    return labels.reshape(*labels.shape[:-3], *output_shape)


def terms_per_datum(loss_func: nn.Module, output: Tensor) -> int:
    return to_terms(loss_func, output).shape[1]


def reduction_factor(loss_func: nn.Module, num_data: int, num_terms: int) -> float:
    r"""``R`` in :math:`L = R \sum_n c_n`: ``k`` for ``"sum"``, :math:`k/(N T)` for ``"mean"``,
    with ``k = 2`` for MSE (its criterion carries a ½ that ``nn.MSELoss`` does not) and 1
    otherwise."""
    k = 2.0 if isinstance(loss_func, nn.MSELoss) else 1.0
    return k if loss_func.reduction == "sum" else k / (num_data * num_terms)


def hessian_sqrt(loss_func: nn.Module, terms: Tensor) -> Tensor:
    r"""Symmetric factor ``S`` of each term's Hessian, :math:`\nabla^2_f \ell = S S^\top`.

    Returns ``(N, T, C, C)``; column ``c`` of ``S[n, t]`` is one backpropagated vector.

    - MSE, :math:`\ell = \tfrac12 (f - y)^2`: :math:`\nabla^2 \ell = 1`, so :math:`S = 1`.
    - BCE, :math:`\ell = -y\log\sigma(f) - (1-y)\log(1-\sigma(f))`:
      :math:`S = \sqrt{\sigma(f)(1-\sigma(f))}`.
    - CE, :math:`\ell = -\log \mathrm{softmax}(f)_y`: :math:`\nabla^2\ell = \mathrm{diag}(p) - pp^\top`
      and :math:`S = \mathrm{diag}(\sqrt p) - p \sqrt p^\top` (the rank-one term is what makes
      :math:`S S^\top` exact, because :math:`\sqrt p^\top \sqrt p = 1`).
    """
    if isinstance(loss_func, nn.MSELoss):
        return torch.ones_like(terms).unsqueeze(-1)
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        p = torch.sigmoid(terms)
        return (p * (1 - p)).sqrt().unsqueeze(-1)
    p = terms.softmax(dim=-1)
    sqrt_p = p.sqrt()
    return torch.diag_embed(sqrt_p) - p.unsqueeze(-1) * sqrt_p.unsqueeze(-2)


def criterion_gradient(loss_func: nn.Module, terms: Tensor, labels: Tensor) -> Tensor:
    r""":math:`\nabla_f \ell(f, y)` per term, ``(..., N, T, C)`` for labels in terms layout.

    MSE: :math:`f - y`; BCE: :math:`\sigma(f) - y`; CE: :math:`\mathrm{softmax}(f) - e_y`.
    """
    if isinstance(loss_func, nn.MSELoss):
        return terms - labels
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        return torch.sigmoid(terms) - labels
    one_hot = nn.functional.one_hot(labels, terms.shape[-1]).to(terms.dtype)
    return terms.softmax(dim=-1) - one_hot


def sample_labels(
    loss_func: nn.Module, terms: Tensor, num_samples: int, generator: torch.Generator
) -> Tensor:
    r"""Draw ``num_samples`` labels per term from the model's predictive distribution.

    The likelihood is the one whose negative log is the criterion (up to constants):
    MSE: :math:`y \sim \mathcal N(f, I)`; BCE: :math:`y \sim \mathrm{Bernoulli}(\sigma(f))`;
    CE: :math:`y \sim \mathrm{Categorical}(\mathrm{softmax}(f))`. Drawn on the CPU from
    ``generator`` so that results do not depend on the device or on the global RNG.
    """
    cpu_terms = terms.detach().cpu()
    shape = (num_samples, *cpu_terms.shape)
    if isinstance(loss_func, nn.MSELoss):
        noise = torch.randn(shape, generator=generator, dtype=cpu_terms.dtype)
        return (cpu_terms + noise).to(terms.device)
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        uniform = torch.rand(shape, generator=generator, dtype=cpu_terms.dtype)
        return (uniform < torch.sigmoid(cpu_terms)).to(terms.dtype).to(terms.device)
    probs = cpu_terms.softmax(dim=-1).reshape(-1, cpu_terms.shape[-1])
    draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    return draws.T.reshape(shape[:-1]).to(terms.device)
