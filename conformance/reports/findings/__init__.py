"""The findings of docs/findings.md as data: the records (``records``, ``catalogue``), their
matrix cells (``cells``, read from the expected-failure files), the reproduction scripts
(``repros``), their measurement (``measure``) and the page rendered from them (``render``,
``store``). ``nox -s findings`` drives them: ``python -m kfac_conformance.reports.findings``."""
