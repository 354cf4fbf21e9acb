"""Checks the driver runs before Ray starts, so a bad model, policy or set of inputs fails in seconds, not
after Ray has started and every actor has loaded the model."""

from __future__ import annotations

import logging
from pathlib import Path

from cache_policies import PolicyConfigError
from longread.models import is_default_model, model_geometry
from pipeline.config import BaseJobConfig
from pipeline.inputs.sources import SourceFile

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


class InputsError(ValueError):
    """No input can be read: the job would write only error rows, so it does not start."""


#: Inputs named in the one line that lists the bad ones.
SHOWN_INPUTS = 5


def check_inputs(sources: list[SourceFile]) -> None:
    """Inputs known to be bad before anything is read (missing, a glob or folder with nothing, a pipe or
    device, access denied while listing): when that is all of them, ``InputsError`` names them; when it is
    some, one warning line lists them before Ray starts (they still become error rows)."""
    bad = [s for s in sources if s.error is not None]
    if not bad:
        return
    listed = ", ".join(f"{s.display} [{s.error[0]}]" for s in bad[:SHOWN_INPUTS] if s.error)
    if len(bad) > SHOWN_INPUTS:
        listed += f" and {len(bad) - SHOWN_INPUTS} more"
    if len(bad) == len(sources):
        first = bad[0].error[1] if bad[0].error else ""
        raise InputsError(
            f"none of the {len(bad)} inputs can be read: {listed}. The first: {first} Fix input.paths "
            "(--input) and run again."
        )
    log.warning("%d of %d inputs cannot be read and become error rows: %s", len(bad), len(sources), listed)
