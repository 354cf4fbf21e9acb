"""Research experiments on the streaming engine and its cache policies (``python -m experiments.NAME``):
perplexity, passkey retrieval, the output-quality evaluation (``longread-eval``) and the plots."""
