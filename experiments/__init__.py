"""Experiments: evaluations and plots that measure longread's output quality, run from the command line."""
