"""The check families, one module each; ``kfac_conformance.catalogue`` collects them."""
