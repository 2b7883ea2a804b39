r"""Exact per-layer curvature blocks by automatic differentiation of the whole model.

Conventions: the KFAC tutorial's, stated once in :mod:`kfac_conformance.contract.conventions`. The loss
over all data is :math:`L = R\sum_n c_n` (tutorial eq. 1), with the per-datum criterion
:math:`c_n` and the reduction factor ``R`` split as the tutorial splits them (MSE
:math:`c = \tfrac12\|f-y\|^2` with :math:`R = 2` or :math:`2/(N\dim Y)`; CE and BCE the
negative log-likelihood with :math:`R = 1` or :math:`1/(N\dim Y)`). For a layer's parameters
:math:`\theta` and the Jacobian :math:`J_n = \partial f(x_n)/\partial\theta`:

- GGN (= type-2 Fisher for MSE, CE and BCE): :math:`G = \sum_n J_n^\top (\nabla^2_{f_n} L) J_n
  = R\sum_n J_n^\top \nabla^2 c_n J_n`;
- empirical Fisher: :math:`E = R\sum_n \nabla_\theta c_n\nabla_\theta c_n^\top
  = \frac1R\sum_n \nabla_\theta \ell_n \nabla_\theta \ell_n^\top` with the per-datum
  contribution :math:`\ell_n = R c_n` to ``L``, which autograd gives whatever the split. Other
  scalings in use are declared conventions, converted by the harness;
- MC Fisher for given labels :math:`\hat y_{n,m}`, ``M`` per datum:
  :math:`\frac{R}{M}\sum_{n,m}\nabla_\theta c_n(\hat y_{n,m})\nabla_\theta c_n(\hat y_{n,m})^\top`.

The blocks are over the layer's parameters in ``named_parameters`` order, each flattened
row-major. The oracle knows nothing of KFAC; it only assumes that the loss treats data
independently, so that :math:`\nabla^2_f L` is block-diagonal over data. Every block is
:math:`\sum_n (J_n^\top V_n)(J_n^\top V_n)^\top` with :math:`V_nV_n^\top` the curvature in
output space (``K`` columns for the GGN, one for the empirical Fisher, ``M`` for the MC
Fisher). The products :math:`J_n^\top v` are batched VJPs (``vmap`` over data and over the
columns of :math:`V_n`), chunked over data so that memory stays bounded, and only each layer's
own block is formed; no Python loop runs over parameter coordinates.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from kfac_conformance.contract import conventions

CURVATURES = ("ggn", "empirical", "mc")
_CHUNK_ELEMENTS = 2**24
_TILES = 8
_NULL_EIGENVALUE = 1e-12


def reduction_factor(loss_func: nn.Module, output: Tensor, labels: Tensor) -> float:
    """The tutorial's ``R`` (see :func:`kfac_conformance.contract.conventions.reduction_factor`): for
    ``"mean"`` it divides by the number of elements the unreduced loss has."""
    unreduced = copy.copy(loss_func)
    unreduced.reduction = "none"
    elements = unreduced(output, labels).numel()
    num_data = output.shape[0]
    return conventions.reduction_factor(
        type(loss_func).__name__, loss_func.reduction, num_data, elements // max(num_data, 1)
    )


def layer_parameter_names(model: nn.Module, layer: str) -> list[str]:
    module = model.get_submodule(layer)
    return [
        f"{layer}.{name}" if layer else name for name, _ in module.named_parameters(recurse=False)
    ]


def exact_blocks(
    model: nn.Module,
    loss_func: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    layers: Sequence[str],
    curvature: str = "ggn",
    sampled_labels: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Exact blocks of ``curvature`` for each layer, over all ``batches`` as one data set.

    ``sampled_labels`` (for ``"mc"``) holds one tensor per batch of shape ``(M, *y.shape)``.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if curvature == "mc" and sampled_labels is None:
        raise ValueError("the MC Fisher needs sampled_labels, one (M, *y.shape) tensor per batch")
    if curvature == "mc" and (
        len(sampled_labels) != len(batches)
        or any(
            s.ndim != y.ndim + 1 or s.shape[1:] != y.shape
            for s, (_, y) in zip(sampled_labels, batches, strict=False)
        )
    ):
        raise ValueError(
            "sampled_labels must hold one tensor of shape (M, *y.shape) per batch, got shapes "
            f"{[tuple(s.shape) for s in sampled_labels]} for labels {[tuple(y.shape) for _, y in batches]}"
        )
    if sum(len(x) for x, _ in batches) == 0:
        raise ValueError("the batches hold no data: the blocks of an empty data set are undefined")
    X = torch.cat([x for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    names = {layer: layer_parameter_names(model, layer) for layer in layers}
    all_names = [name for layer_names in names.values() for name in layer_names]
    params = {name: p.detach() for name, p in model.named_parameters()}
    chosen = {name: params[name] for name in all_names}

    with torch.no_grad():
        output = functional_call(model, params, (X,))
    R = reduction_factor(loss_func, output, y)
    output_vectors = _output_space_factors(loss_func, output, y, R, curvature, sampled_labels)

    def output_of_one(theta: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, {**params, **theta}, (x.unsqueeze(0),)).squeeze(0)

    def pulled_back(theta: dict[str, Tensor], x: Tensor, vectors: Tensor) -> dict[str, Tensor]:
        r""":math:`J_n^\top v` for every row ``v`` of ``vectors``, by one batched VJP."""
        _, pullback = vjp(lambda t: output_of_one(t, x), theta)
        return vmap(pullback)(vectors)[0]

    N, num_vectors = output.shape[0], output_vectors.shape[-1]
    # (N, v, *output.shape[1:]): datum n's vectors are the columns of V_n
    vectors = output_vectors.transpose(1, 2).reshape(N, num_vectors, *output.shape[1:])
    sizes = {layer: sum(chosen[name].numel() for name in names[layer]) for layer in layers}
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_vectors * sum(sizes.values())))
    blocks = {layer: output.new_zeros(size, size) for layer, size in sizes.items()}
    for start in range(0, N, chunk):
        stop = min(start + chunk, N)
        pulled = vmap(pulled_back, in_dims=(None, 0, 0))(chosen, X[start:stop], vectors[start:stop])
        for layer, layer_names in names.items():
            # rows J_n^T v over (n, v); the block is their sum of outer products
            rows = torch.cat(
                [pulled[name].reshape((stop - start) * num_vectors, -1) for name in layer_names],
                dim=1,
            )
            _add_upper_tiles(blocks[layer], rows)
    for block in blocks.values():
        _mirror_upper_tiles(block)
    return blocks


def _tile(size: int) -> int:
    return -(-size // _TILES)


def _add_upper_tiles(block: Tensor, rows: Tensor) -> None:
    """``block += rows^T rows`` on the tiles on and above the diagonal only.

    The block is symmetric, so the tiles below the diagonal are copies (``_mirror_upper_tiles``);
    skipping them saves almost half of the dominant ``2 N v P^2`` flops.
    """
    step = _tile(block.shape[0])
    for first in range(0, block.shape[0], step):
        last = first + step
        block[first:last, first:].addmm_(rows[:, first:last].T, rows[:, first:])


def _mirror_upper_tiles(block: Tensor) -> None:
    step = _tile(block.shape[0])
    for first in range(0, block.shape[0], step):
        last = first + step
        block[last:, first:last] = block[first:last, last:].T


def _output_space_factors(
    loss_func: nn.Module,
    output: Tensor,
    labels: Tensor,
    R: float,
    curvature: str,
    sampled_labels: Sequence[Tensor] | None,
) -> Tensor:
    """``V_n`` with ``(N, K, v)`` such that the block is :math:`\\sum_n J_n^\\top V_n V_n^\\top J_n`."""
    N, K = output.shape[0], output[0].numel()

    def loss_gradient(f: Tensor, target: Tensor) -> Tensor:
        return grad(lambda out: loss_func(out, target))(f).reshape(N, K)

    if curvature == "ggn":
        # H_n = d^2 L / df_n^2, one row k for all data at once: block-diagonality over data
        _, pullback = vjp(lambda f: grad(lambda out: loss_func(out, labels))(f), output)
        directions = torch.eye(K, dtype=output.dtype, device=output.device)
        directions = directions.reshape(K, 1, *output.shape[1:]).expand(K, *output.shape)
        rows = vmap(pullback)(directions)[0].reshape(K, N, K)
        hessians = rows.transpose(0, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh((hessians + hessians.transpose(1, 2)) / 2)
        # directions of zero curvature for every datum (CE's constant shift) contribute nothing
        kept = (eigenvalues > _NULL_EIGENVALUE * eigenvalues.abs().max()).any(dim=0)
        factors = eigenvectors * eigenvalues.clamp(min=0).sqrt().unsqueeze(1)
        return factors[:, :, kept] if kept.any() else factors[:, :, :1]
    if curvature == "empirical":
        return (loss_gradient(output, labels) / R**0.5).unsqueeze(-1)
    samples = torch.cat(list(sampled_labels), dim=1)
    M = samples.shape[0]
    gradients = vmap(loss_gradient, in_dims=(None, 0))(output, samples)  # (M, N, K)
    return gradients.permute(1, 2, 0) / (R * M) ** 0.5
