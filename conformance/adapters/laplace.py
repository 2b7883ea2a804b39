"""laplace-torch's ``KronLaplace``: the Kronecker-factored loss Hessian it hands to its users.

Usage follows laplace-torch's documented flow: ``la = Laplace(model, likelihood,
subset_of_weights="all", hessian_structure="kron", backend=..., prior_precision=0.,
temperature=1., sigma_noise=1.)``, then ``la.fit(loader)``; the factors are ``la.H_facs``
(a ``laplace.utils.matrix.Kron``), one entry per trainable parameter in ``model.parameters()``
order: ``[B, A]`` for a weight (block ``kron(B, A)`` over ``weight.flatten()``, a
convolution's ``A`` in ``weight.flatten(1)`` order) and ``[B_bias]`` for a bias, always
separate. One candidate per backend with a Kronecker-factored GGN: ``CurvlinopsGGN``/
``CurvlinopsEF``, ``AsdlGGN``/``AsdlEF`` and ``BackPackGGN`` (``BackPackEF`` raises
``NotImplementedError`` for kron).

Conventions (laplace-torch 0.3, read in source and verified numerically):

- Scale: ``H_facs`` is the sum over data of the per-datum curvature of the negative
  log-likelihood (``½||f - y||²`` for ``"regression"`` at ``sigma_noise=1``, the
  cross-entropy for ``"classification"``); neither the prior nor the temperature is in it
  (``posterior_precision = H_facs / (sigma_noise² T) + prior_precision``). Declared as
  ``Conventions(curvature="sum-nll", empirical_fisher="sum-nll")``.
- laplace splits the scale between the factors its own way (``A`` is the mean of ``a a^T``,
  regression multiplies each factor of a pair by ``sqrt(1/2)`` through ``Kron.__mul__``), so a
  weight's ``B`` is a multiple ``c B_bias`` of its bias's; the adapter keeps the product,
  ``kron(B, A) = kron(B_bias, c A)``, and raises if the two ``B`` are not proportional.
- MC Fisher: ``backend_kwargs={"stochastic": True}``. Curvlinops takes ``mc_samples`` and
  ``seed`` through ``asdl_fisher_kwargs`` (forwarded to ``KFACLinearOperator``); ASDL takes
  ``n_mc_samples`` and samples from the global RNG; BackPACK's ``KFAC`` draws one sample from
  the global RNG. The global RNG is seeded with ``request.seed`` inside ``fork_rng``.
- Flavour: ``kfac_approx`` reaches curvlinops through ``asdl_fisher_kwargs``; ASDL and
  BackPACK are expand only.
- ``nn.Embedding`` is not claimed for any backend: curvlinops 3.0.1 and BackPACK 1.7.1 have
  no Embedding KFAC, and with ASDL laplace reads the factors in a Linear layer's layout
  (``Kron.init_from_model``: ``B`` sized by the weight's rows), the transpose of an
  embedding's, so fitting raises a size mismatch or, where ``num_embeddings == dim``, builds
  the wrong block (findings L2).
- ``la.fit`` puts the model in eval mode and sets attributes on it: every call fits a deep
  copy. Parameters outside ``problem.layers`` are frozen in the copy, since
  ``subset_of_weights="all"`` takes the parameters that require grad.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor

from kfac_conformance.adapters._common import (
    Unsupported,
    batch_loader,
    package,
    refuse_shared_linear_inputs,
    refuse_shared_outputs,
    require,
    seeded_global_rng,
)
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import KroneckerFactors

LIBRARY = "laplace-torch"
LAYER_TYPES = frozenset({"Linear", "Conv2d"})
LIKELIHOODS = {"MSELoss": "regression", "CrossEntropyLoss": "classification"}
CONVENTIONS = Conventions(curvature="sum-nll", empirical_fisher="sum-nll")


def weight_and_bias_factors(
    problem: Problem, kfacs: list[list[Tensor]], layer_names: list[str]
) -> dict[str, KroneckerFactors]:
    """``KroneckerFactors`` per layer from laplace's per-parameter entries (model order)."""
    entries = iter(kfacs)
    result = {}
    for layer in layer_names:
        module = problem.model.get_submodule(layer)
        weight = next(entries)
        B, A = weight if len(weight) == 2 else (weight[0], torch.ones_like(weight[0]))
        if getattr(module, "bias", None) is None:
            result[layer] = package(problem, A, B, "none")
            continue
        (B_bias,) = next(entries)
        c = (B * B_bias).sum() / (B_bias * B_bias).sum()
        if not torch.allclose(B, c * B_bias, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"laplace's weight and bias factors B of layer {layer!r} are not proportional; "
                "its block has no shared-B (separate bias) form"
            )
        result[layer] = package(problem, c * A, B_bias, "separate")
    return result


class _LaplaceKron:
    """``KronLaplace`` with one backend family; subclasses name the backends."""

    ggn_backend: str
    ef_backend: str | None
    capabilities: Capabilities

    requires = Requirement(("laplace-torch",), "laplace")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def _check(self, problem: Problem, request: Request) -> None:
        require(problem, LIBRARY, self.capabilities.layer_types, LIKELIHOODS)
        if request.fisher_type not in self.capabilities.fisher_types:
            raise Unsupported(LIBRARY, f"fisher_type {request.fisher_type!r} with this backend")
        if request.kfac_approx not in self.capabilities.flavours:
            raise Unsupported(LIBRARY, f"kfac_approx {request.kfac_approx!r} with this backend")
        if request.bias != "separate":
            raise Unsupported(LIBRARY, "the bias has its own Kronecker entry (separate)")

    def fisher_kwargs(self, request: Request) -> dict:
        """Backend-specific ``asdl_fisher_kwargs`` for the request."""
        return {}

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self._check(problem, request)
        with seeded_global_rng(problem, request.seed):
            return self._fit(problem, request)

    def _fit(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        import laplace.curvature
        from laplace import Laplace

        model = copy.deepcopy(problem.model)
        layer_names = [name for name, _ in model.named_modules() if name in problem.layers]
        trained = {id(p) for name in layer_names for p in model.get_submodule(name).parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in trained)
        backend = self.ef_backend if request.fisher_type == "empirical" else self.ggn_backend
        la = Laplace(
            model,
            LIKELIHOODS[type(problem.loss_func).__name__],
            subset_of_weights="all",
            hessian_structure="kron",
            backend=getattr(laplace.curvature, backend),
            sigma_noise=1.0,
            prior_precision=0.0,
            temperature=1.0,
            backend_kwargs={"stochastic": True} if request.fisher_type == "mc" else None,
            asdl_fisher_kwargs=self.fisher_kwargs(request),
        )
        la.fit(batch_loader(problem))
        return weight_and_bias_factors(problem, la.H_facs.kfacs, layer_names)


def _capabilities(
    fisher_types: set[str], flavours: set[str], layer_types: frozenset[str] = LAYER_TYPES
) -> Capabilities:
    return Capabilities(
        layer_types=layer_types,
        losses=frozenset(LIKELIHOODS),
        fisher_types=frozenset(fisher_types),
        flavours=frozenset(flavours),
        bias_modes=frozenset({"separate"}),
        conventions=CONVENTIONS,
    )


class LaplaceCurvlinopsCandidate(_LaplaceKron):
    name = "laplace-curvlinops"
    # the backend is a dependency of laplace-torch
    requires = Requirement(("laplace-torch", "curvlinops-for-pytorch"), "laplace")
    ggn_backend, ef_backend = "CurvlinopsGGN", "CurvlinopsEF"
    capabilities = _capabilities({"type-2", "mc", "empirical"}, {"expand", "reduce"})

    def fisher_kwargs(self, request: Request) -> dict:
        kwargs: dict = {"kfac_approx": request.kfac_approx}
        if request.fisher_type == "mc":
            kwargs.update(mc_samples=request.mc_samples, seed=request.seed)
        return kwargs


class LaplaceAsdlCandidate(_LaplaceKron):
    name = "laplace-asdl"
    # the backend is a dependency of laplace-torch
    requires = Requirement(("laplace-torch", "asdfghjkl"), "laplace")
    ggn_backend, ef_backend = "AsdlGGN", "AsdlEF"
    capabilities = _capabilities({"type-2", "mc", "empirical"}, {"expand"})

    def _check(self, problem: Problem, request: Request) -> None:
        super()._check(problem, request)
        # ASDL 0.1a4 crashes on loss inputs other than (N, C) and raises for dilated Conv2d
        refuse_shared_outputs(problem, LIBRARY)
        for layer in problem.layers:
            if getattr(problem.model.get_submodule(layer), "dilation", (1, 1)) != (1, 1):
                raise Unsupported(LIBRARY, f"Conv2d {layer!r} is dilated; ASDL 0.1a4 takes (1, 1)")

    def fisher_kwargs(self, request: Request) -> dict:
        return {"n_mc_samples": request.mc_samples} if request.fisher_type == "mc" else {}


class LaplaceBackpackCandidate(_LaplaceKron):
    name = "laplace-backpack"
    # the backend is a dependency of laplace-torch
    requires = Requirement(("laplace-torch", "backpack-for-pytorch"), "laplace")
    ggn_backend, ef_backend = "BackPackGGN", None
    # BackPACK computes Conv3d as well, but laplace-torch 0.3 does not take it: its
    # Kron.init_from_model raises "Invalid parameter shape in network." for a weight with more
    # than 4 axes (laplace/utils/matrix.py), before anything is fitted
    capabilities = replace(
        _capabilities({"type-2", "mc"}, {"expand"}, LAYER_TYPES | {"Conv1d"}),
        weight_sharing=False,
    )

    def _check(self, problem: Problem, request: Request) -> None:
        super()._check(problem, request)
        if request.fisher_type == "mc" and request.mc_samples != 1:
            raise Unsupported(LIBRARY, "BackPACK's KFAC draws one MC sample (mc_samples=1)")
        # BackPACK's losses take (N, C) inputs only, and its Linear takes (N, D) inputs
        refuse_shared_outputs(problem, LIBRARY)
        refuse_shared_linear_inputs(problem, LIBRARY)

    def _fit(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        try:
            return super()._fit(problem, request)
        except NotImplementedError as declined:
            # BackPACK's own, documented refusal of a module it has no extension for
            raise Unsupported(LIBRARY, str(declined)) from declined
