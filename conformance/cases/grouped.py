"""Grouped convolutions (``groups > 1``): where KFAC is exact, and an agreement case.

KFAC of a grouped convolution is block-diagonal over the groups (one pair per group,
:class:`kfac_ref.factors.GroupedFactors`). It can be exact only where the exact block is too:
where the cross-group blocks vanish. They do when the groups' output channels stay apart up to
a loss that treats each output on its own (MSE): group ``g``'s parameters then move only the
outputs of its channels, so :math:`J_g^\\top J_{g'} = 0` for :math:`g \\ne g'` (MSE's Hessian
is a multiple of the identity). Each group is then an ungrouped convolution in one of the
exact settings of Eschenhagen et al. 2023 (the last layer with MSE on every position for
expand; a linear layer mean-pooled before MSE for reduce), and nothing further is claimed: a
layer after the grouped one that mixes the groups makes the cross-group blocks non-zero
(``tests/test_grouped_convolutions.py`` shows both).
"""

from __future__ import annotations

from kfac_conformance.cases.case import Case

_SOURCE = (
    "Eschenhagen et al. 2023, KFAC-expand and KFAC-reduce, per group: the groups' outputs stay "
    "apart up to an MSE loss, so the cross-group GGN blocks vanish"
)


def grouped_exact_cases() -> list[Case]:
    last_grouped = [
        ["conv2d", 2, 4, 1, 1, 0, 1, False],
        ["tanh"],
        ["conv2d", 4, 4, 2, 1, 1, 1, True, 2],
    ]
    depthwise_pooled = [
        ["conv1d", 2, 4, 3, 2, 1, 1, True],
        ["conv1d", 4, 4, 3, 1, 1, 2, True, 4],
        ["mean", [2]],
    ]
    return [
        Case(
            id="grouped-conv-expand[last-layer-2-groups]",
            architecture=last_grouped,
            input_shape=(3, 2, 3, 3),
            loss="mse",
            reduction="mean",
            seed=420,
            exact={"type-2/expand": ("2",)},
            statement="the last convolution, in 2 groups (2x2 taps, 2 to 2 channels each), with "
            "MSE on every pixel: KFAC-expand is exact, block-diagonal over the groups",
            source=_SOURCE,
        ),
        Case(
            id="grouped-conv-reduce[depthwise-mean-pool]",
            architecture=depthwise_pooled,
            input_shape=(3, 2, 7),
            loss="mse",
            reduction="sum",
            seed=421,
            exact={"type-2/reduce": ("1",)},
            statement="a depthwise 1-D convolution (groups = channels = 4, 3 taps, dilation 2) "
            "as the last layer, mean-pooled before MSE: KFAC-reduce is exact",
            source=_SOURCE,
        ),
    ]


def grouped_agreement_cases() -> list[Case]:
    return [
        Case(
            id="grouped-cnn[tanh-ce]",
            architecture=[
                ["conv2d", 4, 4, 3, 1, 1, 1, True, 2],
                ["tanh"],
                ["conv2d", 4, 2, 2, 2, 0, 1, True],
                ["flatten"],
                ["linear", 8, 3, True],
            ],
            input_shape=(4, 4, 4, 4),
            loss="ce",
            seed=509,
        )
    ]
