"""Helpers shared by the adapters: refusing inputs outside a claim, and packaging results."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from kfac_conformance.contract.outcomes import NotSupported
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.oracle.blocks import reduction_factor
from kfac_ref.factors import EKFACFactors, KroneckerFactors

REFUSAL_PREFIX = "unsupported by"


class Unsupported(NotSupported):
    """The adapter refuses an input outside its library's (honest) claim.

    The message starts with ``"unsupported by <library>:"`` so that reports can tell a
    refusal from a crash.
    """

    def __init__(self, library: str, why: str) -> None:
        super().__init__(f"{REFUSAL_PREFIX} {library}: {why}")


def require(problem: Problem, library: str, layer_types: Iterable[str], losses: Iterable[str]):
    """Raise :class:`Unsupported` for a layer type or loss the library does not implement."""
    layer_types, losses = set(layer_types), set(losses)
    for layer in problem.layers:
        kind = type(problem.model.get_submodule(layer)).__name__
        if kind not in layer_types:
            raise Unsupported(
                library, f"layer {layer!r} is a {kind} (supported: {sorted(layer_types)})"
            )
    loss = type(problem.loss_func).__name__
    if loss not in losses:
        raise Unsupported(library, f"loss {loss} (supported: {sorted(losses)})")


def layer_input_ndims(problem: Problem) -> dict[str, int]:
    """The largest input ``ndim`` each of ``problem.layers`` sees, by one no-grad forward pass.

    The adapter's own forward hooks are removed before returning.
    """
    seen: dict[str, int] = {}
    handles = []
    for layer in problem.layers:

        def hook(module, inputs, layer=layer):
            seen[layer] = max(seen.get(layer, 0), inputs[0].ndim)

        handles.append(problem.model.get_submodule(layer).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for X, _ in problem.batches:
                problem.model(X)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def refuse_shared_linear_inputs(problem: Problem, library: str) -> None:
    """Refuse ``nn.Linear`` layers whose inputs carry extra (shared) axes, ``(N, S, ..., D)``."""
    ndims = layer_input_ndims(problem)
    for layer, ndim in ndims.items():
        if isinstance(problem.model.get_submodule(layer), nn.Linear) and ndim > 2:
            raise Unsupported(
                library,
                f"nn.Linear {layer!r} gets {ndim}-d inputs; only (N, D) inputs are supported "
                "(no shared axes / weight sharing on Linear layers)",
            )


def refuse_shared_outputs(problem: Problem, library: str) -> Tensor:
    """Refuse losses over model outputs with shared axes (anything but ``(N, C)``); return the
    output of the first batch for further checks."""
    X = problem.batches[0][0]
    with torch.no_grad():
        output = problem.model(X)
    if output.ndim != 2:
        raise Unsupported(
            library,
            f"the model output has shape {tuple(output.shape)}; only (N, C) outputs are supported",
        )
    return output


def refuse_dilated_conv2d(problem: Problem, library: str) -> None:
    """Refuse ``nn.Conv2d`` layers with a dilation, which the library does not implement."""
    dilated = [
        layer
        for layer in problem.layers
        if isinstance(module := problem.model.get_submodule(layer), nn.Conv2d)
        and tuple(module.dilation) != (1, 1)
    ]
    if dilated:
        raise Unsupported(library, f"dilated Conv2d layers {dilated}")


def refuse_reduce_on_conv2d(problem: Problem, request: Request, library: str) -> None:
    """Refuse ``kfac_approx="reduce"`` for ``nn.Conv2d`` layers, which the library
    approximates as in KFC (expand) only."""
    if request.kfac_approx != "expand" and any(
        isinstance(problem.model.get_submodule(layer), nn.Conv2d) for layer in problem.layers
    ):
        raise Unsupported(library, "Conv2d is approximated as in KFC (expand) only")


def refuse_reduce_on_convolutions(problem: Problem, request: Request, library: str) -> None:
    """Refuse ``kfac_approx="reduce"`` for convolutions of any dimension, which the library
    approximates as in KFC (expand) only."""
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if request.kfac_approx != "expand" and any(
        isinstance(problem.model.get_submodule(layer), convolutions) for layer in problem.layers
    ):
        raise Unsupported(library, "convolutions are approximated as in KFC (expand) only")


def total_data(problem: Problem) -> int:
    return sum(X.shape[0] for X, _ in problem.batches)


def batch_reduction_factor(loss_func: nn.Module, output: Tensor, labels: Tensor) -> float:
    return reduction_factor(loss_func, output.detach(), labels)


def batch_loader(problem: Problem):
    """A ``DataLoader`` over the concatenated data that yields the problem's batches as they
    are: an explicit ``batch_sampler``, and a private ``torch.Generator`` (a ``DataLoader``
    draws a base seed from the global RNG otherwise)."""
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.cat([X for X, _ in problem.batches])
    y = torch.cat([y for _, y in problem.batches])
    sizes = [X_b.shape[0] for X_b, _ in problem.batches]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]
    return DataLoader(TensorDataset(X, y), batch_sampler=batches, generator=torch.Generator())


def has_bias(problem: Problem, layer: str) -> bool:
    return getattr(problem.model.get_submodule(layer), "bias", None) is not None


def clean(problem: Problem, factor: Tensor) -> Tensor:
    """A detached, contiguous copy in the problem's dtype and device."""
    return factor.detach().to(device=problem.device, dtype=problem.dtype).contiguous().clone()


def package(problem: Problem, A: Tensor, B: Tensor, bias: str) -> KroneckerFactors:
    """Detached, contiguous factors in the problem's dtype and device."""
    return KroneckerFactors(clean(problem, A), clean(problem, B), bias)


def package_ekfac(
    problem: Problem,
    QA: Tensor,
    QB: Tensor,
    S: Tensor,
    bias: str,
    S_bias: Tensor | None = None,
) -> EKFACFactors:
    """Detached, contiguous EKFAC bases and scales in the problem's dtype and device."""
    S_bias = None if S_bias is None else clean(problem, S_bias)
    return EKFACFactors(clean(problem, QA), clean(problem, QB), clean(problem, S), bias, S_bias)


@contextlib.contextmanager
def seeded_global_rng(problem: Problem, seed: int) -> Iterator[None]:
    """Seed the global RNG for a library that samples from it, and restore it afterwards.

    ``torch.random.fork_rng`` is PyTorch's documented way to use the global RNG locally.
    """
    devices = [problem.device] if problem.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
