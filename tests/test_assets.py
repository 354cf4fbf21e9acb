"""The converted model folder loads the same with any transformers version: legacy RoPE keys are written."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from longread import assets

# What transformers 5 writes for the converted SmolLM2 (abridged): `rope_parameters` only.
V5_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "head_dim": 64,
    "model_type": "llama",
    "num_hidden_layers": 30,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}


def gguf_rope_theta() -> float:
    """``llama.rope.freq_base`` of the embedded GGUF file (skips when the package is not installed)."""
    try:
        path = assets.gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(f"embedded SmolLM2 not installed ({exc}); run scripts/setup.sh")
    import gguf

    field = gguf.GGUFReader(path).fields["llama.rope.freq_base"]
    return float(field.parts[field.data[0]][0])


def write(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def test_legacy_keys_added_atomically_and_once(tmp_path):
    path = tmp_path / "config.json"
    write(path, V5_CONFIG)
    path.chmod(0o644)
    assert assets.add_legacy_rope_keys(path) is True
    config = json.loads(path.read_text())
    assert config["rope_theta"] == 100000.0
    assert "rope_scaling" not in config  # default RoPE: older versions need no scaling entry
    assert {k: v for k, v in config.items() if k != "rope_theta"} == V5_CONFIG
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by other users, as before
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    before = path.read_bytes()
    assert assets.add_legacy_rope_keys(path) is False  # idempotent
    assert path.read_bytes() == before


def test_scaled_rope_gets_rope_scaling_too(tmp_path):
    path = tmp_path / "config.json"
    params = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0}
    write(path, dict(V5_CONFIG, rope_parameters=params))
    assets.add_legacy_rope_keys(path)
    config = json.loads(path.read_text())
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0}


def test_setup_fixes_a_folder_converted_earlier(tmp_path, monkeypatch):
    """A folder converted before this fix is brought up to date by the asset step, not reconverted."""
    monkeypatch.setenv("LONGREAD_HOME", str(tmp_path))
    folder = tmp_path / "models" / assets.MODEL_NAME
    folder.mkdir(parents=True)
    write(folder / "config.json", V5_CONFIG)
    monkeypatch.setattr(assets, "convert_gguf", lambda *a: pytest.fail("must not reconvert"))
    assert assets.default_model_dir() == folder
    assert json.loads((folder / "config.json").read_text())["rope_theta"] == 100000.0


def test_installed_model_config_carries_gguf_rope_theta():
    """The converted default model (brought up to date by setup) has rope_theta == the GGUF's (100000)."""
    theta = gguf_rope_theta()
    assert theta == 100000.0
    folder = assets.home() / "models" / assets.MODEL_NAME
    if not (folder / "config.json").exists():
        pytest.skip(f"{folder} not converted yet; run scripts/setup.sh")
    config = json.loads((assets.default_model_dir() / "config.json").read_text())
    assert config["rope_theta"] == theta
    assert config["rope_parameters"]["rope_theta"] == theta


@pytest.mark.slow
def test_fresh_conversion_writes_rope_theta(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    theta = gguf_rope_theta()
    out = assets.convert_gguf(assets.gguf_path(), tmp_path / "converted")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == theta
    assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == theta
    model = AutoModelForCausalLM.from_pretrained(out)
    inv_freq = model.model.rotary_emb.inv_freq
    expected = 1.0 / theta ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    torch.testing.assert_close(inv_freq, expected)
