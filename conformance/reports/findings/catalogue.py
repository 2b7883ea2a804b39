"""Every finding of docs/findings.md as a record (the types are in ``records``).

Each source reference was read at the pinned release and at the development head below
(fetched 2026-12-05). A finding's matrix cells are not repeated here: they are the entries of
``conformance/adapters/xfail/*.txt`` whose reason names the finding (``cells.py``).
"""

from __future__ import annotations

from kfac_conformance.reports.findings.records import Finding, Head, Source, validate

HEADS = {
    "curvlinops": Head("f-dangel/curvlinops", "63fd690de70ce4f59a3361e6e3d89c71035845db", "2026-05-09"),
    "asdl": Head("kazukiosawa/asdl", "b7afcaabd6d9c4501f1466f8d4610d238bfc2e87", "2024-12-05"),
    "backpack": Head("f-dangel/backpack", "366bcd603cb48e561155919537565e03f4574825", "2025-11-27"),
    "kronfluence": Head("pomonam/kronfluence", "884255f359e9b7d3d127f94c076901a838d63b09", "2024-07-30"),
    "nngeometry": Head("tfjgeorge/nngeometry", "c04b984ff97fbdbf849c4aa561e112751a79fc17", "2026-03-31"),
    "kfac-jax": Head("google-deepmind/kfac-jax", "babd85368ca209861ac947c829c0cf57592f7d22", "2026-08-19"),
    "laplace": Head("aleximmer/Laplace", "44ea62ac1f8cfd6f797f31c75e2cf34414fdddae", "2025-04-22"),
}  # fmt: skip

CURVLINOPS = "curvlinops-for-pytorch==3.0.1"
ASDL = "asdfghjkl==0.1a5"
BACKPACK = "backpack-for-pytorch==1.7.1"
NNGEOMETRY = "nngeometry==0.4"
KRONFLUENCE = "kronfluence==1.0.1"
LAPLACE = "laplace-torch==0.3"
KFAC_JAX = "kfac-jax==0.0.8"

FINDINGS = (
    Finding(
        id="C1",
        libraries=("curvlinops",),
        title="type-2 KFAC mixes the loss terms of one example",
        classification="bug",
        pinned=(CURVLINOPS,),
        at_head="unchanged: outputs with more than two axes are still flattened into rows, and "
        "each column of the loss Hessian's square root is backpropagated for all rows at once "
        "(`computers/_base.py` `_rearrange_for_larger_than_2d_output`, "
        "`computers/kfac_hooks.py` `_compute_loss_and_backward`)",
        cause=(Source("3.0.1", "curvlinops/kfac.py", "595-619"),),
        documented=(
            Source(
                "3.0.1",
                "curvlinops/kfac.py",
                "235-241",
                "for the ``MSELoss`` and ``BCEWithLogitsLoss`` it will be the size of the last "
                "dimension of the the model outputs/targets (our convention here).",
            ),
        ),
        repros=("docs/repro/curvlinops_type2_loss_terms.py",),
        upstream="docs/upstream/curvlinops-C1.md",
    ),
    Finding(
        id="A1",
        libraries=("asdl",),
        title="`FISHER_MC` is too small by a factor `n_mc_samples`",
        classification="bug",
        pinned=(ASDL, "asdfghjkl==0.1a4"),
        at_head="unchanged (the head differs from the v0.1a5 tag in its version number only)",
        cause=(
            Source("0.1a5", "asdl/fisher.py", "454-459"),
            Source("0.1a5", "asdl/fisher.py", "486-489"),
        ),
        repros=("docs/repro/asdl_mc_scale.py",),
        upstream="docs/upstream/asdl-A1.md",
    ),
    Finding(
        id="A2",
        libraries=("asdl",),
        title="shared axes give silent, wrong factors",
        classification="limitation",
        pinned=(ASDL, "asdfghjkl==0.1a4"),
        at_head="unchanged (the head differs from the v0.1a5 tag in its version number only)",
        cause=(
            Source("0.1a5", "asdl/fisher.py", "473"),
            Source("0.1a5", "asdl/operations/linear.py", "155-156"),
            Source("0.1a5", "asdl/operations/embedding.py", "35-46"),
            # laplace-torch's asdfghjkl: positions flattened into rows, A summed over them
            Source("0.1a4", "asdl/operations/linear.py", "21-25"),
            Source("0.1a4", "asdl/operations/linear.py", "76-77"),
        ),
        repros=("docs/repro/asdl_shared_axes.py", "docs/repro/asdl_embedding_shared_axes.py"),
    ),
    Finding(
        id="B1",
        libraries=("backpack",),
        title="Conv1d, Conv2d and Conv3d KFAC is |T| times KFC, with the gradient factor of "
        "KFAC-reduce",
        classification="convention difference",
        pinned=(BACKPACK,),
        at_head="unchanged, with the same documentation (`hbp/convnd.py`, `hbp/conv1d.py` and "
        "`hbp/conv3d.py` are identical to 1.7.1's)",
        cause=(
            Source("1.7.1", "backpack/extensions/secondorder/hbp/convnd.py", "124-152"),
            # Conv1d and Conv3d are the same class in one and three dimensions
            Source("1.7.1", "backpack/extensions/secondorder/hbp/conv1d.py", "6-11"),
            Source("1.7.1", "backpack/extensions/secondorder/hbp/conv3d.py", "6-11"),
        ),
        documented=(
            Source(
                "1.7.1",
                "backpack/extensions/secondorder/hbp/convnd.py",
                "55-61",
                "TODO The Kronecker factor computed from the backpropagated quantity differs "
                "from the KFC paper (https://arxiv.org/pdf/1602.01407.pdf) by a factor of "
                "|Τ| = H * W where H, W denote the spatial output dimensions of the convolution.",
            ),
            Source(
                "1.7.1",
                "backpack/extensions/secondorder/hbp/convnd.py",
                "132-136",
                "In comparison to the KFC paper, the output differs by a factor of |Τ|. This is "
                "because |Τ| * Γ is the MC/exact GGN w.r.t. the convolution's bias.",
            ),
        ),
        repros=(
            "docs/repro/backpack_conv2d_hybrid.py",
            "docs/repro/backpack_conv1d_conv3d_hybrid.py",
        ),
    ),
    Finding(
        id="B2",
        libraries=("backpack",),
        title="KFRA is not type-2 KFAC on several data",
        classification="approximation by design",
        pinned=(BACKPACK,),
        at_head="unchanged",
        cause=(Source("1.7.1", "backpack/extensions/secondorder/hbp/hbpbase.py", "25-35"),),
        documented=(
            Source(
                "1.7.1",
                "backpack/extensions/secondorder/hbp/__init__.py",
                "182-184",
                "Practical Gauss-Newton Optimisation for Deep Learning "
                "<http://proceedings.mlr.press/v70/botev17a.html>`_ by Aleksandar Botev, "
                "Hippolyt Ritter and David Barber, 2017.",
            ),
        ),
        repros=("docs/repro/backpack_kfra_multi_datum.py",),
    ),
    Finding(
        id="B3",
        libraries=("backpack",),
        title="KFRA with `MSELoss` fails on float64 models",
        classification="bug",
        pinned=(BACKPACK,),
        at_head="unchanged: the batch-averaged MSE Hessian is still `2 * eye(D, device=...)`",
        cause=(Source("1.7.1", "backpack/core/derivatives/mseloss.py", "69-70"),),
        repros=("docs/repro/backpack_kfra_float64.py",),
        upstream="docs/upstream/backpack-B3.md",
    ),
    Finding(
        id="N1",
        libraries=("nngeometry",),
        title='`FIM(variant="classif_logits")` fails on float64 models',
        classification="bug",
        pinned=(NNGEOMETRY,),
        at_head="fixed on the main branch, not yet released (commits b602bf2 and 268854b, "
        "2025-04-14 and -16): the closed form uses cumulative sums in the logits' dtype and "
        "`torch.finfo(p.dtype).eps`, and no longer concatenates a 2d tensor to the outputs, "
        "so cross-entropy on (N, C, H, W) outputs no longer crashes either (both checked by running "
        "docs/repro/nngeometry_float64_classif.py and a one-Conv2d case against the head's source)",
        cause=(Source("0.4", "nngeometry/metrics.py", "168-188"),),
        repros=("docs/repro/nngeometry_float64_classif.py",),
        fixed_in="b602bf2ca22a3244fdda44b0e86df543afd933b2",
        upstream="docs/upstream/nngeometry-N1.md",
    ),
    Finding(
        id="G1",
        libraries=("curvlinops", "asdl", "nngeometry", "kronfluence"),
        title="a module applied twice gives an answer without an error",
        classification="limitation",
        pinned=(CURVLINOPS, ASDL, NNGEOMETRY, KRONFLUENCE),
        at_head="curvlinops documents the limitation of its default `hooks` backend and offers "
        '`backend="make_fx"` for weight-tied architectures; ASDL, nngeometry and kronfluence '
        "unchanged",
        cause=(
            Source("3.0.1", "curvlinops/kfac.py", "806-823"),
            Source("3.0.1", "curvlinops/ekfac.py", "552"),
            Source("3.0.1", "curvlinops/ekfac.py", "582"),
            Source("1.0.1", "kronfluence/module/tracker/factor.py", "98-123"),
            Source("1.0.1", "kronfluence/module/tracker/factor.py", "257-268"),
        ),
        documented=(
            Source(
                "head",
                "curvlinops/kfac.py",
                "119-122",
                "The ``hooks`` backend assumes each module is called exactly once per forward "
                "pass. Weight tying (same module called multiple times) will silently produce "
                'incorrect results. Use ``backend="make_fx"`` for weight-tied architectures.',
            ),
            Source(
                "1.0.1",
                "kronfluence/arguments.py",
                "62-65",
                "Indicates whether shared parameters are present in the model's forward pass.",
            ),
        ),
        repros=(
            "docs/repro/weight_tying.py",
            "docs/repro/curvlinops_head_weight_tying.py",
            "docs/repro/kronfluence_weight_tying.py",
        ),
    ),
    Finding(
        id="K1",
        libraries=("kronfluence",),
        title="G is averaged over positions as well as examples",
        classification="convention difference",
        pinned=(KRONFLUENCE,),
        at_head="unchanged (the head differs from the v1.0.1 tag in its README only)",
        cause=(
            Source("1.0.1", "kronfluence/module/linear.py", "31-49"),
            Source("1.0.1", "kronfluence/factor/eigen.py", "199"),
            Source("1.0.1", "kronfluence/factor/config.py", "201"),
        ),
        repros=("docs/repro/kronfluence_shared_axes_scale.py",),
    ),
    Finding(
        id="L1",
        libraries=("laplace",),
        title="the regression empirical Fisher is twice that of its likelihood",
        classification="bug",
        pinned=(LAPLACE, "asdfghjkl==0.1a4", CURVLINOPS, BACKPACK),
        at_head="unchanged: `factor = 0.5` still multiplies the empirical Fisher of "
        '`MSELoss(reduction="sum")`',
        cause=(
            Source("head", "laplace/curvature/curvature.py", "62-67"),
            Source("head", "laplace/curvature/curvature.py", "493"),
        ),
        documented=(
            Source(
                "head",
                "laplace/curvature/curvature.py",
                "41-43",
                "factor : float conversion factor between torch losses and base likelihoods "
                "For example, \\(\\frac{1}{2}\\) to get to \\(\\mathcal{N}(f, 1)\\) from MSELoss.",
            ),
            Source(
                "head",
                "laplace/curvature/asdl.py",
                "248",
                "curv_factor = 0.5  # correct scaling for diag ef",
            ),
        ),
        repros=("docs/repro/laplace_ef_regression_scale.py",),
        upstream="docs/upstream/laplace-L1.md",
    ),
    Finding(
        id="L2",
        libraries=("laplace",),
        title="an Embedding's Kronecker factors are read in a Linear layer's layout",
        classification="limitation",
        pinned=(LAPLACE, "asdfghjkl==0.1a4"),
        at_head="unchanged (`_get_kron_factors` and `Kron.init_from_model` as in 0.3)",
        cause=(
            Source("0.3", "laplace/curvature/asdl.py", "145-154"),
            Source("0.3", "laplace/utils/matrix.py", "62-73"),
        ),
        repros=("docs/repro/laplace_embedding_layout.py",),
    ),
    Finding(
        id="J1",
        libraries=("kfac-jax",),
        title="a dense layer with extra axes and a bias: the bias column ignores the mask",
        classification="bug",
        pinned=(KFAC_JAX,),
        at_head="unchanged (`RepeatedDenseKroneckerFactored.update_curvature_matrix_estimate`)",
        cause=(Source("0.0.8", "kfac_jax/_src/curvature_blocks/kronecker_factored.py", "537-564"),),
        documented=(
            Source(
                "0.0.8",
                "kfac_jax/_src/curvature_blocks/kronecker_factored.py",
                "472-474",
                "average_repeats: A decayed average of the per-case number of non-masked "
                "repeats in the data used to compute the block's statistics.",
            ),
        ),
        repros=("docs/repro/kfac_jax_repeated_dense_bias.py",),
        upstream="docs/upstream/kfac-jax-J1.md",
    ),
    Finding(
        id="J2",
        libraries=("kfac-jax",),
        title="a dilated convolution is answered as if undilated",
        classification="documented limitation",
        pinned=(KFAC_JAX,),
        at_head="unchanged",
        cause=(Source("0.0.8", "kfac_jax/_src/curvature_blocks/kronecker_factored.py", "647-656"),),
        documented=(
            Source(
                "0.0.8",
                "kfac_jax/_src/patches_second_moment.py",
                "720-722",
                "kernel_dilation: An integer or sequence of integers, specifying the dilation "
                "for the kernel. Currently, `patches_moments` does not support dilation, so "
                "the only allowed values are `None, 1, (1,1)`.",
            ),
        ),
        repros=("docs/repro/kfac_jax_conv2d_dilation.py",),
    ),
    Finding(
        id="J3",
        libraries=("kfac-jax",),
        title="`fisher_empirical` divides by the batch size twice: a scale no declaration fits",
        classification="convention difference",
        pinned=(KFAC_JAX,),
        at_head="unchanged (`block_diagonal.py` lines 117 and 761)",
        cause=(Source("0.0.8", "kfac_jax/_src/curvature_estimator/block_diagonal.py", "746-757"),),
        documented=(
            Source(
                "0.0.8",
                "kfac_jax/_src/curvature_estimator/block_diagonal.py",
                "113-119",
                "fisher_empirical - [...] This mode will introduce an additional normalization "
                "of the 2nd-order statistics by the batch size (on top of the normalization by "
                "batch size done in the curvature block classes).",
            ),
        ),
        repros=("docs/repro/kfac_jax_empirical_batch_size.py",),
    ),
)

validate(FINDINGS, HEADS)
FINDINGS_BY_ID = {finding.id: finding for finding in FINDINGS}
