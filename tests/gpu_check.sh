#!/usr/bin/env bash
# One-shot check of this repository on a CUDA machine, in under 10 minutes, ending in one summary:
#   1. the tests that run on the GPU (tests/test_train.py: attention, optimizer, whole smoke runs)
#   2. a `small` 5-minute train.py run, on a corpus of the standard library's docstrings built here
#   3. a few steps of the `full` model at DEVICE_BATCH_SIZE 128 x 2048 tokens: memory, tokens/s, MFU
#
# It needs python3 with torch, numpy, pyarrow, requests, tiktoken and pytest, and no network or uv.
# rustbpe (and, for Flash Attention 3, kernels) travel as wheels in .whl/, fetched beforehand with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl rustbpe
# (offline, `kernels` cannot fetch FA3 anyway: the runs then use PyTorch's SDPA and say so).
#
#   bash tests/gpu_check.sh              on the GPU machine; logs go to $OUT (or a temporary folder)
#   GPU_CHECK_DRY=1 bash tests/gpu_check.sh   anywhere, in a minute or two: the same steps, shrunk
#                                             (smoke setup, a tiny model), to test the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"  # a cold compile cache: what a first night pays
t0=$SECONDS
elapsed() { echo $((SECONDS - t0)); }

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
$PY - <<'PY' | tee "$OUT/environment.txt"
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
PY

if [ "$DRY" = 1 ]; then  # the same steps, shrunk to test the script on a CPU
    SETUP=smoke; CHARS=1500000; TESTS=(tests/test_train.py -k "attention or polar"); TRAIN_TIMEOUT=300
    STEPS_ARGS=(--depth 2 --batch-size 2 --seq-len 256 --steps 2 --warmup 1)
else
    SETUP=small; CHARS=12000000; TESTS=(tests/test_train.py); TRAIN_TIMEOUT=420
    STEPS_ARGS=()
fi

echo "== 1. tests: ${TESTS[*]}"
timeout 180 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
tests_line=$(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)
echo "   ($(elapsed) s so far)"

echo "== 2. a $SETUP run of train.py on a corpus built here"
$PY -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_corpus; write_corpus('$WORK/corpus', $CHARS)"
AUTORESEARCH_CACHE="$WORK/cache" $PY prepare.py --data "$WORK/corpus" --setup $SETUP > "$OUT/prepare.log" 2>&1
prepare_rc=$?
tail -1 "$OUT/prepare.log"
AUTORESEARCH_CACHE="$WORK/cache" timeout $TRAIN_TIMEOUT $PY train.py > "$OUT/train.log" 2>&1
train_rc=$?
grep -E "^(Device|Attention):" "$OUT/train.log"
sed -n '/^---$/,$p' "$OUT/train.log"
echo "   ($(elapsed) s so far)"

echo "== 3. a few steps of the full model"
AUTORESEARCH_CACHE="$WORK/cache" timeout 240 $PY tests/gpu_steps.py "${STEPS_ARGS[@]}" > "$OUT/full_steps.log" 2>&1
steps_rc=$?
tail -3 "$OUT/full_steps.log"

field() { awk -v k="$1:" '$1 == k {print $2}' "$OUT/train.log"; }
{
    echo "== gpu_check summary ($(elapsed) s in all; logs in $OUT)"
    cat "$OUT/environment.txt"
    echo "tests:      rc $tests_rc, $tests_line"
    echo "$SETUP run: rc $train_rc (prepare rc $prepare_rc) | val_bpb $(field val_bpb) | steps $(field num_steps)" \
         "| training $(field training_seconds) s of total $(field total_seconds) s | mfu $(field mfu_percent)%" \
         "| peak memory $(field peak_vram_mb) MB | $(grep -m1 '^Attention:' "$OUT/train.log")"
    echo "full steps: rc $steps_rc | $(grep '^full_steps:' "$OUT/full_steps.log" || tail -1 "$OUT/full_steps.log")"
} | tee "$OUT/summary.txt"
rm -rf "$WORK"
[ $tests_rc = 0 ] && [ $prepare_rc = 0 ] && [ $train_rc = 0 ] && [ $steps_rc = 0 ]
