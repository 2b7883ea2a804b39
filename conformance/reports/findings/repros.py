"""The reproduction scripts of docs/repro/ and the environment each needs.

Standard library only: the noxfile loads this module by path to know which environments
``nox -s findings`` must build, before anything is installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Repro:
    """A standalone script that needs torch (or JAX) and the libraries of ``extra`` only,
    and prints its key numbers as one JSON object on its last line."""

    path: str  # relative to the repository root
    extra: str  # the pyproject.toml extras its environment installs (comma-separated), or a
    # key of HEAD_INSTALLS

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1].removesuffix(".py")


# environments with a library at the development head that was read (not in a release yet):
# name -> (the extra installed first, the pip requirement installed over it)
HEAD_INSTALLS = {
    "curvlinops-head": (
        "curvlinops",
        "curvlinops-for-pytorch @ git+https://github.com/f-dangel/curvlinops"
        "@63fd690de70ce4f59a3361e6e3d89c71035845db",
    ),
}

REPROS = (
    Repro("docs/repro/curvlinops_type2_loss_terms.py", "curvlinops"),
    Repro("docs/repro/asdl_mc_scale.py", "asdl"),
    Repro("docs/repro/asdl_shared_axes.py", "asdl"),
    Repro("docs/repro/asdl_embedding_shared_axes.py", "asdl"),
    Repro("docs/repro/backpack_conv2d_hybrid.py", "backpack"),
    Repro("docs/repro/backpack_conv1d_conv3d_hybrid.py", "backpack"),
    Repro("docs/repro/backpack_kfra_multi_datum.py", "backpack"),
    Repro("docs/repro/backpack_kfra_float64.py", "backpack"),
    Repro("docs/repro/nngeometry_float64_classif.py", "nngeometry"),
    Repro("docs/repro/nngeometry_ekfac_uncorrected.py", "nngeometry"),
    # the three libraries that answer a tied layer silently, side by side
    Repro("docs/repro/weight_tying.py", "curvlinops,asdl,nngeometry"),
    Repro("docs/repro/curvlinops_head_weight_tying.py", "curvlinops-head"),
    Repro("docs/repro/kronfluence_shared_axes_scale.py", "kronfluence"),
    Repro("docs/repro/kronfluence_weight_tying.py", "kronfluence"),
    Repro("docs/repro/laplace_ef_regression_scale.py", "laplace"),
    Repro("docs/repro/laplace_embedding_layout.py", "laplace"),
    Repro("docs/repro/kfac_jax_repeated_dense_bias.py", "jax"),
    Repro("docs/repro/kfac_jax_conv2d_dilation.py", "jax"),
    Repro("docs/repro/kfac_jax_empirical_batch_size.py", "jax"),
)
