"""The framework-neutral core of the runners for other frameworks: numpy only, no torch, no JAX.

A runner for another framework (``conformance/jax/``) supplies a candidate that meets
:class:`~kfac_conformance.neutral.candidate.FrameworkCandidate` (numpy factors from a stored
case) and calls :func:`kfac_conformance.neutral.cli.main`; everything else lives here:

- :mod:`.fixtures`: the stored cases (``StoredCase``, ``load``, ``case_ids``): parameters,
  batches, exact blocks, the reference's KFAC and EKFAC answers, the counts;
- :mod:`.factors`: ``Factors`` (KFAC), ``EigenFactors`` (EKFAC), ``dense_block``,
  ``joint_order`` (the ``[W | b]`` permutation);
- :mod:`.comparison`: ``tolerance`` (by dtype), ``relative_error``, ``compare_layers``,
  ``diagnose``;
- :mod:`.statistics`: the t tests of ``mc/unbiased``;
- :mod:`.candidate`: the ``FrameworkCandidate`` protocol, ``Refused``, ``Unavailable`` and
  the optional ``MultiDeviceCandidate`` (``compute_on_devices``);
- :mod:`.plan`: ``Item`` and ``plan`` (exactness, ``mc/unbiased``, invariances, agreement,
  and for a runner that asks, ``distributed/kfac-<fisher type>``);
- :mod:`.transforms`: the cases the invariances compare with (other reduction, batches
  concatenated or split, data permuted) and a case's equal shards for W devices;
- :mod:`.checks`: each item's measurement, with the declared conventions converted;
- :mod:`.report` and :mod:`.runner`: the run and its report in the suite's JSON schema;
- :mod:`.cli`: the command line.

Conventions and tolerances are the suite's own torch-free modules
(:mod:`kfac_conformance.contract.conventions`, :mod:`kfac_conformance.comparison.tolerances`).
"""
