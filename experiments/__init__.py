"""Research experiments on the streaming engine and its cache policies: ``python -m experiments.NAME``."""
