"""kronfluence's KFAC and EKFAC factors (the curvature of its influence functions) as candidates.

Usage follows kronfluence's documented flow (README, DOCUMENTATION.md): a :class:`Task` whose
``compute_train_loss`` returns the loss **summed** over the batch and draws its own labels when
``sample=True``; ``prepare_model(model, task)``; ``Analyzer(...).fit_all_factors(name, dataset,
per_device_batch_size, factor_args=FactorArguments(strategy=...))``; then
``load_covariance_matrices``, ``load_eigendecomposition`` and ``load_lambda_matrices``.

Conventions (kronfluence 1.0.1, read in source and verified numerically):

- Layout: the bias is an extra input column fed by a constant one, appended last
  (``TrackedLinear.get_flattened_activation``), so only ``bias="joint"`` exists; the module's
  block is ``kron(G, A)`` over the row-major ``[W | b]``. Conv2d patches are in
  ``weight.flatten(1)`` order. Linear inputs ``(N, S, D)`` are flattened to ``(N S, D)``: the
  expand flavour only.
- Normalisation: the saved covariances are sums over rows (examples times positions) and are
  divided by their counts, ``A = sum a a^T / count`` and ``G = sum g g^T / count``
  (``perform_eigendecomposition`` divides the same way). EKFAC's ``lambda_matrix`` is the sum
  over examples of ``(Q_G^T dW_n Q_A)^2`` and is divided by its count of examples, so
  ``S = diag(Q^T F Q)`` reshaped to ``(out, in [+1])`` with ``F`` the mean over examples.
- Scale: the mean over examples of the per-datum curvature of the Task's loss. The Task below
  is written as kronfluence's examples write it (``examples/uci``: ``F.mse_loss(...,
  reduction="sum")``, labels ``N(f, 1/2)`` when sampling; ``F.cross_entropy(...,
  reduction="sum")``, labels from the softmax), so MSE's per-datum loss is
  ``c' = ||f - y||^2``, the negative log-likelihood of a Gaussian with variance 1/2: declared
  as ``Conventions(curvature="mean-squared-error", empirical_fisher="mean-squared-error")``.
- Fisher types: ``use_empirical_fisher=True`` is the empirical Fisher; ``False`` (the default)
  is the MC Fisher with one label per example and pass. ``mc_samples = M`` is drawn the only
  way kronfluence allows, by presenting each datum ``M`` times, which averages the ``M`` draws
  per datum. No type-2 (closed-form) Fisher. EKFAC's lambda pass calls the loss again and so
  draws fresh labels.
- Labels are drawn from a private ``torch.Generator`` seeded with ``request.seed``.
- Distribution is not claimed (``Capabilities.distributed`` stays ``False``): kronfluence's
  distributed path needs CUDA at four places, so no process group of this machine's CPUs can
  run it without replacing library code. ``State`` (``utils/state.py``) turns it on only when
  ``LOCAL_RANK`` is set, ``cpu=False`` and ``torch.cuda.is_available()``; forced on a CPU,
  ``Analyzer`` wraps the model in DDP with ``device_ids=[local rank]`` (``computer.py``, a
  GPU-only argument: ValueError), and with the model wrapped ahead, its timer
  (``utils/logger.py``, ``get_time``) calls ``torch.cuda.synchronize()``. The factors are
  combined in ``TrackedModule.synchronize`` (``module/tracker/factor.py``) only
  ``if torch.cuda.is_available()``, by ``dist.reduce(..., dst=0)`` of the covariance *sums and
  their counts* (the right quantities), so only rank 0 holds the combined factors; the data
  count is all-reduced (``factor/covariance.py``). docs/distributed.md has the details.
- kronfluence writes factors to disk: every call uses a fresh temporary directory and a deep
  copy of the model (``prepare_model`` wraps its modules and freezes its parameters in place),
  with every ``*_dtype`` argument set to the problem's dtype (float32 otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from kfac_conformance.adapters._common import (
    Unsupported,
    has_bias,
    package,
    package_ekfac,
    require,
)
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.loading import Requirement, installed_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref.factors import EKFACFactors, KroneckerFactors

LIBRARY = "kronfluence"
LAYER_TYPES = frozenset({"Linear", "Conv2d"})
LOSSES = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})
CONVENTIONS = Conventions(curvature="mean-squared-error", empirical_fisher="mean-squared-error")
CAPABILITIES = Capabilities(
    layer_types=LAYER_TYPES,
    losses=LOSSES,
    fisher_types=frozenset({"mc", "empirical"}),
    flavours=frozenset({"expand"}),
    bias_modes=frozenset({"joint"}),
    devices=frozenset({"cpu"}),
    conventions=CONVENTIONS,
)


def summed_loss(loss_name: str, output: Tensor, labels: Tensor) -> Tensor:
    """The Task's loss: summed over data and elements, as kronfluence requires."""
    if loss_name == "MSELoss":
        return F.mse_loss(output, labels, reduction="sum")
    if loss_name == "CrossEntropyLoss":
        return F.cross_entropy(output, labels, reduction="sum")
    return F.binary_cross_entropy_with_logits(output, labels, reduction="sum")


def sampled_labels(loss_name: str, output: Tensor, generator: torch.Generator) -> Tensor:
    """Labels from the predictive distribution whose negative log-likelihood is the Task's
    loss: ``N(f, 1/2)`` for ``||f - y||^2``, the softmax over dim 1, independent sigmoids."""
    output = output.detach()
    if loss_name == "MSELoss":
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
        return output + math.sqrt(0.5) * noise
    if loss_name == "CrossEntropyLoss":
        logits = output.movedim(1, -1)
        probabilities = logits.reshape(-1, logits.shape[-1]).softmax(-1)
        labels = torch.multinomial(probabilities, 1, generator=generator)
        return labels.reshape(logits.shape[:-1])
    return torch.bernoulli(output.sigmoid(), generator=generator)


@contextlib.contextmanager
def objects_frozen() -> Iterator[None]:
    """Keep the objects that exist now out of garbage collections until the block ends.

    kronfluence runs ``gc.collect()`` between its phases (``State.release_memory``, four per
    fit); in a process holding many objects, such as the harness, each takes about a second.
    The numbers are unchanged.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def progress_bars_without_a_semaphore() -> None:
    """Give tqdm a thread lock before kronfluence's first progress bar would make its own.

    kronfluence's bars (even disabled) are tqdm's, and tqdm's first bar creates a process-wide
    ``multiprocessing.RLock``. In a process that was not forked (the supervisor's workers
    come from a forkserver) that lock is a named POSIX semaphore registered with
    multiprocessing's resource tracker; the supervisor ends each worker with SIGKILL, so the
    semaphore is never unlinked and the tracker warns at shutdown "There appear to be 1 leaked
    semaphore objects". That lock only keeps bars of several processes on one terminal apart;
    here nothing draws them, so a thread lock serves, and leaves nothing behind.
    """
    from tqdm import tqdm

    if not hasattr(tqdm, "_lock"):  # a lock made earlier by someone else is theirs
        tqdm.set_lock(threading.RLock())


def make_task(loss_name: str, layers: list[str], generator: torch.Generator):
    from kronfluence.task import Task

    class ProblemTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            X, y = batch
            output = model(X)
            if sample:
                y = sampled_labels(loss_name, output, generator)
            return summed_loss(loss_name, output, y)

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return list(layers)

    return ProblemTask()


class _KronfluenceFit:
    """The fitting both candidates share; each picks its strategy and reads its factors."""

    strategy: str
    capabilities = CAPABILITIES

    requires = Requirement(("kronfluence",), "kronfluence")

    def __init__(self) -> None:
        self.version = installed_version(self.requires.distributions[0])

    def _check(self, problem: Problem, request: Request) -> None:
        require(problem, LIBRARY, LAYER_TYPES, LOSSES)
        if request.fisher_type not in CAPABILITIES.fisher_types:
            raise Unsupported(LIBRARY, f"fisher_type {request.fisher_type!r} (MC or empirical)")
        if request.kfac_approx != "expand":
            raise Unsupported(LIBRARY, "shared axes are flattened into data (expand) only")
        if request.bias != "joint":
            raise Unsupported(LIBRARY, "the bias is a ones column appended to the input (joint)")
        if problem.device.type != "cpu":
            raise Unsupported(LIBRARY, "the adapter runs kronfluence with cpu=True")

    def _fit(self, problem: Problem, request: Request) -> tuple[dict, dict, dict | None]:
        """``(covariances, eigendecomposition, lambda or None)`` as kronfluence saves them."""
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs
        from torch.utils.data import TensorDataset

        self._check(problem, request)
        progress_bars_without_a_semaphore()
        generator = torch.Generator().manual_seed(request.seed)
        task = make_task(type(problem.loss_func).__name__, problem.layers, generator)
        model = prepare_model(copy.deepcopy(problem.model), task)
        X = torch.cat([X for X, _ in problem.batches])
        y = torch.cat([y for _, y in problem.batches])
        repeats = request.mc_samples if request.fisher_type == "mc" else 1
        dataset = TensorDataset(X.repeat_interleave(repeats, 0), y.repeat_interleave(repeats, 0))
        dtype = problem.dtype
        factor_args = FactorArguments(
            strategy=self.strategy,
            use_empirical_fisher=request.fisher_type == "empirical",
            covariance_max_examples=None,
            lambda_max_examples=None,
            activation_covariance_dtype=dtype,
            gradient_covariance_dtype=dtype,
            per_sample_gradient_dtype=dtype,
            lambda_dtype=dtype,
        )
        with objects_frozen(), tempfile.TemporaryDirectory(prefix="kronfluence-") as output_dir:
            analyzer = Analyzer(
                "conformance", model, task, cpu=True, disable_tqdm=True, output_dir=output_dir
            )
            analyzer.fit_all_factors(
                "factors",
                dataset,
                per_device_batch_size=problem.batches[0][0].shape[0] * repeats,
                # a DataLoader draws its base seed from the global RNG unless given a generator
                dataloader_kwargs=DataLoaderKwargs(generator=torch.Generator()),
                factor_args=factor_args,
                overwrite_output_dir=True,
            )
            return (
                analyzer.load_covariance_matrices("factors"),
                analyzer.load_eigendecomposition("factors"),
                analyzer.load_lambda_matrices("factors"),
            )


class KronfluenceKFACCandidate(_KronfluenceFit):
    """``strategy="kfac"``: the normalised covariances ``A`` and ``G``."""

    name = "kronfluence-kfac"
    strategy = "kfac"

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        covariances, _, _ = self._fit(problem, request)
        result = {}
        for layer in problem.layers:
            A = covariances["activation_covariance"][layer]
            G = covariances["gradient_covariance"][layer]
            A = A / covariances["num_activation_covariance_processed"][layer]
            G = G / covariances["num_gradient_covariance_processed"][layer]
            result[layer] = package(problem, A, G, "joint" if has_bias(problem, layer) else "none")
        return result


class KronfluenceEKFACCandidate(_KronfluenceFit):
    """``strategy="ekfac"`` (kronfluence's default): eigenvectors of ``A`` and ``G`` and the
    corrected eigenvalues ``S = lambda_matrix / num_lambda_processed``."""

    name = "kronfluence-ekfac"
    strategy = "ekfac"
    capabilities = replace(CAPABILITIES, approximations=frozenset({"ekfac"}))

    def compute(self, problem: Problem, request: Request) -> Mapping[str, EKFACFactors]:
        _, eigen, lambdas = self._fit(problem, request)
        result = {}
        for layer in problem.layers:
            S = lambdas["lambda_matrix"][layer] / lambdas["num_lambda_processed"][layer]
            result[layer] = package_ekfac(
                problem,
                eigen["activation_eigenvectors"][layer],
                eigen["gradient_eigenvectors"][layer],
                S,
                "joint" if has_bias(problem, layer) else "none",
            )
        return result
