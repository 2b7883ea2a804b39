"""The cases of the ``scale`` profile: models of millions of parameters, where no P x P block fits.

Each case says which layers KFAC type-2 is exact on, by the KFAC tutorial (arXiv 2507.05127)
and Eschenhagen et al. 2023:

- a deep linear network with MSE: every layer, on any data, in both flavours (the network's
  Jacobian does not depend on the datum and the loss Hessian is constant);
- any network on one datum: type-2 and empirical, every layer;
- the last layer before an MSE loss (the transformer's head, the CNN's last convolution on
  every output pixel, expand): its output is the network's output.

Elsewhere (attention, GELU, ReLU, residual connections) a candidate is compared with
``kfac_ref``. ``SCALE_CASES`` are the profile's (over 10 M parameters together);
``MINI_SCALE_CASES`` are the same architectures small enough for the project's tests, still
with more data than one chunk of 128 and convolutions of more than 64 input channels, where
the zoo's scale-only bugs show.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kfac_conformance.cases.architectures import initialised
from kfac_conformance.cases.case import LOSSES, draw_labels
from kfac_conformance.contract.problem import Problem

TUTORIAL = "KFAC tutorial (arXiv 2507.05127); Eschenhagen et al. 2023 for shared axes"


class LinearTransformerBlock(nn.Module):
    """Self-attention and an MLP, each with a residual connection, over ``(N, S, d)``, then a
    head on the sequence mean: every parameter sits in an ``nn.Linear`` on a shared axis."""

    def __init__(self, width: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.project = nn.Linear(width, width)
        self.expand = nn.Linear(width, hidden)
        self.reduce = nn.Linear(hidden, width)
        self.head = nn.Linear(width, outputs)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5
        x = x + self.project(scores.softmax(dim=-1) @ self.value(x))
        x = x + self.reduce(nn.functional.gelu(self.expand(x)))
        return self.head(x.mean(dim=1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.second(torch.relu(self.first(x))))


def resnet_cnn(channels: tuple[int, ...]) -> nn.Sequential:
    """A stem, then per width a residual block, with stride-2 convolutions between widths;
    the last convolution (stride 2) gives one output channel, every pixel of it a loss term."""
    modules: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1), nn.ReLU()]
    for index, width in enumerate(channels):
        modules.append(ResidualBlock(width))
        following = channels[index + 1] if index + 1 < len(channels) else 1
        modules.append(nn.Conv2d(width, following, 3, stride=2, padding=1))
        if index + 1 < len(channels):
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def tanh_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers through ``widths`` with biases and tanh between them."""
    modules: list[nn.Module] = []
    for d_in, d_out in zip(widths, widths[1:], strict=False):
        modules.extend([nn.Linear(d_in, d_out), nn.Tanh()])
    return nn.Sequential(*modules[:-1])


def deep_linear(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers through ``widths``, biased at both ends, without activations."""
    last = len(widths) - 2
    return nn.Sequential(
        *(
            nn.Linear(d_in, d_out, bias=index in (0, last))
            for index, (d_in, d_out) in enumerate(zip(widths, widths[1:], strict=False))
        )
    )


@dataclass(frozen=True)
class ScaleCase:
    """A problem built by ``architecture()`` on ``num_data`` Gaussian inputs of
    ``datum_shape`` with MSE labels; ``exact`` as in :class:`kfac_conformance.cases.case.Case`."""

    id: str
    architecture: Callable[[], nn.Module]
    datum_shape: tuple[int, ...]
    num_data: int
    seed: int
    exact: dict[str, tuple[str, ...]] = field(default_factory=dict)
    statement: str = ""
    source: str = TUTORIAL
    loss: str = "mse"
    reduction: str = "mean"

    def make_problem(self, dtype: torch.dtype = torch.float64) -> Problem:
        generator = torch.Generator().manual_seed(self.seed)
        model = initialised(self.architecture(), dtype, generator)
        X = torch.randn((self.num_data, *self.datum_shape), generator=generator, dtype=dtype)
        with torch.no_grad():
            y = draw_labels(self.loss, model(X), generator)
        layers = [
            name
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))
        ]
        return Problem(
            model, LOSSES[self.loss](reduction=self.reduction), [(X, y)], layers, self.id
        )

    def exact_layers(self, fisher_type: str, flavour: str) -> tuple[str, ...]:
        return self.exact.get(f"{fisher_type}/{flavour}", ())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.architecture().parameters())


def layer_names(architecture: Callable[[], nn.Module]) -> tuple[str, ...]:
    """The parameter layers of ``architecture``, built without storage (on the meta device):
    the catalogue imports the scale cases, and millions of parameters cost time to allocate."""
    with torch.device("meta"):
        model = architecture()
    return tuple(
        name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))
    )


def _cases(
    linear_widths: tuple[int, ...],
    mlp_widths: tuple[int, ...],
    transformer: tuple[int, int, int, int],
    cnn_channels: tuple[int, ...],
    cnn_data: tuple[int, int],
) -> list[ScaleCase]:
    """The three architectures at the given sizes; ``transformer`` is (width, hidden,
    sequence length, data), ``cnn_data`` is (image side, data)."""
    linear = functools.partial(deep_linear, linear_widths)
    width, hidden, length, transformer_data = transformer
    block = functools.partial(LinearTransformerBlock, width, hidden, 4)
    cnn = functools.partial(resnet_cnn, cnn_channels)
    side, cnn_num_data = cnn_data
    every_linear_layer = layer_names(linear)
    mlp = functools.partial(tanh_mlp, mlp_widths)
    return [
        ScaleCase(
            id=f"one-datum-mlp[{'-'.join(map(str, mlp_widths[1:-1]))}]",
            architecture=mlp,
            datum_shape=(mlp_widths[0],),
            num_data=1,
            seed=2303,
            exact={
                f"{fisher_type}/{flavour}": layer_names(mlp)
                for fisher_type in ("type-2", "empirical")
                for flavour in ("expand", "reduce")
            },
            statement="tanh MLP on one datum: KFAC type-2 is the GGN block and KFAC-empirical "
            "the empirical Fisher's",
        ),
        ScaleCase(
            id=f"deep-linear[{'-'.join(map(str, linear_widths[1:-1]))}]",
            architecture=linear,
            datum_shape=(linear_widths[0],),
            # more than one chunk of 128 data, with a partial chunk after it
            num_data=160,
            seed=2300,
            exact=dict.fromkeys(("type-2/expand", "type-2/reduce"), every_linear_layer),
            statement="deep linear network with MSE: KFAC type-2 is the GGN block on any data",
        ),
        ScaleCase(
            id=f"linear-transformer-block[d{width}-h{hidden}-s{length}]",
            architecture=block,
            datum_shape=(length, width),
            num_data=transformer_data,
            seed=2301,
            exact=dict.fromkeys(("type-2/expand", "type-2/reduce"), ("head",)),
            statement="attention and MLP of nn.Linear layers over a sequence; the head before "
            "MSE is exact, the rest is compared with kfac_ref",
        ),
        ScaleCase(
            id=f"resnet-cnn[{'-'.join(map(str, cnn_channels))}]",
            architecture=cnn,
            datum_shape=(3, side, side),
            num_data=cnn_num_data,
            seed=2302,
            exact={"type-2/expand": layer_names(cnn)[-1:]},
            statement="residual CNN; its last convolution with MSE on every pixel is exact "
            "(expand), the rest is compared with kfac_ref",
        ),
    ]


SCALE_CASES = _cases(
    (16, 1024, 2048, 1024, 4), (16, 2048, 2048, 4), (512, 2048, 16, 16), (64, 128, 256), (16, 8)
)
MINI_SCALE_CASES = _cases((16, 96, 128, 96, 4), (16, 48, 48, 4), (32, 64, 4, 8), (16, 72), (8, 4))
