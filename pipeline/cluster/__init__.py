"""Ray plumbing: joining or starting a cluster and sizing actors (``session``), the job-wide stop flag,
metrics, allocator settings for actor processes (``memory``), ``ray job submit`` detection (``submit``) and
Ray's console noise (``raylog``)."""
