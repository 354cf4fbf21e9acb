"""Shared fixtures: tiny random models built from a config (no weights), and the real SmolLM2 when set up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(model_type: str = "llama", layers: int = 4, **overrides):
    """A few-thousand-parameter config of ``model_type`` (random weights, float32, SDPA)."""
    from transformers import AutoConfig

    base = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    if model_type == "gemma":
        base["head_dim"] = 16
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def tiny_model(model_type: str = "llama", layers: int = 4, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides)).eval()


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The pipeline tests' tiny model saved as a Hugging Face folder (tests/helpers_pipeline.py)."""
    from helpers_pipeline import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model; skips with the fix when set-up has not been run."""
    try:
        from longread.assets import gguf_path

        gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(f"embedded SmolLM2 not installed ({exc}); run scripts/setup.sh")
    from longread.models import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"{SHARED_DATA} is absent: tests on real logs/stories need ../shared/data beside the repo"
        )
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and not os.environ.get("LONGREAD_SKIP_GPU"):
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
