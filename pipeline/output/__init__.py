"""Output: the one row schema (``schema``) and the Parquet parts, checkpoints and job records (``writer``)."""
