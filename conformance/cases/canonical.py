"""The canonical cases, defined once: architecture, data, loss, and where KFAC is exact.

``exact`` maps ``"<fisher type>/<flavour>"`` to the layers whose KFAC block equals the exact
block of the same curvature (type-2 -> GGN, empirical -> empirical Fisher), by the theorems of
the KFAC tutorial (Mucsanyi et al. 2025, arXiv 2507.05127) and of Eschenhagen et al. 2023.
A separate bias has no weight-bias cross terms by definition, so for it only the weight and
bias blocks count; a joint bias is exact in the whole block.
"""

from __future__ import annotations

from kfac_conformance.cases.architectures import PARAMETER_KINDS
from kfac_conformance.cases.case import LOSSES, Case, draw_labels
from kfac_conformance.cases.grouped import grouped_agreement_cases, grouped_exact_cases


def _all(architecture: list) -> tuple[str, ...]:
    return tuple(str(i) for i, spec in enumerate(architecture) if spec[0] in PARAMETER_KINDS)


def _exact_everywhere(architecture: list, *keys: str) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(keys, _all(architecture))


BOTH_TYPE2 = ("type-2/expand", "type-2/reduce")
TUTORIAL = "KFAC tutorial (arXiv 2507.05127), exactness tests"
ESCHENHAGEN = "Eschenhagen et al. 2023, KFAC-expand and KFAC-reduce"


# (activation, loss, reduction) of the one-datum cases that the quick profile runs
_QUICK_ONE_DATUM = {("tanh", "ce", "sum"), ("sigmoid", "bce", "mean")}

# Seeds for which every ReLU unit is active on the datum: a dead unit zeroes whole rows of the
# blocks, and with all units dead a KFAC of zeros would pass.
_LIVE_RELU_SEEDS = {
    ("mse", "mean"): 1242,
    ("mse", "sum"): 1500,
    ("ce", "mean"): 1500,
    ("ce", "sum"): 1500,
    ("bce", "mean"): 1664,
    ("bce", "sum"): 1740,
}


def _one_datum_cases() -> list[Case]:
    cases = []
    for activation in ("tanh", "sigmoid", "relu"):
        for loss in ("mse", "ce", "bce"):
            for reduction in ("mean", "sum"):
                architecture = [
                    ["linear", 4, 3, True],
                    [activation],
                    ["linear", 3, 3, True],
                    [activation],
                    ["linear", 3, 2, False],
                ]
                cases.append(
                    Case(
                        id=f"one-datum-mlp[{activation}-{loss}-{reduction}]",
                        architecture=architecture,
                        input_shape=(1, 4),
                        loss=loss,
                        reduction=reduction,
                        seed=_LIVE_RELU_SEEDS.get((loss, reduction), len(cases))
                        if activation == "relu"
                        else len(cases),
                        exact=_exact_everywhere(
                            architecture, *BOTH_TYPE2, "empirical/expand", "empirical/reduce"
                        ),
                        quick=(activation, loss, reduction) in _QUICK_ONE_DATUM,
                        statement="on one datum KFAC type-2 is the GGN block and KFAC-empirical the EF block",
                        source=TUTORIAL,
                    )
                )
    return cases


_DEEP_LINEAR = [["linear", 4, 5, True], ["linear", 5, 5, False], ["linear", 5, 3, True]]
_SHARED_LINEAR = [["linear", 3, 4, True], ["linear", 4, 4, False], ["linear", 4, 2, True]]
_POOLED_LINEAR = [["linear", 3, 4, True], ["linear", 4, 4, False]]
_AFTER_POOL = [["linear", 4, 4, True], ["linear", 4, 2, False]]


def _deep_linear_cases() -> list[Case]:
    statement = "deep linear network with MSE: KFAC type-2 is the GGN block on a whole data set"
    return [
        Case(
            id="deep-linear[mse-sum-1batch]",
            architecture=_DEEP_LINEAR,
            input_shape=(6, 4),
            loss="mse",
            reduction="sum",
            seed=100,
            exact=_exact_everywhere(_DEEP_LINEAR, *BOTH_TYPE2),
            statement=statement,
            source=TUTORIAL,
        ),
        Case(
            id="deep-linear[mse-mean-3batches]",
            architecture=_DEEP_LINEAR,
            input_shape=(4, 4),
            loss="mse",
            reduction="mean",
            num_batches=3,
            seed=101,
            exact=_exact_everywhere(_DEEP_LINEAR, *BOTH_TYPE2),
            quick=True,
            statement=statement,
            source=TUTORIAL,
        ),
    ]


def _expand_cases() -> list[Case]:
    statement = (
        "deep linear network with MSE on every shared position: KFAC-expand is the GGN block"
    )
    return [
        Case(
            id=f"expand-deep-linear[{name}]",
            architecture=_SHARED_LINEAR,
            input_shape=shape,
            loss="mse",
            reduction=reduction,
            seed=200 + index,
            exact={"type-2/expand": _all(_SHARED_LINEAR)},
            per_position=True,
            quick=quick,
            statement=statement,
            source=ESCHENHAGEN,
        )
        for index, (name, shape, reduction, quick) in enumerate(
            [("1-axis", (3, 4, 3), "mean", False), ("2-axes", (2, 3, 2, 3), "sum", True)]
        )
    ]


def _reduce_cases() -> list[Case]:
    cases = []
    for how in ("sum", "mean"):
        at_end = [*_POOLED_LINEAR, [how, [1]], ["linear", 4, 2, True]]
        cases.append(
            Case(
                id=f"reduce-deep-linear[{how}-pool]",
                architecture=at_end,
                input_shape=(4, 5, 3),
                loss="mse",
                reduction="mean",
                seed=300 + len(cases),
                exact={"type-2/reduce": _all(at_end), "type-2/expand": ("3",)},
                statement=f"deep linear network, shared axis {how}-pooled before the loss: KFAC-reduce is the GGN block",
                source=ESCHENHAGEN,
            )
        )
    middle = [*_POOLED_LINEAR, ["mean", [1]], *_AFTER_POOL]
    cases.append(
        Case(
            id="reduce-deep-linear[pool-in-middle]",
            architecture=middle,
            input_shape=(3, 4, 3),
            loss="mse",
            reduction="sum",
            seed=310,
            exact={"type-2/reduce": _all(middle), "type-2/expand": ("3", "4")},
            quick=True,
            statement="pooling in the middle: layers after it are exact in both flavours, layers before only with reduce",
            source=ESCHENHAGEN,
        )
    )
    return cases


def _conv_cases() -> list[Case]:
    reduce_net = [
        ["conv2d", 2, 3, 3, 2, 1, 1, True],
        ["conv2d", 3, 3, 1, 1, 0, 1, False],
        ["mean", [2, 3]],
        ["linear", 3, 2, True],
    ]
    pointwise_net = [["conv2d", 2, 3, 1, 1, 0, 1, True], ["conv2d", 3, 2, 1, 1, 0, 1, True]]
    last_strided_net = [["conv2d", 2, 3, 1, 1, 0, 1, False], ["conv2d", 3, 2, 3, 2, 1, 2, True]]
    # several taps and several channels on both sides of the exact layer: the patch order
    # (c_in, kh, kw) and the output channels are all exercised; 9 data, so that KFAC-reduce's
    # factors (rank at most N) have full rank and EKFAC's eigenbasis is unique where its
    # invariances compare two calls (design.md, "EKFAC")
    last_2x2_net = [
        ["conv2d", 2, 2, 1, 1, 0, 1, False],
        ["tanh"],
        ["conv2d", 2, 3, 2, 1, 0, 1, True],
    ]
    single_2x2_net = [["conv2d", 3, 4, 2, 2, 0, 1, True]]
    return [
        Case(
            id="conv-reduce[stride2-pad1-mean-pool]",
            architecture=reduce_net,
            input_shape=(3, 2, 6, 6),
            loss="mse",
            reduction="sum",
            seed=400,
            exact={"type-2/reduce": _all(reduce_net), "type-2/expand": ("3",)},
            quick=True,
            statement="linear CNN (3x3 stride 2, then 1x1) mean-pooled before the loss: KFAC-reduce is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="conv-expand[1x1-per-pixel-mse]",
            architecture=pointwise_net,
            input_shape=(2, 2, 3, 3),
            loss="mse",
            reduction="mean",
            seed=401,
            exact={"type-2/expand": _all(pointwise_net)},
            statement="linear 1x1-convolution network with MSE on every pixel: KFAC-expand is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="conv-expand[last-layer-stride2-pad1-dil2]",
            architecture=last_strided_net,
            input_shape=(2, 2, 6, 6),
            loss="mse",
            reduction="sum",
            seed=402,
            exact={"type-2/expand": ("1",)},
            quick=True,
            statement="the last convolution (any stride/padding/dilation) with MSE on every pixel: KFAC-expand is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="conv-expand[last-layer-2x2-multichannel-tanh]",
            architecture=last_2x2_net,
            input_shape=(9, 2, 4, 4),
            loss="mse",
            reduction="mean",
            seed=403,
            exact={"type-2/expand": ("2",)},
            statement="the last convolution (2x2 taps, 2 to 3 channels, after tanh) with MSE on every pixel: KFAC-expand is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="conv-expand[single-layer-2x2-stride2-multichannel]",
            architecture=single_2x2_net,
            input_shape=(3, 3, 6, 6),
            loss="mse",
            reduction="sum",
            seed=404,
            exact={"type-2/expand": ("0",)},
            statement="a single convolution (2x2 taps, stride 2, 3 to 4 channels) with MSE on every pixel: KFAC-expand is exact",
            source=ESCHENHAGEN,
        ),
    ]


_EMBEDDING = (
    "Eschenhagen et al. 2023, KFAC-expand and KFAC-reduce, for an Embedding as the Linear "
    "layer it is on one-hot inputs (linear weight sharing over the sequence axis)"
)


def _new_layer_cases() -> list[Case]:
    """Conv1d, Conv3d and Embedding where the weight-sharing theorems make KFAC exact: the
    settings of the Conv2d and shared-Linear cases above, in other dimensions."""
    conv1d_reduce = [
        ["conv1d", 2, 3, 3, 2, 1, 1, True],
        ["conv1d", 3, 3, 1, 1, 0, 1, False],
        ["mean", [2]],
        ["linear", 3, 2, True],
    ]
    conv3d_last = [["conv3d", 2, 2, 1, 1, 0, 1, False], ["conv3d", 2, 2, 2, 1, 1, 2, True]]
    embedding_expand = [["embedding", 5, 3], ["linear", 3, 2, True]]
    embedding_reduce = [["embedding", 5, 3], ["linear", 3, 3, True], ["mean", [1]]]
    embedding_reduce.append(["linear", 3, 2, True])
    return [
        Case(
            id="conv1d-reduce[stride2-pad1-mean-pool]",
            architecture=conv1d_reduce,
            input_shape=(3, 2, 7),
            loss="mse",
            reduction="sum",
            seed=410,
            exact={"type-2/reduce": _all(conv1d_reduce), "type-2/expand": ("3",)},
            statement="linear 1-D CNN (3 taps, stride 2, then 1 tap) mean-pooled before the loss: KFAC-reduce is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="conv3d-expand[last-layer-pad1-dil2]",
            architecture=conv3d_last,
            input_shape=(2, 2, 3, 4, 3),
            loss="mse",
            reduction="mean",
            seed=411,
            exact={"type-2/expand": ("1",)},
            statement="the last 3-D convolution (2x2x2 kernel, padding, dilation) with MSE on every voxel: KFAC-expand is exact",
            source=ESCHENHAGEN,
        ),
        Case(
            id="embedding-expand[deep-linear-per-position]",
            architecture=embedding_expand,
            input_shape=(3, 4),
            loss="mse",
            reduction="sum",
            seed=412,
            exact={"type-2/expand": _all(embedding_expand)},
            statement="embedding and linear layer with MSE on every position: KFAC-expand is the GGN block",
            source=_EMBEDDING,
        ),
        Case(
            id="embedding-reduce[mean-pool]",
            architecture=embedding_reduce,
            input_shape=(4, 5),
            loss="mse",
            reduction="mean",
            seed=413,
            exact={"type-2/reduce": _all(embedding_reduce), "type-2/expand": ("3",)},
            statement="embedding and linear layers, sequence mean-pooled before the loss: KFAC-reduce is the GGN block",
            source=_EMBEDDING,
        ),
    ]


def _agreement_cases() -> list[Case]:
    """Problems where KFAC is not exact: candidates are compared with the reference."""
    return [
        Case(
            id="mlp[tanh-ce-batch]",
            architecture=[["linear", 5, 4, True], ["tanh"], ["linear", 4, 3, True]],
            input_shape=(8, 5),
            loss="ce",
            num_batches=2,
            seed=500,
            quick=True,
        ),
        Case(
            id="cnn[relu-ce]",
            architecture=[
                ["conv2d", 2, 3, 3, 1, 1, 1, True],
                ["relu"],
                ["conv2d", 3, 2, 2, 2, 0, 1, True],
                ["flatten"],
                ["linear", 8, 3, True],
            ],
            input_shape=(4, 2, 4, 4),
            loss="ce",
            reduction="sum",
            seed=501,
        ),
        Case(
            id="cnn[tanh-mse-feature-map]",
            architecture=[
                ["conv2d", 2, 3, 3, 1, 1, 1, True],
                ["tanh"],
                ["conv2d", 3, 2, 1, 1, 0, 1, False],
            ],
            input_shape=(3, 2, 3, 3),
            loss="mse",
            seed=502,
        ),
        Case(
            id="sequence[tanh-ce-per-position]",
            architecture=[
                ["linear", 3, 4, True],
                ["tanh"],
                ["linear", 4, 3, True],
                ["movedim", -1, 1],
            ],
            input_shape=(3, 4, 3),
            loss="ce",
            seed=503,
            per_position=True,
            quick=True,
        ),
        Case(
            id="sequence[sigmoid-bce-mean-pool]",
            architecture=[
                ["linear", 3, 4, True],
                ["sigmoid"],
                ["mean", [1]],
                ["linear", 4, 2, True],
            ],
            input_shape=(3, 5, 3),
            loss="bce",
            reduction="sum",
            seed=504,
        ),
        Case(
            id="cnn[dilated-tanh-ce]",
            architecture=[
                ["conv2d", 2, 3, 3, 2, 1, 2, True],
                ["tanh"],
                ["conv2d", 3, 2, 2, 1, 1, 2, True],
                ["flatten"],
                ["linear", 18, 3, True],
            ],
            input_shape=(4, 2, 7, 7),
            loss="ce",
            seed=505,
        ),
        Case(
            id="cnn1d[tanh-ce]",
            architecture=[
                ["conv1d", 2, 3, 3, 1, 1, 1, True],
                ["tanh"],
                ["conv1d", 3, 2, 2, 2, 0, 1, True],
                ["flatten"],
                ["linear", 6, 3, True],
            ],
            input_shape=(4, 2, 6),
            loss="ce",
            seed=506,
        ),
        Case(
            id="cnn3d[sigmoid-mse-feature-map]",
            architecture=[
                ["conv3d", 1, 2, 2, 1, 1, 1, True],
                ["sigmoid"],
                ["conv3d", 2, 2, 2, 2, 0, 1, True],
            ],
            input_shape=(3, 1, 3, 3, 3),
            loss="mse",
            seed=507,
        ),
        Case(
            id="embedding[tanh-bce-mean-pool]",
            architecture=[
                ["embedding", 6, 3],
                ["tanh"],
                ["mean", [1]],
                ["linear", 3, 2, True],
            ],
            input_shape=(4, 5),
            loss="bce",
            reduction="sum",
            seed=508,
        ),
    ]


_IDENTICAL_INPUTS = (
    "every datum has the same input (only the labels differ), so every layer sees one input a "
    "for all data: the EF block is aa^T (x) sum_n g_n g_n^T and the GGN block likewise, and "
    "KFAC type-2 and KFAC-empirical are exact on the whole data set"
)


_REPEATED_DATUM = "one-datum exactness (KFAC tutorial, arXiv 2507.05127) with the datum repeated"


def _several_data_cases() -> list[Case]:
    """Exactness on several data for the empirical Fisher (which no other case has), and on
    batches of unequal sizes."""
    deep_linear = Case(
        id="deep-linear[mse-mean-uneven-batches]",
        architecture=_DEEP_LINEAR,
        input_shape=(2, 4),
        loss="mse",
        reduction="mean",
        num_batches=3,
        batch_sizes=(2, 5, 3),
        seed=102,
        exact=_exact_everywhere(_DEEP_LINEAR, *BOTH_TYPE2),
        statement="deep linear network with MSE: KFAC type-2 is the GGN block on a whole data "
        "set, in batches of unequal sizes",
        source=TUTORIAL,
    )
    every_fisher = (*BOTH_TYPE2, "empirical/expand", "empirical/reduce")
    mse_mlp = [["linear", 4, 3, True], ["tanh"], ["linear", 3, 2, True]]
    ce_mlp = [["linear", 4, 3, True], ["sigmoid"], ["linear", 3, 3, False]]
    return [
        deep_linear,
        Case(
            id="identical-inputs-mlp[mse-mean-uneven-batches]",
            architecture=mse_mlp,
            input_shape=(1, 4),
            loss="mse",
            num_batches=3,
            batch_sizes=(1, 3, 2),
            identical_inputs=True,
            seed=600,
            exact=_exact_everywhere(mse_mlp, *every_fisher),
            statement=_IDENTICAL_INPUTS,
            source=_REPEATED_DATUM,
        ),
        Case(
            id="identical-inputs-mlp[ce-sum]",
            architecture=ce_mlp,
            input_shape=(5, 4),
            loss="ce",
            reduction="sum",
            identical_inputs=True,
            seed=601,
            exact=_exact_everywhere(ce_mlp, *every_fisher),
            statement=_IDENTICAL_INPUTS,
            source=_REPEATED_DATUM,
        ),
    ]


CANONICAL_CASES: list[Case] = [
    *_one_datum_cases(),
    *_deep_linear_cases(),
    *_expand_cases(),
    *_reduce_cases(),
    *_conv_cases(),
    *_new_layer_cases(),
    *grouped_exact_cases(),
    *_several_data_cases(),
]
AGREEMENT_CASES: list[Case] = [*_agreement_cases(), *grouped_agreement_cases()]
ALL_CASES: dict[str, Case] = {case.id: case for case in [*CANONICAL_CASES, *AGREEMENT_CASES]}

# Case, LOSSES and draw_labels live in cases/case.py; importers of this module keep them
__all__ = ["AGREEMENT_CASES", "ALL_CASES", "CANONICAL_CASES", "LOSSES", "Case", "draw_labels"]
