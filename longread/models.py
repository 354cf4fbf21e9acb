"""Load a causal LM and its tokenizer from local files only; name a model source and read its geometry.

``source`` is one of: ``None`` / ``"default"`` (the embedded SmolLM2-135M-Instruct, see
``longread.assets``), a local Hugging Face model directory, or a ``.gguf`` file. Hub ids are refused:
longread never downloads weights at run time. ``trust_remote_code`` stays off unless asked for.

This module is the one place that knows what ``"default"`` means (``is_default_model``, ``model_path``,
``model_name``) and the one place that reads a model's geometry before loading it (``model_geometry``,
through transformers' ``AutoConfig``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_4")
#: FlashAttention generations: the package each needs, and the oldest GPU it runs on (compute capability).
FLASH = {
    "flash_attention_2": ("FlashAttention 2", "flash-attn (the `gpu` extra; compiles from source)", 8),
    "flash_attention_4": ("FlashAttention 4", "flash-attn-4 (the `fa4` extra; prebuilt wheels)", 9),
}
#: Names of the embedded model; every other source is a path.
DEFAULT_MODEL_NAMES = ("default", "smollm2")


def is_default_model(source: str | os.PathLike[str] | None) -> bool:
    return source is None or str(source) in DEFAULT_MODEL_NAMES


def model_name(source: str | os.PathLike[str] | None) -> str:
    """The name rows and logs give a model: the embedded model's, else the folder or file name."""
    from longread.assets import MODEL_NAME

    if is_default_model(source):
        return MODEL_NAME
    return Path(str(source)).name or str(source)


def model_path(source: str | os.PathLike[str] | None) -> Path:
    """Where a source's files are on this machine (the embedded model's folder is not converted here)."""
    if is_default_model(source):
        from longread.assets import default_model_path

        return default_model_path()
    return Path(str(source)).expanduser()


def model_geometry(
    source: str | os.PathLike[str] | None, trust_remote_code: bool = False
) -> tuple[int, int] | None:
    """``(layers, key/value heads)`` of a local model folder, from its config alone (no weights loaded).

    None when this machine has no readable config for it (a ``.gguf`` file, a folder only the cluster's
    nodes have, an architecture this transformers does not know): the loader reports those.
    """
    from transformers import AutoConfig

    folder = model_path(source)
    if not (folder / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError):
        return None
    text = config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return int(text.num_hidden_layers), int(heads)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}.") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode on ``device`` (default: CUDA if present, else CPU)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach a hub
    torch_dtype = resolve_dtype(dtype)
    device = device or default_device()
    _check_attention(attn_implementation, device, torch_dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    model, tokenizer = _from_files(source, kwargs, trust_remote_code)
    model.to(device)
    model.eval()
    return model, tokenizer


def _check_attention(attn_implementation: str, device: str, dtype: torch.dtype) -> None:
    """Refuse, before any weights load, an attention implementation this machine cannot run: FlashAttention
    needs CUDA, half precision, a recent enough GPU and its package."""
    if attn_implementation not in ATTENTION:
        raise ValueError(f"attn_implementation={attn_implementation!r}; use one of {ATTENTION}.")
    if attn_implementation not in FLASH:
        return
    name, package, major = FLASH[attn_implementation]
    if not device.startswith("cuda"):
        raise ValueError(f"{name} needs a CUDA device; use attn_implementation='sdpa' on CPU.")
    if dtype == torch.float32:
        raise ValueError(f"{name} needs dtype='bfloat16' or 'float16'.")
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] < major:
        raise ValueError(
            f"{name} needs a GPU of compute capability {major}.0 or newer (this one is "
            f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}); use "
            "attn_implementation='sdpa' or another FlashAttention."
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise ValueError(f"{name} needs the package {package}; or use attn_implementation='sdpa'.")


def _from_files(
    source: str | os.PathLike[str] | None, kwargs: dict[str, Any], trust_remote_code: bool
) -> tuple[Any, Any]:
    """Model and tokenizer from the embedded model, a ``.gguf`` file or a model folder (local files only;
    the tokenizer runs remote code only if asked, and never the embedded one's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_default_model(source):
        from longread.assets import default_model_dir

        path = default_model_dir()
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
        return model, AutoTokenizer.from_pretrained(path, local_files_only=True)  # ours: no remote code
    path = model_path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist.")
        log.info("loading GGUF %s (dequantizing; convert once with longread.assets.convert_gguf)", path)
        local = {"gguf_file": path.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(path.parent, **local, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, trust_remote_code=trust_remote_code, **local)
        return model, tokenizer
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json; point `model` at a Hugging Face model folder."
            )
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        return model, tokenizer
    raise FileNotFoundError(
        f"model {str(source)!r} is neither a local model directory nor a .gguf file. longread "
        "does not download weights at run time: download the model yourself (e.g. `hf download`) and "
        "pass its folder, or use 'default' for the embedded SmolLM2-135M-Instruct."
    )
