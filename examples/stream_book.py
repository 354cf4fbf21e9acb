"""Stream a whole book through the embedded SmolLM2 at fixed memory, then ask a question about it.

.venv/bin/python examples/stream_book.py [path/to/book.txt]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cache_policies import make_policy
from longread.assets import default_book_path
from longread.engine import StreamingEngine
from longread.models import load_model

logging.basicConfig(level=logging.INFO)
book = Path(sys.argv[1]) if len(sys.argv) > 1 else default_book_path()
model, tok = load_model()
engine = StreamingEngine(model, make_policy("lacache", budget=1024, span=15), stride=512, tokenizer=tok)
tokens = engine.feed_text(book.read_text(encoding="utf-8"))
logging.info(
    "streamed %d tokens; cache holds %d (%.1f MiB)",
    tokens,
    engine.cache.length,
    engine.cache.nbytes() / 2**20,
)
question = (
    "<|im_start|>user\nIn two sentences, what happens at the end of this text?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
print(engine.generate(question, max_new_tokens=80, stop=["<|im_end|>"]).text)
