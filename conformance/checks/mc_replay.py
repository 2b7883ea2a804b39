r"""The reference's MC KFAC for many seeds at once: the fast path of the calibrations.

The MC checks call the candidate once per seed, and measuring their false-positive rate takes
hundreds of thousands of such calls. For the reference, what does not depend on the seed (the
forward pass, ``A``, the layer inputs, and the Jacobian of the network's output with respect
to every layer's output) is computed once per problem here; a seed then costs drawing its
labels (``kfac_ref``'s own sampler, its generator seeded as ``kfac_ref`` seeds it) and a few
small products: the gradient at a layer's output for the backpropagated vector ``v`` is
:math:`g = J^\top v`, linear in ``v``. The blocks equal ``kfac_ref``'s up to round-off, and
:func:`verify` checks that on the calibration's first trial before any statistic is counted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfac_conformance.checks.mc_statistics import BlockEstimates
from kfac_conformance.contract.problem import Problem, Request
from kfac_ref import compute, losses
from kfac_ref.backpropagated import backpropagated_vectors
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import in_weight_order, with_ones

# replayed and called blocks must agree to this relative error (float64 round-off, with room)
REPLAY_TOLERANCE = 1e-9


class _Batch:
    """One batch's seed-independent parts: its output and labels, every layer's input
    positions and the Jacobian of the output with respect to the layer's output."""

    def __init__(self, problem: Problem, selected: dict[str, nn.Module], X: Tensor, y: Tensor):
        recorded: dict[str, tuple[Tensor, Tensor]] = {}
        handles = [
            module.register_forward_hook(
                lambda module, args, output, name=name: recorded.__setitem__(
                    name, (args[0].detach(), output)
                )
            )
            for name, module in selected.items()
        ]
        try:
            with torch.enable_grad():
                output = problem.model(X)
        finally:
            for handle in handles:
                handle.remove()
        layer_outputs = [recorded[name][1] for name in selected]
        basis = torch.eye(output.numel(), dtype=output.dtype).reshape(-1, *output.shape)
        columns = [
            torch.autograd.grad(output, layer_outputs, unit, retain_graph=True) for unit in basis
        ]
        self.jacobians = {
            name: torch.stack([column[index] for column in columns]).flatten(start_dim=1)
            for index, name in enumerate(selected)
        }
        self.layer_output_shapes = {name: recorded[name][1].shape for name in selected}
        self.layer_inputs = {name: recorded[name][0] for name in selected}
        self.output, self.labels = output.detach(), y


class ReferenceReplay:
    """``kfac_ref``'s MC KFAC of ``problem`` for the flavour and bias of ``request``."""

    def __init__(self, problem: Problem, request: Request):
        self.loss_func = problem.loss_func
        self.flavour = request.kfac_approx
        self.selected, self.rules = compute.prepare(
            problem.model,
            problem.loss_func,
            "mc",
            request.kfac_approx,
            1,
            request.bias,
            problem.layers,
        )
        self.batches = [_Batch(problem, self.selected, X, y) for X, y in problem.batches]
        self.joint = {
            name: request.bias == "joint" and getattr(module, "bias", None) is not None
            for name, module in self.selected.items()
        }
        self.modes = {
            name: "none" if getattr(module, "bias", None) is None else request.bias
            for name, module in self.selected.items()
        }
        self.positions = [
            {name: self._input_positions(batch, name) for name in self.selected}
            for batch in self.batches
        ]
        sums = [
            [self.rules[name].input_sum(positions[name]) for name in self.selected]
            for positions in self.positions
        ]
        self.A = {
            name: sum(batch_sums[index][0] for batch_sums in sums)
            / sum(batch_sums[index][1] for batch_sums in sums)
            for index, name in enumerate(self.selected)
        }
        num_data = sum(batch.output.shape[0] for batch in self.batches)
        num_terms = losses.terms_per_datum(self.loss_func, self.batches[-1].output)
        self.R = losses.reduction_factor(self.loss_func, num_data, num_terms)

    def _input_positions(self, batch: _Batch, name: str) -> Tensor:
        positions = self.rules[name].input_positions(self.selected[name], batch.layer_inputs[name])
        return with_ones(positions) if self.joint[name] else positions

    def _gradients(self, mc_samples: int, seed: int):
        """Per batch, every layer's output-gradient positions ``(V, N, S, d_out)``."""
        generator = torch.Generator().manual_seed(seed)
        for index, batch in enumerate(self.batches):
            vectors = backpropagated_vectors(
                self.loss_func, batch.output, batch.labels, "mc", mc_samples, generator
            ).flatten(start_dim=1)
            yield (
                index,
                {
                    name: self.rules[name].output_positions(
                        module,
                        (vectors @ batch.jacobians[name]).reshape(
                            len(vectors), *batch.layer_output_shapes[name]
                        ),
                    )
                    for name, module in self.selected.items()
                },
            )

    def kfac_rows(self, mc_samples: int, seeds: range) -> dict[str, Tensor]:
        """Every layer's flattened MC KFAC block per seed, ``(len(seeds), P)``."""
        rows: dict[str, list[Tensor]] = {name: [] for name in self.selected}
        for seed in seeds:
            B: dict[str, Tensor] = {}
            for _, gradients in self._gradients(mc_samples, seed):
                for name, positions in gradients.items():
                    part = self.rules[name].grad_sum(positions)
                    B[name] = part if name not in B else B[name] + part
            for name in self.selected:
                factors = in_weight_order(
                    self.rules[name],
                    KroneckerFactors(self.A[name], self.R * B[name], self.modes[name]),
                )
                rows[name].append(factors.to_dense().flatten())
        return {name: torch.stack(values) for name, values in rows.items()}

    def ekfac_traces(self, mc_samples: int, seeds: range) -> dict[str, Tensor]:
        r"""Every layer's ``tr(EKFAC)`` per seed: :math:`R\sum_{n,v}\|G_{n,v}\|_F^2` with
        :math:`G_{n,v} = \sum_s g_{n,s,v}a_{n,s}^\top` (plus
        :math:`R\sum_{n,v}\|\sum_s g_{n,s,v}\|^2` for a separate bias), the trace of
        ``diag(QᵀFQ)`` in any orthonormal basis (:mod:`kfac_ref.ekfac`)."""
        traces: dict[str, list[float]] = {name: [] for name in self.selected}
        for seed in seeds:
            total = dict.fromkeys(self.selected, 0.0)
            for index, gradients in self._gradients(mc_samples, seed):
                for name, g in gradients.items():
                    a = self.positions[index][name]
                    total[name] += torch.einsum("vnso,nsi->vnoi", g, a).square().sum().item()
                    if self.modes[name] == "separate":
                        total[name] += g.sum(dim=2).square().sum().item()
            for name in self.selected:
                traces[name].append(self.R * total[name])
        return {name: torch.tensor(values, dtype=torch.float64) for name, values in traces.items()}


def verify(replayed: dict[str, Tensor], called: dict[str, Tensor], what: str) -> None:
    """Raise unless every layer's replayed values equal the called ones to round-off."""
    for layer, rows in called.items():
        scale = rows.norm().item()
        difference = (replayed[layer] - rows).norm().item()
        if not difference <= REPLAY_TOLERANCE * scale:
            raise RuntimeError(
                f"the replay of kfac_ref differs from kfac_ref on layer {layer!r} ({what}): "
                f"relative difference {difference / scale:.3g} > {REPLAY_TOLERANCE:g}"
            )


def rows_of(blocks: list[BlockEstimates]) -> dict[str, Tensor]:
    return {block.layer: block.rows for block in blocks}
