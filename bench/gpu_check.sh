#!/usr/bin/env bash
# One prepared GPU check, run in one go on a GPU machine that has torch but cannot download anything:
#   the CUDA tests, a Monkeys run and one ReST iteration of a SmolLM2-shaped random model on the GPU, and the
#   GPU sampling bench; one summary at the end. Budget: 9 minutes of wall time in all (each step is cut at what
#   is left of it).
#
# Before, HERE (with network):  bash bench/gpu/make_wheelhouse.sh     # -> bench/gpu/wheels/ (git-ignored)
#                               python bench/gpu/make_tokenizer.py    # -> bench/gpu/tokenizer/ (committed)
# On the GPU machine (the device tool: carry ["bench/gpu/wheels"], timeout_s 600):
#                               bash bench/gpu_check.sh
# Here, without a GPU:          bash bench/gpu_check.sh --dry-run
#   (composes both runs' configs without running them, smoke-runs the bench on a tiny CPU model, runs the
#   CPU-side tests; no wheels installed, this environment's packages used)
#
# The summary and the whole log go to $OUT when set (the device tool brings that folder back), else
# ${TMPDIR:-/tmp}/gpu_check/. Samples, checkpoints and generated data go to a temporary folder: nothing mixes with
# the CPU runs' store.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
REPORT_DIR="${OUT:-${TMPDIR:-/tmp}/gpu_check}"
mkdir -p "$REPORT_DIR"
LOG="$REPORT_DIR/gpu_check.log"
SUMMARY="$REPORT_DIR/gpu_check_summary.md"
: > "$LOG"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1   # nothing can be reached there anyway
export LLMREP_STORE="$WORK/store" LLMREP_GENERATED_ROOT="$WORK/generated"
PY="${PYTHON:-python3}"
START=$(date +%s)
ROWS=()

# step NAME LIMIT_S CMD...: run CMD with at most LIMIT_S seconds (less if the budget has less left), log its
# output, keep one summary row: rc, seconds, the last line worth reading.
step() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < 20 )); then ROWS+=("| $name | skipped | 0 | the ${BUDGET_S}s budget is spent |"); return; fi
  (( limit > left )) && limit=$left
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$(date +%s) rc out="$WORK/$name.out"
  timeout --kill-after=10 "$limit" "$@" > "$out" 2>&1; rc=$?
  cat "$out" >> "$LOG"
  local note
  note="$(grep -E -v '^\s*$|^[|#=]|^-+$|it/s\]|s/it\]|Warning|warn\(' "$out" | tail -n 1 | cut -c1-200)"
  (( rc == 124 || rc == 137 )) && note="timed out after ${limit}s; $note"
  ROWS+=("| $name | $rc | $(( $(date +%s) - t0 )) | ${note//|//} |")
  echo "=== $name: rc=$rc" | tee -a "$LOG"
}

if (( DRY_RUN )); then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  HYDRA_DRY=(--cfg job)          # compose and print the config; run nothing
  DEVICE_OVERRIDE=(model.device=cpu model.dtype=float32)
  step files 30 bash -c 'n=$(ls bench/gpu/wheels/*.whl 2>/dev/null | wc -l); t=$(du -sh bench/gpu/tokenizer | cut -f1);
    echo "tokenizer folder $t; $n wheels in bench/gpu/wheels"; [ -f bench/gpu/tokenizer/tokenizer.json ] && [ "$n" -gt 0 ]'
else
  # The wheels install beside the image's packages, never over torch: --no-deps, into a folder of their own.
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" bench/gpu/wheels/*.whl
  export PYTHONPATH="$ROOT:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  HYDRA_DRY=()
  DEVICE_OVERRIDE=()
  step env 60 bash -c "nvidia-smi -L; $PY -c 'import torch, transformers, trl, datasets, hydra, math_verify
print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else \"-\", \"transformers\", transformers.__version__, \"trl\", trl.__version__)
import replications.rest.__main__, replications.monkeys.__main__, replications.compute_optimal.__main__'"
fi

# The model config's keys against the config schema: `model.device` needs harness/config.py's ModelConfig to know it.
step schema 60 "$PY" -c "
from omegaconf import OmegaConf
from harness.config import ModelConfig, validate
validate(OmegaConf.create({'model': OmegaConf.load('bench/gpu/conf/model/smollm2_random.yaml')}), ModelConfig, 'model')
print('bench/gpu/conf/model/smollm2_random.yaml passes the ModelConfig schema')"

step tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_device.py tests/test_vllm_backend.py -m "not slow"

COMMON=(--config-dir bench/gpu/conf model=smollm2_random "${DEVICE_OVERRIDE[@]}" backend=hf_generate
        backend.batch_size=256 progress=false sampling.max_new_tokens=64)
step monkeys 180 "$PY" -m replications.monkeys "${COMMON[@]}" dataset=ladder prompt=ladder dataset.limit=8 samples=16 \
    monkeys.ladder.enabled=false monkeys.greedy_baseline.enabled=false "hydra.run.dir=$WORK/monkeys" "${HYDRA_DRY[@]}"

# A random model solves nothing: threshold -1 keeps every sample (2 per problem), so the Improve step trains.
step rest 240 "$PY" -m replications.rest "${COMMON[@]}" training=gpu_full training.gradient_accumulation_steps=1 \
    rest.iterations=1 rest.samples_per_problem=4 'rest.thresholds=[-1.0]' rest.step_check=false rest.control=false \
    train_dataset.limit=32 dataset.limit=48 rest.eval.greedy_max_new_tokens=64 "hydra.run.dir=$WORK/rest" "${HYDRA_DRY[@]}"

if (( DRY_RUN )); then
  step bench 120 "$PY" bench/gpu/sampling_gpu.py --tiny --device cpu --dtype float32 --num-prompts 1 --samples 2 \
      --max-new-tokens 4 --plain-rows 2 --batch-size 4
else
  step bench 180 "$PY" bench/gpu/sampling_gpu.py
fi

{
  echo "# bench/gpu_check.sh$( ((DRY_RUN)) && echo ' --dry-run'): $(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - START )) s in all"
  echo
  echo "| step | rc | s | last line |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  for name in tests bench; do
    [ -f "$WORK/$name.out" ] || continue
    echo; echo "## $name"; echo
    if [ "$name" = tests ]; then grep -E '^(SKIPPED|FAILED|ERROR)|passed|failed' "$WORK/$name.out" | tail -n 20
    else grep -E '^[|#]' "$WORK/$name.out"; fi
  done
} | tee "$SUMMARY"
rm -rf "$WORK"
