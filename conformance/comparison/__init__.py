"""How answers are compared: dtype-aware tolerances, block comparison, the diagnosis of a
failure and the evidence kept with it. ``tolerances`` is torch-free (the JAX runner shares it)."""
