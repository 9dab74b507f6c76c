#!/usr/bin/env bash
# Does a row that falls below its guide do so only because the learning rate was chosen for
# another row? The reproduction picks one learning rate for every row (PPO's, on the validation
# split); this trains some rows from the guide's weights at each rate of a grid, 3 seeds each,
# evaluates every model on the *validation* split against the guide, prompt by prompt, and then
# each row at the rate the validation split chose for it on the test split.
# The sparse-reward task of README's runs 18-23 (reverse three words, exact match).
#
#   bash bench/lr_sensitivity.sh [OUT_DIR]    # default runs/lr-sensitivity; about 45 minutes on 2 cores
#
# ALGS (default "ppo aggrevated lols d2lols"), LRS (default "1e-5 5e-5") and SEEDS (default "0 1 2") override
# the grid; LEARNER, ITERATIONS (16), EPISODES (16), BC_EPISODES (32) and LIMIT (the whole split)
# the rest (the tests run it on a tiny model). Two trainings run at a time, one torch thread each,
# as `bench/reproduce.py --jobs 2` does. Writes eval-{val,test}.{txt,json} and table.md in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lr-sensitivity}
ALGS=${ALGS:-"ppo aggrevated lols d2lols"}
LRS=${LRS:-"1e-5 5e-5"}
SEEDS=${SEEDS:-"0 1 2"}
RLGF=${RLGF:-.venv/bin/rlgf}
PYTHON=${PYTHON:-$(dirname "$RLGF")/python}
mkdir -p "$OUT/logs"
TASK=(--task prompts --data tasks/examples/reverse_words.jsonl --reward tasks/examples/exact_match.py:reward
      --max-new-tokens 8)
LEARNER=${LEARNER:-smollm2}
LIMIT_ARGS=()
if [ -n "${LIMIT:-}" ]; then LIMIT_ARGS=(--limit "$LIMIT"); fi

# the reproduction's BC guide (bench/reproduce.py --bc-iterations 2: 2 iterations of 32 episodes)
if [ ! -d "$OUT/guide/final" ]; then
  BC=${BC_EPISODES:-32}
  OMP_NUM_THREADS=1 "$RLGF" train "${TASK[@]}" --learner "$LEARNER" --alg bc --iterations 2 --episodes "$BC" \
    --minibatch-size "$(( BC < 16 ? BC : 16 ))" --epochs 1 --lr 5e-5 --seed 0 --save-every 0 --threads 1 \
    --out "$OUT/guide" --overwrite > "$OUT/logs/guide.log" 2>&1
fi

# the rows as bench/reproduce.py --preset cpu trains them (16 iterations of 16 episodes, minibatches of 4)
train() {  # ALG LR SEED
  local run="$OUT/BC_$1-lr$2-s$3"
  [ -d "$run/final" ] && return 0
  "$RLGF" train "${TASK[@]}" --learner "$LEARNER" --alg "$1" --lr "$2" --seed "$3" --iterations "${ITERATIONS:-16}" \
    --episodes "${EPISODES:-16}" --epochs 1 \
    --minibatch-size 4 --save-every 0 --no-compile --threads 1 --init "$OUT/guide/final" \
    --guide "$OUT/guide/final" --out "$run" --overwrite > "$OUT/logs/BC_$1-lr$2-s$3.log" 2>&1
  # only the learner is evaluated: its critics and optimizer state (3-4 GB a run) go
  rm -rf "$run/checkpoints" "$run/final/critic" "$run/final/guide_critic" "$run/final/optimizer"*
}
pending=()
for alg in $ALGS; do for lr in $LRS; do for seed in $SEEDS; do pending+=("$alg $lr $seed"); done; done; done
# two at a time (wait -n: bash 4.3 or later); a training that fails stops the script once the other ends
running=0
failed=0
for job in "${pending[@]}"; do
  # shellcheck disable=SC2086
  train $job &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then
    wait -n || failed=1
    running=$((running - 1))
    [ "$failed" = 0 ] || break
  fi
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
if [ "$failed" != 0 ]; then
  echo "[error] a training failed: see $OUT/logs/" >&2
  exit 1
fi

# every model and the guide on the validation split, one sampling seed, each against the guide
checkpoints=(-c "$OUT/guide/final")
for alg in $ALGS; do for lr in $LRS; do for seed in $SEEDS; do
  checkpoints+=(-c "$OUT/BC_$alg-lr$lr-s$seed/final")
done; done; done
"$RLGF" eval "${TASK[@]}" --split val "${LIMIT_ARGS[@]}" --seed 0 "${checkpoints[@]}" --reference "$LEARNER" \
  --baseline "$OUT/guide/final" --json "$OUT/eval-val.json" > "$OUT/eval-val.txt" 2>&1
"$PYTHON" bench/lr_sensitivity_table.py "$OUT/eval-val.json" | tee "$OUT/table.md"

# then each row at the rate the validation split chose for it, on the *test* split, against the guide
chosen=$("$PYTHON" bench/lr_sensitivity_table.py --chosen "$OUT/eval-val.json")  # "ALG LR" lines
checkpoints=(-c "$OUT/guide/final")
while read -r alg lr; do
  for seed in $SEEDS; do checkpoints+=(-c "$OUT/BC_$alg-lr$lr-s$seed/final"); done
done <<< "$chosen"
"$RLGF" eval "${TASK[@]}" --split test "${LIMIT_ARGS[@]}" --seed 0 "${checkpoints[@]}" --reference "$LEARNER" \
  --baseline "$OUT/guide/final" --json "$OUT/eval-test.json" > "$OUT/eval-test.txt" 2>&1
{ echo; echo "Each row at the rate chosen above, on the test split:"; echo
  "$PYTHON" bench/lr_sensitivity_table.py "$OUT/eval-test.json"; } | tee -a "$OUT/table.md"
