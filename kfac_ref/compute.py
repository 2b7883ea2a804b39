"""The scaffold: forward with hooks, backpropagate the Fisher type's vectors, form the factors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kfac_ref import data_parallel, losses
from kfac_ref import layers as layer_rules
from kfac_ref.backpropagated import FISHER_TYPES, backpropagated_vectors
from kfac_ref.factors import GroupedFactors, KroneckerFactors

BIAS_CHOICES = ("separate", "joint")


def compute_kfac(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    fisher_type: str = "type-2",
    kfac_approx: str = "expand",
    mc_samples: int = 1,
    seed: int = 0,
    bias: str = "separate",
    layers: Sequence[str] | None = None,
    process_group: data_parallel.ProcessGroup | None = None,
) -> dict[str, KroneckerFactors | GroupedFactors]:
    r"""KFAC of :math:`L = R\sum_n c_n` over all batches in ``data``, one entry per layer.

    ``A`` and ``B`` follow :mod:`kfac_ref.layers`; for ``"forward-only"`` the output-gradient
    factor (``B``, or ``A`` of an ``Embedding``: :func:`kfac_ref.layers.in_weight_order`) is
    the identity. A grouped convolution's entry is a
    :class:`~kfac_ref.factors.GroupedFactors`, one Kronecker pair per group.
    The batches are treated as one concatenated batch: sums over data are accumulated and
    normalised once, with the reduction factor of the whole data set.

    ``layers`` names modules as in ``model.named_modules()``; by default every module that
    holds parameters of its own, each of which must be supported. MC labels come from a
    generator seeded with ``seed``; the global RNG is neither used nor changed.

    With a ``process_group`` (``torch.distributed.group.WORLD`` for the default one), ``data``
    is this rank's shard, and every rank returns KFAC of the union of the shards: the sums
    and counts are all-reduced before normalising (:mod:`kfac_ref.data_parallel`), and MC
    draws from a generator seeded with :func:`~kfac_ref.data_parallel.rank_seed`.
    """
    selected, rules = prepare(model, loss_func, fisher_type, kfac_approx, mc_samples, bias, layers)
    seed = data_parallel.rank_seed(seed, process_group)
    factors = input_and_grad_factors(
        model, loss_func, data, selected, rules, fisher_type, mc_samples, seed, bias, process_group
    )
    return {
        name: layer_rules.in_weight_order(rules[name], layer_factors)
        for name, layer_factors in factors.items()
    }


def input_and_grad_factors(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    selected: dict[str, nn.Module],
    rules: dict[str, layer_rules.LayerRule],
    fisher_type: str,
    mc_samples: int,
    seed: int,
    bias: str,
    process_group: data_parallel.ProcessGroup | None = None,
) -> dict[str, KroneckerFactors | GroupedFactors]:
    """Every selected layer's KFAC with ``A`` from its inputs and ``B`` from its output
    gradients, before :func:`kfac_ref.layers.in_weight_order` (``seed``: this rank's)."""
    input_sums: dict[str, Tensor] = {}
    grad_sums: dict[str, Tensor] = {}
    input_counts = dict.fromkeys(selected, 0)
    num_data, num_terms = 0, None

    for batch in forward_backward(
        model, loss_func, data, selected, rules, fisher_type, mc_samples, seed, bias
    ):
        num_data += batch.num_data
        num_terms = batch.num_terms
        for name, positions in batch.inputs.items():
            input_sum, count = rules[name].input_sum(positions)
            _accumulate(input_sums, name, input_sum)
            input_counts[name] += count
        # KFAC needs only their sums: free the positions (a convolution's patches) before the
        # backward passes
        batch.inputs.clear()
        for grad_positions in batch.gradients:
            for name, positions in grad_positions.items():
                _accumulate(grad_sums, name, rules[name].grad_sum(positions))

    _require_data(num_data, process_group)
    input_sums, input_counts, grad_sums, num_data = data_parallel.combine(
        data_parallel.ShardSums(input_sums, input_counts, grad_sums, num_data), process_group
    )
    reduction = losses.reduction_factor(loss_func, num_data, num_terms)
    result = {}
    for name, module in selected.items():
        A = input_sums[name] / input_counts[name]
        if fisher_type == "forward-only":
            size = layer_rules.output_features(module, rules[name])
            B = torch.eye(size, dtype=A.dtype, device=A.device)
        else:
            B = reduction * grad_sums[name]
        if A.ndim == 3:
            B = B.expand(A.shape[0], -1, -1) if fisher_type == "forward-only" else B
        mode = "none" if getattr(module, "bias", None) is None else bias
        result[name] = layer_rules.kronecker_result(A.detach(), B.detach(), mode)
    return result


def _require_data(num_data: int, process_group: data_parallel.ProcessGroup | None) -> None:
    if num_data > 0:
        return
    if process_group is not None:
        raise ValueError(
            "this rank's shard of data holds no data: every rank of the process group needs "
            "at least one datum (its factor sums set the shapes of the collectives)"
        )
    raise ValueError("data holds no batches (or only empty ones): nothing to compute KFAC on")


def prepare(
    model: nn.Module,
    loss_func: nn.Module,
    fisher_type: str,
    kfac_approx: str,
    mc_samples: int,
    bias: str,
    layers: Sequence[str] | None,
) -> tuple[dict[str, nn.Module], dict[str, layer_rules.LayerRule]]:
    """Validate the arguments; the selected layers by name and their rules."""
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
    if bias not in BIAS_CHOICES:
        raise ValueError(f"bias must be one of {BIAS_CHOICES}, got {bias!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    losses.check_loss_supported(loss_func)
    selected = _select_layers(model, layers)
    rules = {name: layer_rules.rule_for(module, kfac_approx) for name, module in selected.items()}
    return selected, rules


class BatchPass(NamedTuple):
    """One batch's forward and backward pass, per layer.

    ``inputs[name]`` are the layer's input positions ``(N, S, d_in)`` (a joint bias's one
    appended); ``gradients`` yields, for each backpropagated vector ``v`` in turn, the output
    gradients ``(1, N, S, d_out)`` of every layer (lazily: one set alive at a time).
    """

    num_data: int
    num_terms: int
    inputs: dict[str, Tensor]
    gradients: Iterator[dict[str, Tensor]]


def forward_backward(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    selected: dict[str, nn.Module],
    rules: dict[str, layer_rules.LayerRule],
    fisher_type: str,
    mc_samples: int,
    seed: int,
    bias: str,
) -> Iterator[BatchPass]:
    """Every non-empty batch's :class:`BatchPass`; MC labels from a generator seeded with
    ``seed``, so that two runs over the same data see the same vectors."""
    generator = torch.Generator().manual_seed(seed)
    for X, y in _batches(data):
        # a model that draws random numbers (dropout) must not advance the caller's RNG
        devices = [X.device] if X.is_cuda else []
        # autograd must record even when the caller is in no_grad or inference mode
        with (
            torch.random.fork_rng(devices),
            torch.inference_mode(False),
            torch.enable_grad(),
            _recording(selected) as recorded,
        ):
            output = model(X)
        losses.check_labels(loss_func, output, y)
        vectors = backpropagated_vectors(loss_func, output, y, fisher_type, mc_samples, generator)
        inputs = {}
        for name, module in selected.items():
            positions = rules[name].input_positions(module, recorded[name][0])
            if bias == "joint" and getattr(module, "bias", None) is not None:
                positions = layer_rules.with_ones(positions)
            inputs[name] = positions
        yield BatchPass(
            output.shape[0],
            losses.terms_per_datum(loss_func, output),
            inputs,
            _gradients(output, vectors, selected, rules, recorded),
        )


def _gradients(output, vectors, selected, rules, recorded) -> Iterator[dict[str, Tensor]]:
    layer_outputs = [recorded[name][1] for name in selected]
    # B is a sum over vectors: one vector at a time keeps a single set of layer gradients
    # alive instead of V of them (and measured faster on convolutions)
    for vector in vectors:
        grads = torch.autograd.grad(output, layer_outputs, vector, retain_graph=True)
        yield {
            name: rules[name].output_positions(module, grad.unsqueeze(0))
            for (name, module), grad in zip(selected.items(), grads, strict=True)
        }


def _accumulate(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    sums[name] = value.detach() if name not in sums else sums[name] + value.detach()


def _batches(data: Iterable[tuple[Tensor, Tensor]]):
    for index, batch in enumerate(data):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(
                f"batch {index} of data must be a pair (X, y), got {type(batch).__name__}"
            )
        X, y = batch
        if not (isinstance(X, Tensor) and isinstance(y, Tensor)):
            raise ValueError(f"batch {index}: X and y must be tensors")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"batch {index}: X has {X.shape[0]} data but y has {y.shape[0]}")
        if X.shape[0] > 0:
            yield X, y


def _select_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if layers is None:
        names = [
            name
            for name, module in modules.items()
            if any(True for _ in module.parameters(recurse=False))
        ]
    else:
        if isinstance(layers, str):
            raise ValueError("layers must be a sequence of module names, not a single string")
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ValueError(f"layers {unknown} are not modules of the model")
        names = list(dict.fromkeys(layers))
    if not names:
        raise ValueError(
            "no layers to compute KFAC for: layers is empty"
            if layers is not None
            else "no layers to compute KFAC for: the model holds no parameters"
        )
    selected = {name: modules[name] for name in names}
    for name, module in selected.items():
        if not isinstance(module, layer_rules.SUPPORTED_LAYERS):
            supported = ", ".join(cls.__name__ for cls in layer_rules.SUPPORTED_LAYERS)
            raise NotImplementedError(
                f"layer {name!r} ({type(module).__name__}) is not supported; supported: {supported}"
            )
        frozen = [
            p for p, param in module.named_parameters(recurse=False) if not param.requires_grad
        ]
        if frozen:
            raise ValueError(f"layer {name!r} has parameters with requires_grad=False: {frozen}")
    return selected


@contextmanager
def _recording(selected: dict[str, nn.Module]):
    """Record each layer's ``(input, output)``; the hooks are removed whatever happens."""
    recorded: dict[str, tuple[Tensor, Tensor]] = {}
    versions: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if name in recorded:
                raise NotImplementedError(
                    f"layer {name!r} is called more than once in one forward pass "
                    "(weight tying); KFAC for shared modules is not supported"
                )
            recorded[name] = (args[0].detach(), output)
            versions[name] = output._version

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in selected.items()]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in selected if name not in recorded]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    # an in-place op on a layer's output would make its recorded gradient the wrong one
    overwritten = [name for name, (_, out) in recorded.items() if out._version != versions[name]]
    if overwritten:
        raise NotImplementedError(
            f"the outputs of layers {overwritten} are modified in place (e.g. ReLU(inplace=True)); "
            "use out-of-place operations"
        )
