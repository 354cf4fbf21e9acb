"""Inputs: expanding paths into files (``sources``) and reading them incrementally (``readers``)."""
