"""The job: planning streams (``plan``), checks before Ray (``preflight``), the driver (``driver``) and what
it reports (``report``)."""
