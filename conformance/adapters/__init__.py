"""Adapters that put third-party KFAC libraries behind the candidate contract.

One module per library; each imports its library lazily, inside ``compute``, so importing
``kfac_conformance`` (or this package) never needs the libraries. Each declares the library it
needs (``requires``, a :class:`kfac_conformance.contract.loading.Requirement`): loading an
adapter whose library is absent fails at once, with the command that installs it. Every adapter converts the
library's factors by that library's own, verified conventions only (factor order, bias
layout, normalisation); it never rescales to make a check pass. Where a library's answer
differs from the suite's definition, the difference is written up in ``docs/findings.md``
and listed in ``conformance/adapters/xfail/<candidate>.txt``.

Candidates, registered under these names in the entry-point group
``kfac_conformance.candidates`` (``pyproject.toml``):

- ``curvlinops``: :class:`kfac_conformance.adapters.curvlinops.CurvlinopsCandidate`
- ``curvlinops-ekfac``: :class:`kfac_conformance.adapters.curvlinops.CurvlinopsEKFACCandidate`
  (EKFAC only)
- ``backpack-kfac``, ``backpack-kflr``, ``backpack-kfra``:
  :mod:`kfac_conformance.adapters.backpack` (``BackpackKFACCandidate`` etc.)
- ``asdl``: :class:`kfac_conformance.adapters.asdl.AsdlCandidate`
- ``nngeometry``: :class:`kfac_conformance.adapters.nngeometry.NngeometryCandidate`
- ``kronfluence-kfac``, ``kronfluence-ekfac``: :mod:`kfac_conformance.adapters.kronfluence`
  (``KronfluenceKFACCandidate``, ``KronfluenceEKFACCandidate``)
- ``laplace-curvlinops``, ``laplace-asdl``, ``laplace-backpack``:
  :mod:`kfac_conformance.adapters.laplace` (laplace-torch's ``KronLaplace`` per backend)
- ``nngeometry-ekfac``: :class:`kfac_conformance.adapters.nngeometry.NngeometryEKFACCandidate`
  (EKFAC only)
"""
