"""benchmarks/bench_bf16_rope.py: the lockstep fp32-vs-low-precision comparison, on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_bf16_rope as bench


def test_identical_models_give_zero_divergence():
    """With the float32 model on both sides the delta run *is* the reference: KL 0, no drift; the read run
    differs only by float32 rounding. So the metrics measure the model's precision and nothing else."""
    model, _ = bench.random_models("tiny", torch.float32, "cpu", seed=0)
    args = bench.parse_args(["--geometry", "tiny", "--tokens", "150", "--budget", "48", "--stride", "7"])
    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(0))
    rows = bench.run_pair(model, model, ids, "lacache:span=2", args, stride=7)
    delta, read = rows
    assert (delta["mode"], read["mode"]) == ("delta", "read")
    assert delta["kl_max"] == 0.0 and delta["max_abs_logit_diff"] == 0.0 and delta["ppl_drift"] == 0.0
    assert read["kl_max"] < 1e-9 and read["max_abs_logit_diff"] < 1e-4
    assert len(delta["kl_by_segment"]) == bench.SEGMENTS


def test_cli_writes_a_row_per_policy_stride_mode(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--geometry", "tiny", "--tokens", "120", "--budget", "48", "--stride", "1", "--stride", "50"]
    argv += ["--policy", "streaming_llm", "--policy", "lacache:span=2", "--policy", "cascading:cascades=4"]
    bench.main([*argv, "--out", str(out)])
    rows = json.loads(out.read_text())
    keys = {(r["policy"], r["stride"], r["mode"]) for r in rows}
    assert keys == {
        (p, s, m) for p in ("streaming_llm", "lacache", "cascading") for s in (1, 50) for m in bench.MODES
    }
    for r in rows:
        # bf16 weights and caches move the distribution a little, never by much on a 4-layer toy.
        assert 0.0 < r["kl_mean"] <= r["kl_p99"] <= r["kl_max"] < 1e-2
        assert r["tokens"] == 120 and abs(r["ppl_drift"]) < 0.01
    assert "KL mean" in capsys.readouterr().out


def test_llama_32_1b_geometry():
    """The hand-written config is Llama-3.2-1B's: 1.24B parameters, llama3 RoPE scaling (built on meta)."""
    from transformers import AutoModelForCausalLM

    from experiments.geometries import config as geometry

    config = geometry("llama-3.2-1b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    assert (
        config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["rope_theta"] == 500000.0
    )
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (16, 8, 64)


def test_rejects_full_policy():
    with pytest.raises(SystemExit):
        bench.parse_args(["--policy", "full"])
