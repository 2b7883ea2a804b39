"""The bug zoo: deliberately wrong KFAC candidates, each one pitfall real implementations have had.

Every mutant is the reference (``kfac_ref``) with one mistake planted for the duration of a
call (patches are context managers, undone whatever happens) or applied to its result. The
class docstring states the pitfall and the checks expected to kill it; ``killers`` lists them
as ``check_id`` or ``check_id[case_id]`` of the default profile. A mutant that survives its
killers is a missing check, not a bad mutant.

Importable as ``zoo`` from ``tests/`` (pytest puts that folder on the path) and by path from
the repository root (``kfac_conformance.reports.kill_matrix`` does that).
"""

from __future__ import annotations

from .base import Mutant
from .claims import ConvIgnoresDilation, TiedModuleMixesUses, UnequalBatchesWeightedEqually
from .curvature import CeSqrtWithoutRankOne, EmpiricalFromBatchGradient, Type2AnswersEmpirical
from .distributed import DISTRIBUTED_MUTANTS
from .ekfac import (
    EkfacBasisFromWrongFactor,
    EkfacEigenvaluesTooLarge,
    EkfacEigenvectorsAsRows,
    EkfacFromBatchGradient,
    EkfacReductionFactorMissing,
    EkfacTransposedS,
    EkfacUncorrected,
)
from .layers import (
    Conv1dChannelsLastInPatch,
    Conv3dKernelAxesReversed,
    EmbeddingCountsForReduce,
    GroupedConvFirstGroupInputs,
)
from .layout import (
    AccumulatesState,
    Float32Internally,
    JointCrossTermsDropped,
    JointOnesFirst,
    KroneckerOrderSwapped,
)
from .monte_carlo import (
    McConvBlockSixteenth,
    McGaussianUnitVariance,
    McGlobalRng,
    McNormalisedByM,
    McOneSampleRepeated,
    McTrueLabels,
)
from .reduction import (
    MseMeanOverDataOnly,
    ReductionFactorMissing,
    ReductionFactorSquared,
    ReductionPerBatch,
)
from .sharing import (
    ConvPatchesIgnoreGeometry,
    ExpandNormalisedByData,
    ReduceAveragesGrads,
    ReduceSumsInputs,
)

MUTANTS: list[type[Mutant]] = [
    KroneckerOrderSwapped,
    ReductionFactorMissing,
    ReductionFactorSquared,
    MseMeanOverDataOnly,
    ReductionPerBatch,
    JointOnesFirst,
    JointCrossTermsDropped,
    McNormalisedByM,
    McTrueLabels,
    McGaussianUnitVariance,
    McOneSampleRepeated,
    McGlobalRng,
    CeSqrtWithoutRankOne,
    Type2AnswersEmpirical,
    EmpiricalFromBatchGradient,
    ExpandNormalisedByData,
    ReduceSumsInputs,
    ReduceAveragesGrads,
    ConvPatchesIgnoreGeometry,
    AccumulatesState,
    Float32Internally,
    EkfacUncorrected,
    EkfacFromBatchGradient,
    EkfacTransposedS,
    EkfacBasisFromWrongFactor,
    EkfacReductionFactorMissing,
    EkfacEigenvaluesTooLarge,
    EkfacEigenvectorsAsRows,
    McConvBlockSixteenth,
    ConvIgnoresDilation,
    TiedModuleMixesUses,
    UnequalBatchesWeightedEqually,
    Conv1dChannelsLastInPatch,
    Conv3dKernelAxesReversed,
    EmbeddingCountsForReduce,
    GroupedConvFirstGroupInputs,
]
MUTANTS_BY_NAME: dict[str, type[Mutant]] = {mutant.__name__: mutant for mutant in MUTANTS}

__all__ = ["DISTRIBUTED_MUTANTS", "MUTANTS", "MUTANTS_BY_NAME", "Mutant"]
