"""Thin front ends over the one run API: the CLI, the pytest plugin, and
``parametrize_with_checks``. Torch-free at import: pytest loads the plugin in every run."""
