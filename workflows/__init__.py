"""Workflows: the command lines and the Python the bundle names (synthetic data, and more as they land)."""
