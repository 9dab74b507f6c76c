#!/usr/bin/env bash
# One prepared script for a CPU with AMX-BF16 or AVX512-BF16 units: the measurements the bf16
# issue asks for, one after the other so none competes for the cores. About 25 minutes on a
# 2-core AMX Xeon, once `make setup` has run and the embedded assets are cached (`make demo` once).
#
#   bash bench/cpu_bf16_check.sh [OUT_DIR]   # default runs/cpu-bf16-check
#
# 1. an iteration of the embedded default (after a warm-up one) in fp32 and bf16 (seconds and GFLOP/s per phase, the
#    rooflines, peak memory, checkpoint cost): OUT_DIR/iteration-embedded.{md,json}
#    and the same with `rlgf train --compile` (the layers through torch.compile): OUT_DIR/iteration-embedded-compile.{md,json}
# 2. 5 iterations of fp32 and of bf16 with the same seed (the ±0.05 learning goal):
#    OUT_DIR/precision/{results.json,curves.png}, the table in OUT_DIR/precision.md
# 3. how far each bf16 variant of SmolLM2 is from float32, per token: OUT_DIR/precision-drift.{md,json}
# 4. the first iteration's rollout, 8 rounds of 128 prompts in both precisions, scored by one float32
#    reward (the bf16 sampling question without the curves' noise): OUT_DIR/precision-sampling.{md,json}
# 5. `make demo` with a warm cache, timed: OUT_DIR/demo.txt
# 6. 2 iterations under glibc's malloc and under tcmalloc (when installed), 2 runs each:
#    OUT_DIR/allocator.md, OUT_DIR/allocator/results.json
# On a CPU without those units it stops at once with an [error] line: bf16 would be emulated.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/cpu-bf16-check}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
THREADS=${THREADS:-$(nproc)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! grep -q -w -E "amx_bf16|avx512_bf16" /proc/cpuinfo 2>/dev/null; then
    echo "[error] this CPU reports neither AMX-BF16 nor AVX512-BF16, so bf16 would be emulated; run this on one that does" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
status=0
{ grep -m1 "model name" /proc/cpuinfo; grep -o -w -E "amx_bf16|amx_tile|avx512_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo;
  "$PY" -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"; } | tee "$OUT_DIR/machine.txt"
"$PY" bench/iteration.py --preset embedded --threads "$THREADS" --json "$OUT_DIR/iteration-embedded.json" 2>&1 \
    | tee "$OUT_DIR/iteration-embedded.md" || status=1
"$PY" bench/iteration.py --preset embedded --threads "$THREADS" --compile --json "$OUT_DIR/iteration-embedded-compile.json" 2>&1 \
    | tee "$OUT_DIR/iteration-embedded-compile.md" || status=1
"$PY" bench/precision_learning.py --iterations 5 --out "$OUT_DIR/precision" 2>&1 | tee "$OUT_DIR/precision.md" \
    || status=1
"$PY" bench/precision_drift.py --threads "$THREADS" --out "$OUT_DIR/precision-drift.json" 2>&1 \
    | tee "$OUT_DIR/precision-drift.md" || status=1
"$PY" bench/precision_sampling.py --rounds 8 --episodes 128 --threads "$THREADS" \
    --out "$OUT_DIR/precision-sampling.json" 2>&1 | tee "$OUT_DIR/precision-sampling.md" || status=1
start=$(date +%s)
make demo DEMO_OUT="$OUT_DIR/demo" > "$OUT_DIR/demo.log" 2>&1
demo=$?
[ "$demo" = 0 ] || status=1
echo "make demo (warm cache): $(( $(date +%s) - start )) s, exit $demo" | tee "$OUT_DIR/demo.txt"
"$PY" bench/allocator.py --iterations 2 --out "$OUT_DIR/allocator" 2>&1 | tee "$OUT_DIR/allocator.md" || status=1
exit $status
