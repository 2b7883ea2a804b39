"""The check families, one module each; ``kfac_conformance.checks.catalogue`` collects them."""
