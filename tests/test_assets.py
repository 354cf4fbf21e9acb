"""The converted model folder loads the same with any transformers version: legacy RoPE keys are written."""

from __future__ import annotations

import json
import os
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


def test_home_is_absolute_and_only_computed(tmp_path, monkeypatch):
    """An empty LONGREAD_HOME is unset; a relative one is made absolute (Ray workers run in other
    folders); computing a path creates nothing (a read-only image only reads)."""
    monkeypatch.setenv("LONGREAD_HOME", "")
    assert assets.home() == (Path.home() / ".cache" / "longread").resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGREAD_HOME", "rel")
    assert assets.home() == tmp_path / "rel" and assets.default_model_path().is_absolute()
    assert not (tmp_path / "rel").exists()


def test_an_unwritable_home_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LONGREAD_HOME", str(tmp_path / "a-file" / "home"))
    with pytest.raises(OSError, match="set LONGREAD_HOME to a writable folder"):
        assets.default_model_dir()


def test_interrupted_conversions_leave_nothing_that_is_trusted_or_kept(tmp_path, monkeypatch):
    """A conversion interrupted mid-write removes its staging folder; staging folders and a partial
    model folder from killed runs are cleared by the next conversion, whose result all users can read."""
    import types

    import transformers

    monkeypatch.setenv("LONGREAD_HOME", str(tmp_path))
    models = tmp_path / "models"
    (models / f".{assets.MODEL_NAME}-killed").mkdir(parents=True)  # a killed run's staging folder
    (models / assets.MODEL_NAME).mkdir()
    (models / assets.MODEL_NAME / "model.safetensors").write_bytes(b"half")  # no config.json: partial

    class Saving:
        config = types.SimpleNamespace()
        hf_quantizer = None

        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def save_pretrained(self, folder) -> None:
            (Path(folder) / "model.safetensors").write_bytes(b"weights")
            if self.fail:
                raise KeyboardInterrupt
            write(Path(folder) / "config.json", V5_CONFIG)

    tokenizer = types.SimpleNamespace(save_pretrained=lambda folder: None)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(assets, "gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Saving(True))
    with pytest.raises(KeyboardInterrupt):
        assets.default_model_dir()
    assert sorted(p.name for p in models.iterdir()) == [assets.MODEL_NAME, f"{assets.MODEL_NAME}.lock"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Saving(False))
    out = assets.default_model_dir()
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "config.json").exists()
    assert not list(models.glob(".*"))
    mask = os.umask(0)
    os.umask(mask)
    # as if written under the umask (mkdtemp alone makes the folder its owner's only)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o666 & ~mask
