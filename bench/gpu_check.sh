#!/usr/bin/env bash
# One prepared script for a GPU machine (a device session, or any CUDA box with torch and
# transformers installed): GPU correctness of the decoding loop, then the GPU numbers the
# rollout and iteration benchmarks report. About 6–8 minutes on one H100.
#
#   bash bench/gpu_check.sh [OUT_DIR]   # OUT_DIR/{device,tests}.txt, rollout{,-graphs}.md, iteration.{md,json}
#
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3). The
# repository root goes on PYTHONPATH, so no install is needed where the dependencies exist.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu-check}}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

"$PY" - <<'PY' | tee "$OUT_DIR/device.txt"
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.mem_get_info()[1] / 2**30:.0f} GiB")
PY

# 1. the decoding loop on CUDA — eager, static and CUDA-graph modes: same tokens as generate, right
#    roll-in/roll-out states; chunk sizing from the free memory
"$PY" -m pytest -q -p no:cacheprovider tests/test_decode.py tests/test_chunking.py 2>&1 | tee "$OUT_DIR/tests.txt" \
    || status=1
# 2. roll-in + roll-out against one plain generation, the paper's IMDB batch (issue 3's GPU goal
#    ≤ 1.3×), eager, then with CUDA graphs
timeout 200 "$PY" bench/rollout.py --device cuda --preset paper --dtype bfloat16 --repeats 5 2>&1 \
    | tee "$OUT_DIR/rollout.md" || status=1
timeout 200 "$PY" bench/rollout.py --device cuda --preset paper --dtype bfloat16 --repeats 5 --cuda-graphs 2>&1 \
    | tee "$OUT_DIR/rollout-graphs.md" || status=1
# 3. one training iteration in the paper's shape against the HF-style loop (issue 7's goal)
timeout 240 "$PY" bench/iteration.py --device cuda --preset paper --repeats 3 --warmup 1 --cuda-graphs \
    --json "$OUT_DIR/iteration.json" 2>&1 | tee "$OUT_DIR/iteration.md" || status=1
exit $status
