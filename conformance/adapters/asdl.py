"""ASDL (``asdfghjkl``, imported as ``asdl``) Kronecker-factored Fisher as a candidate.

Usage follows ASDL's ``FisherMaker`` interface::

    config = FisherConfig(fisher_type=..., fisher_shapes=[SHAPE_KRON], loss_type=...,
                          data_size=N, n_mc_samples=M, seed=seed)
    maker = get_fisher_maker(model, config)
    for i, (X, y) in enumerate(batches):
        dy = maker.setup_model_call(model, X)
        maker.setup_loss_call(loss_func, dy, y)
        maker.forward_and_backward(accumulate=i > 0)

and the factors are ``module.fisher.kron.A`` (input side) and ``.B`` (output side); the
weight block is ``kron(B, A)`` over ``weight.flatten()`` and the bias block is ``B``
(separate bias only).

Conventions (asdfghjkl 0.1a5, from its source and verified numerically):

- ``FISHER_EXACT`` is type-2, ``FISHER_MC`` Monte Carlo, ``FISHER_EMP`` empirical. ASDL has
  no forward-only KFAC.
- Normalisation, declared as conventions (``kfac_conformance.contract.conventions``) and converted by
  the harness: ASDL averages over the ``data_size`` data, ``(1/N) sum_n``, the Fisher of the
  per-datum negative log-likelihood; for ``LOSS_MSE`` that is the Gaussian NLL
  ``1/2 ||f - y||^2`` (output Hessian ``I``; MC labels ``y ~ N(f, I)``), for
  ``LOSS_CROSS_ENTROPY`` the categorical NLL (``curvature="mean-nll"``). The empirical Fisher
  averages the outer products of the gradients of the per-datum loss as ``nn.MSELoss`` sums
  it, ``||f - y||^2`` (``empirical_fisher="mean-squared-error"``). These are legitimate
  normalisations (a Fisher of a likelihood, averaged over data), not differences in the
  approximation; the adapter returns ASDL's factors unscaled.
- Only MSE and cross-entropy (ASDL's ``loss_type``), on ``(N, C)`` outputs: ASDL's Fisher
  loops index ``logits[:, i]`` (MSE) or flatten all but the last axis (CE), so feature-map
  or per-position outputs in PyTorch's class-on-dim-1 layout are outside its interface and
  are refused, as are ``nn.Linear`` layers on inputs with shared axes (ASDL treats the
  extra axes as data without the ``1/S`` of KFAC-expand; see ``docs/findings.md``).
- ``nn.Conv2d`` is KFAC-expand (KFC); only ``kfac_approx="expand"`` is claimed.
- ``nn.Embedding``: ASDL's ``kron.A`` is the ``num_embeddings``-square factor of the index
  counts and ``kron.B`` the ``embedding_dim``-square one of the output gradients. Over the
  embedding's ``weight.flatten()`` (``num_embeddings x embedding_dim``, the transpose of a
  Linear layer's) the block is ``kron(kron.A, kron.B)``, so the adapter hands them over
  swapped, as the suite's ``kron(B, A)``. ASDL's ``A`` is in float32 whatever the model's
  dtype (the counts times ``1/data_size``: relative errors near 1e-8), and ASDL raises on one index per datum, ``(N,)`` inputs
  (``torch.bincount`` of each datum's 0-d index tensor), so those are refused. Index tensors
  ``(N, S)`` are shared axes (not claimed): ASDL squares each datum's summed counts, with
  cross terms between positions, which is classic KFAC only for ``S = 1`` (findings A2).
- MC: ASDL seeds the global RNG with ``seed`` on every ``forward_and_backward``; the adapter
  runs it inside ``torch.random.fork_rng`` so the caller's RNG state is preserved.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from kfac_conformance.adapters._common import (
    Unsupported,
    has_bias,
    layer_input_ndims,
    package,
    refuse_dilated_conv2d,
    refuse_reduce_on_convolutions,
    refuse_shared_linear_inputs,
    refuse_shared_outputs,
    require,
    seeded_global_rng,
    total_data,
)
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import KroneckerFactors

LIBRARY = "ASDL"
LAYER_TYPES = frozenset({"Linear", "Conv2d", "Embedding"})
LOSSES = frozenset({"MSELoss", "CrossEntropyLoss"})


class AsdlCandidate:
    name = "asdl"
    capabilities = Capabilities(
        layer_types=LAYER_TYPES,
        losses=LOSSES,
        fisher_types=frozenset({"type-2", "mc", "empirical"}),
        flavours=frozenset({"expand"}),
        bias_modes=frozenset({"separate"}),
        weight_sharing=False,
        conventions=Conventions(curvature="mean-nll", empirical_fisher="mean-squared-error"),
    )

    requires = Requirement(("asdfghjkl",), "asdl")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def _check(self, problem: Problem, request: Request) -> None:
        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        if request.fisher_type not in self.capabilities.fisher_types:
            raise Unsupported(LIBRARY, f"fisher_type {request.fisher_type!r}")
        if request.bias != "separate":
            raise Unsupported(LIBRARY, "only a separate bias block is computed")
        refuse_reduce_on_convolutions(problem, request, LIBRARY)
        # its conv2d Fisher raises "conv2d.dilation has to be (1, 1)" (found by the fuzzer)
        refuse_dilated_conv2d(problem, LIBRARY)
        refuse_shared_linear_inputs(problem, LIBRARY)
        refuse_shared_outputs(problem, LIBRARY)
        refuse_single_index_embeddings(problem)

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self._check(problem, request)
        if request.fisher_type == "mc":
            with seeded_global_rng(problem, request.seed):
                factors = self._factors(problem, request)
        else:
            factors = self._factors(problem, request)
        return factors

    def _factors(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        from asdl import FisherConfig, get_fisher_maker
        from asdl.grad_maker import LOSS_CROSS_ENTROPY, LOSS_MSE
        from asdl.matrices import FISHER_EMP, FISHER_EXACT, FISHER_MC, SHAPE_KRON

        is_mse = isinstance(problem.loss_func, nn.MSELoss)
        N = total_data(problem)
        config = FisherConfig(
            fisher_type={"type-2": FISHER_EXACT, "mc": FISHER_MC, "empirical": FISHER_EMP}[
                request.fisher_type
            ],
            fisher_shapes=[SHAPE_KRON],
            loss_type=LOSS_MSE if is_mse else LOSS_CROSS_ENTROPY,
            data_size=N,
            n_mc_samples=request.mc_samples if request.fisher_type == "mc" else 1,
            seed=request.seed if request.fisher_type == "mc" else None,
        )
        maker = get_fisher_maker(problem.model, config)
        for index, (X, y) in enumerate(problem.batches):
            dy = maker.setup_model_call(problem.model, X)
            maker.setup_loss_call(problem.loss_func, dy, y)
            maker.forward_and_backward(accumulate=index > 0)

        result = {}
        for layer in problem.layers:
            module = problem.model.get_submodule(layer)
            kron = module.fisher.kron
            if isinstance(module, nn.Embedding):  # the weight is (inputs x outputs)
                result[layer] = package(problem, kron.B, kron.A, "none")
                continue
            bias = "separate" if has_bias(problem, layer) else "none"
            result[layer] = package(problem, kron.A, kron.B, bias)
        return result


def refuse_single_index_embeddings(problem: Problem) -> None:
    """Refuse ``nn.Embedding`` layers on ``(N,)`` indices, on which ASDL's factor raises."""
    ndims = layer_input_ndims(problem)
    single = [
        layer
        for layer, ndim in ndims.items()
        if isinstance(problem.model.get_submodule(layer), nn.Embedding) and ndim == 1
    ]
    if single:
        raise Unsupported(
            LIBRARY,
            f"Embedding layers {single} on (N,) indices (its factor calls torch.bincount on "
            "each datum's 0-d index tensor and raises); only (N, S) indices are computed",
        )
