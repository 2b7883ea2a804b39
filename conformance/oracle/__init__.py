"""The exact curvature by automatic differentiation; it knows nothing of KFAC."""
