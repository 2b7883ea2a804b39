"""The claim space as data, and the checks that exercise each point of it
(``kfac-conformance coverage``).

- :mod:`~kfac_conformance.coverage.space`: the dimensions a candidate can claim or a problem
  can vary, the values a claim spans, what each cell requires, and the crossings excluded by
  definition (with their reasons);
- :mod:`~kfac_conformance.coverage.features`: where one candidate call lies in that space,
  derived from the problem and the request;
- :mod:`~kfac_conformance.coverage.recording`: the plan run against a recording reference,
  giving the map of cells to checks;
- :mod:`~kfac_conformance.coverage.render`: the map as text, JSON or markdown.
"""
