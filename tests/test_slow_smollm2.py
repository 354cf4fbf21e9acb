"""The real embedded SmolLM2-135M: streaming past its 8,192-token trained context (marked slow)."""

from __future__ import annotations

import math

import pytest
import torch

from cache_policies import make_policy
from longread.engine import StreamingEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def book_ids(smollm2):
    from longread.assets import default_book_path

    _, tok = smollm2
    return torch.tensor(tok(default_book_path().read_text(), add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("spec", [("streaming_llm", {}), ("lacache", {"span": 15, "overlap": 0})])
def test_streams_past_trained_context(smollm2, book_ids, spec):
    model, tok = smollm2
    assert model.config.max_position_embeddings == 8192
    assert book_ids.numel() > 10_000
    name, params = spec
    engine = StreamingEngine(
        model, make_policy(name, budget=512, sink=4, **params), stride=512, tokenizer=tok
    )
    nll = torch.cat(list(engine.nll(book_ids[:10_240])))
    late = math.exp(nll[8192:].mean().item())  # tokens beyond the trained context window
    early = math.exp(nll[1024:8192].mean().item())
    assert engine.tokens_seen == 10_240 and engine.cache.length <= 512
    # Positions never passed budget + stride, so quality past 8K is like quality before it.
    assert late < 1.5 * early and late < 60, (early, late)
    reply = engine.generate(
        "<|im_start|>user\nWho is the prince of Denmark?<|im_end|>\n<|im_start|>assistant\n",
        max_new_tokens=24,
    )
    assert reply.text.strip(), "the model produced no text after 10K streamed tokens"
