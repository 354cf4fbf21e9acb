#!/usr/bin/env bash
# One prepared GPU session (the device tool's H100/H200): what CI cannot run, in one call.
#   carry: .whl (transformers wheel matching pyproject's pin; see BENCHMARKS.md "GPU runs")
# Writes everything under $OUT (default ./gpu_out) as it goes, so a cut-short run still returns what it did.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
step() { echo "=== $* ($(date +%T))" | tee -a "$OUT/log.txt"; "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -n 40; }
step timeout 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_gpu.py -o addopts=""
step timeout 200 python3 benchmarks/bench_batch.py --device cuda --geometry llama-3.1-8b --budget 2048 --stride 512 \
  --batches 1 8 32 --policy streaming_llm --policy lacache --policy cascading:cascades=4 \
  --feed-chunks 6 --decode-tokens 24 --cuda-graphs --profile --out "$OUT/batch_8b.json"
# The pos-shift rotation's cost: the same geometry with rope_mode "delta" (no rotation on read).
step timeout 60 python3 benchmarks/bench_batch.py --device cuda --geometry llama-3.1-8b --budget 2048 --stride 512 \
  --batches 1 32 --policy streaming_llm --rope-mode delta --no-bare --feed-chunks 6 --decode-tokens 24 \
  --out "$OUT/batch_8b_delta.json"
# The first engine after a bare step decoded 2-4x slower (BENCHMARKS.md). Hypothesis: the caching
# allocator -- decode's read-mode temporaries grow by one slot per token, and the first engine pays the
# cudaMalloc calls that later ones find cached. Test: no discarded engine, with and without expandable
# segments (which grow one mapping instead of allocating new blocks).
first() { step timeout 40 python3 benchmarks/bench_batch.py --device cuda --geometry llama-3.1-8b --budget 2048 \
  --stride 512 --batches 32 --policy streaming_llm --policy streaming_llm --no-discard --feed-chunks 2 \
  --decode-tokens 24 --out "$OUT/first_engine_$1.json"; }
first default
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True first expandable
step timeout 100 python3 benchmarks/bench_batch.py --device cuda --geometry llama-3.2-1b --budget 1024 --stride 256 \
  --batches 1 8 32 --policy streaming_llm --policy lacache --policy cascading:cascades=4 \
  --feed-chunks 6 --decode-tokens 24 --cuda-graphs --out "$OUT/batch_1b.json"
if [ -n "${WITH_BF16_ROPE:-}" ]; then  # issue 10's measurement (done: benchmarks/results/gpu_bf16_rope_1b_h100.json)
  step timeout 100 python3 benchmarks/bench_bf16_rope.py --device cuda --geometry llama-3.2-1b --tokens 65536 \
    --budget 2048 --stride 512 --out "$OUT/bf16_rope.json"
fi
echo "=== done"
