r"""A KFAC written literally from the KFAC tutorial (arXiv 2507.05127), as a third-party author
would write it: only torch, none of this project's reference code.

The tutorial's definitions, each used where marked:

- empirical risk (eq. 1): :math:`L = R\sum_n c(f_n, y_n)`, with the criterion and ``R`` of its
  examples "Square loss" (:math:`c = \tfrac12\|f - y\|^2`, :math:`R = 2` or :math:`2/(N\dim Y)`)
  and "Cross-entropy loss" (:math:`c = -\log\mathrm{softmax}(f)_y`, :math:`R = 1` or
  :math:`1/(N\dim Y)`); BCE-with-logits as the Bernoulli negative log-likelihood, like CE;
- the KFAC scaffold: :math:`B = R\sum_{n,v} g_{n,v} g_{n,v}^\top` for the backpropagated
  vectors :math:`\blacktriangle_{n,v}` (type-2: the columns of a symmetric factorisation of
  :math:`\nabla^2_f c_n`; MC: :math:`\nabla_f c_n(\hat y)/\sqrt M` with
  :math:`\hat y \sim r(\cdot\mid f_n)`; empirical: :math:`\nabla_f c_n(y_n)`);
  :math:`A = \frac1N\sum_n a_n a_n^\top`;
- weight sharing: expand (sum over positions into ``B``, average into ``A``) and reduce
  (sum the gradients and average the inputs over positions first), Eschenhagen et al. 2023.

:class:`TutorialKFAC` can also follow another scale convention, computing it from that
convention's own formula (not by rescaling its tutorial answer), and declares what it does
only when told to: that is how the tests show that a declared convention passes and an
undeclared one is named by the run's scale summary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import grad, hessian
from torch.nn import functional as F

from kfac_conformance import Capabilities, Conventions, KroneckerFactors, NotSupported


def criterion(loss_func: nn.Module, f: Tensor, y: Tensor, squared_error: bool = False) -> Tensor:
    """``c(f_n, y_n)`` for one datum (no batch axis); ``squared_error``: MSE as ``‖f − y‖²``."""
    if isinstance(loss_func, nn.MSELoss):
        return ((f - y) ** 2).sum() * (1.0 if squared_error else 0.5)
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return F.cross_entropy(f.unsqueeze(0), y.unsqueeze(0), reduction="sum")
    return F.binary_cross_entropy_with_logits(f, y, reduction="sum")


def tutorial_reduction_factor(loss_func: nn.Module, num_data: int, label_elements: int) -> float:
    """``R`` of the tutorial's examples; ``dim Y`` is the number of label elements per datum."""
    k = 2.0 if isinstance(loss_func, nn.MSELoss) else 1.0
    return k if loss_func.reduction == "sum" else k / (num_data * label_elements)


def sample_label(loss_func: nn.Module, f: Tensor, generator: torch.Generator) -> Tensor:
    """``ŷ ~ r(y | f)``, the likelihood whose negative log is the criterion."""
    if isinstance(loss_func, nn.MSELoss):
        return f + torch.randn(f.shape, generator=generator, dtype=f.dtype)
    if isinstance(loss_func, nn.CrossEntropyLoss):
        probs = f.movedim(0, -1).softmax(-1).reshape(-1, f.shape[0])
        return torch.multinomial(probs, 1, generator=generator).reshape(f.shape[1:])
    return (torch.rand(f.shape, generator=generator, dtype=f.dtype) < f.sigmoid()).to(f.dtype)


class TutorialKFAC:
    """KFAC for ``Linear`` and ``Conv2d`` layers, every Fisher type, flavour and bias mode.

    ``follows``: the scale convention computed (default: the tutorial's); ``declared``: what
    the capabilities say (default: nothing, i.e. the tutorial's).
    """

    version = "tutorial"

    def __init__(self, follows: Conventions | None = None, declared: bool = False) -> None:
        self.follows = follows or Conventions()
        self.name = f"tutorial-kfac[{self.follows.declaration()}]"
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            conventions=self.follows if declared else Conventions(),
        )

    def compute(self, problem, request) -> dict[str, KroneckerFactors]:
        model, loss_func = problem.model, problem.loss_func
        if not isinstance(loss_func, (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss)):
            raise NotImplementedError(f"the tutorial defines no criterion for {loss_func}")
        modules = {name: model.get_submodule(name) for name in problem.layers}
        others = {
            name: type(module).__name__
            for name, module in modules.items()
            if not isinstance(module, (nn.Linear, nn.Conv2d))
        }
        if others:
            raise NotSupported(f"the tutorial's KFAC covers Linear and Conv2d layers, not {others}")
        generator = torch.Generator().manual_seed(request.seed)
        X = torch.cat([X for X, _ in problem.batches])
        y = torch.cat([y for _, y in problem.batches])
        N = X.shape[0]
        R = tutorial_reduction_factor(loss_func, N, y[0].numel())
        squared_error = request.fisher_type == "empirical" and self.follows.empirical_fisher in (
            "squared-error",
            "mean-squared-error",
        )
        weight = self._weight(request.fisher_type, R, N, isinstance(loss_func, nn.MSELoss))

        recorded: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [
            module.register_forward_hook(
                lambda m, args, out, name=name: recorded.__setitem__(name, (args[0], out))
            )
            for name, module in modules.items()
        ]
        try:
            f = model(X)
        finally:
            for hook in hooks:
                hook.remove()
        vectors = self._backpropagated(request, loss_func, f.detach(), y, squared_error, generator)

        result = {}
        for name, module in modules.items():
            inputs, outputs = recorded[name]
            a = self._input_positions(module, inputs.detach())  # (N, S, d_in)
            if request.bias == "joint" and module.bias is not None:
                a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
            S = a.shape[1]
            if request.kfac_approx == "expand":
                A = torch.einsum("nsi,nsj->ij", a, a) / (N * S)
            else:
                mean_a = a.mean(dim=1)
                A = mean_a.T @ mean_a / N
            if request.fisher_type == "forward-only":
                B = torch.eye(module.weight.shape[0], dtype=A.dtype)
            else:
                B = torch.zeros(module.weight.shape[0], module.weight.shape[0], dtype=A.dtype)
                for v in vectors:
                    (g,) = torch.autograd.grad(f, outputs, v, retain_graph=True)
                    g = self._output_positions(module, g)  # (N, S, d_out)
                    if request.kfac_approx == "reduce":
                        g = g.sum(dim=1, keepdim=True)
                    B += weight * torch.einsum("nsi,nsj->ij", g, g)
            mode = "none" if module.bias is None else request.bias
            result[name] = KroneckerFactors(A.detach(), B.detach(), mode)
        return result

    def _weight(self, fisher_type: str, R: float, N: int, mse: bool) -> float:
        """The factor before :math:`\\sum_n g g^\\top` in the followed convention."""
        convention = (
            self.follows.empirical_fisher if fisher_type == "empirical" else self.follows.curvature
        )
        if convention == "mean-squared-error" and fisher_type != "empirical" and mse:
            return 2.0 / N  # ∇²c' = 2 ∇²c; for MC, ∇c' = 2(f − ŷ) with ŷ ~ N(f, ½)
        if convention in ("mean-nll", "mean-squared-error"):
            return 1.0 / N
        if convention == "sum-nll":
            return 1.0
        if convention == "loss-gradients":
            return R**2  # ∇ℓ_n = R ∇c_n
        if convention == "squared-error" and mse:
            return R / 2  # L = (R/2) Σ ‖f − y‖²
        return R

    @staticmethod
    def _backpropagated(request, loss_func, f, y, squared_error, generator) -> list[Tensor]:
        """Vectors ``(N, *f.shape[1:])`` whose outer products (per datum) give the curvature."""
        if request.fisher_type == "forward-only":
            return []
        if request.fisher_type == "empirical":
            return [
                torch.stack(
                    [
                        grad(criterion, 1)(loss_func, f_n, y_n, squared_error)
                        for f_n, y_n in zip(f, y, strict=True)
                    ]
                )
            ]
        if request.fisher_type == "mc":
            M = request.mc_samples
            draws = [
                torch.stack(
                    [
                        grad(criterion, 1)(loss_func, f_n, sample_label(loss_func, f_n, generator))
                        for f_n in f
                    ]
                )
                / math.sqrt(M)
                for _ in range(M)
            ]
            return draws
        columns = []
        for f_n, y_n in zip(f, y, strict=True):
            H = hessian(criterion, 1)(loss_func, f_n, y_n).reshape(f_n.numel(), f_n.numel())
            eigenvalues, eigenvectors = torch.linalg.eigh(H)
            columns.append(eigenvectors * eigenvalues.clamp(min=0).sqrt())  # H = V Vᵀ
        stacked = torch.stack(columns)  # (N, K, K): datum n's column k
        return [stacked[:, :, k].reshape(f.shape) for k in range(stacked.shape[-1])]

    @staticmethod
    def _input_positions(module: nn.Module, inputs: Tensor) -> Tensor:
        if isinstance(module, nn.Conv2d):
            patches = F.unfold(
                inputs, module.kernel_size, module.dilation, module.padding, module.stride
            )
            return patches.transpose(1, 2)
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])

    @staticmethod
    def _output_positions(module: nn.Module, g: Tensor) -> Tensor:
        if isinstance(module, nn.Conv2d):
            return g.flatten(start_dim=2).transpose(1, 2)
        return g.reshape(g.shape[0], -1, g.shape[-1])
