"""A minimal, readable reference KFAC: the math is in the docstrings beside the code.

Read in this order: :mod:`kfac_ref.factors` (the result), :mod:`kfac_ref.losses` (``R``, the
criterion and its Hessian factorisation), :mod:`kfac_ref.backpropagated` (the vectors per
Fisher type), :mod:`kfac_ref.layers` (factor sums per layer type and flavour) and
:mod:`kfac_ref.compute` (the scaffold); then :mod:`kfac_ref.ekfac` (EKFAC's corrected
eigenvalues), :mod:`kfac_ref.labels` (the labels MC draws) and :mod:`kfac_ref.data_parallel`
(KFAC over the shards of a ``torch.distributed`` group: sums and counts all-reduced).
"""

from kfac_ref.compute import compute_kfac
from kfac_ref.ekfac import compute_ekfac
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors
from kfac_ref.labels import sampled_labels

__all__ = [
    "EKFACFactors",
    "GroupedFactors",
    "KroneckerFactors",
    "compute_ekfac",
    "compute_kfac",
    "sampled_labels",
]
