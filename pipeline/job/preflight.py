"""Checks the driver runs before Ray starts, so a bad model or policy fails in a second, not on an actor."""

from __future__ import annotations

import logging
from pathlib import Path

from cache_policies import PolicyConfigError
from longread.models import is_default_model, model_geometry
from pipeline.config import BaseJobConfig

log = logging.getLogger(__name__)


def check_model(cfg: BaseJobConfig, remote: bool) -> None:
    """The model must be on this machine (on a cluster only a warning: the nodes may have it)."""
    source = cfg.model.source
    if is_default_model(source):
        return
    if not Path(source).expanduser().exists():
        message = (
            f"model {source!r} is not a local folder or .gguf file on this machine; longread never downloads "
            "weights at run time: download the model and pass its folder, or use 'default'."
        )
        if not remote:
            raise FileNotFoundError(message)
        log.warning("%s (continuing: the cluster's nodes may have it)", message)


def check_policy_fits_model(cfg: BaseJobConfig) -> None:
    """Policies that depend on the model's depth (LaCache's ladder) fail here, before any actor starts."""
    geometry = model_geometry(cfg.model.source, cfg.model.trust_remote_code)
    if geometry is None:
        return  # a .gguf file, or a model only the cluster's nodes have: the actors will check
    layers, heads = geometry
    try:
        cfg.policy.build().bind(layers, heads)
    except PolicyConfigError as exc:
        raise ValueError(
            f"policy does not fit model {cfg.model.display_name} ({layers} layers): {exc}"
        ) from None
