#!/usr/bin/env bash
# One-shot check of this repository on a CUDA machine, inside one 10-minute call, ending in one
# summary ($OUT/summary.txt):
#   1. prepare a `full` cache from a corpus built here (and fetch Flash Attention 3, if it can)
#   2. the full config's steps (tests/gpu_steps.py): the first step with a cold compile cache, again
#      warm (an unchanged re-run) and after a one-line edit of train.py, which is what every
#      experiment pays; the median step, tokens/s, MFU and peak memory for each attention path
#   3. a whole `full` train.py run, its budget cut to WHOLE_BUDGET seconds (what lies outside the
#      budget does not depend on it), that time split into start-up, compile and evaluation
#   4. the tests that run on the GPU (tests/test_attention.py, tests/test_train.py), in the time left
# Every stage's timeout ends it before the deadline (GPU_CHECK_SECONDS, 560 s), so the summary is
# always written; a stage with no time left says so.
#
# It needs python3 with torch, numpy, pyarrow, requests, tiktoken and pytest (kernels and
# huggingface_hub for FA3), and no uv. rustbpe travels as a wheel in .whl/, fetched beforehand with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl rustbpe
# Without a network prepare cannot fetch FA3, and the runs say which PyTorch kernels they use.
#
#   bash tests/gpu_check.sh                    on the GPU machine; logs go to $OUT (or a temporary folder)
#   GPU_CHECK_DRY=1 bash tests/gpu_check.sh    anywhere, in about a minute: the same stages, shrunk
#                                              (smoke setup, a tiny model), to test the script itself
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"  # empty: the first run compiles cold, as a first night does
CACHE="$WORK/cache"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-560}))

if [ "$DRY" = 1 ]; then  # the same stages, shrunk to test the script on a CPU
    SETUP=smoke; CHARS=1500000; WHOLE_BUDGET=2
    STEPS_ARGS=(--depth 2 --batch-size 2 --seq-len 256 --steps 2 --warmup 1)
    TESTS=(tests/test_attention.py -k "flex_attention_matches or which_layers")
else
    SETUP=full; CHARS=4000000; WHOLE_BUDGET=30
    STEPS_ARGS=()
    TESTS=(tests/test_attention.py tests/test_train.py)
fi

stage() {  # stage CAP LOG COMMAND...: COMMAND > LOG, stopped after CAP s or 10 s before the deadline
    local cap=$1 log=$2; shift 2
    local t=$((DEADLINE - SECONDS - 10))
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 20 ]; then echo "skipped: no time left before the deadline" > "$log"; return 124; fi
    timeout -k 5 "$t" "$@" > "$log" 2>&1
}

steps() {  # steps LABEL CAP [gpu_steps.py ARGS...]: one line of $WORK/steps.txt
    local label=$1 cap=$2; shift 2
    AUTORESEARCH_CACHE="$CACHE" stage "$cap" "$OUT/steps_$label.log" $PY tests/gpu_steps.py "${STEPS_ARGS[@]}" "$@"
    local rc=$?
    echo "steps $label: rc $rc | $(grep '^full_steps:' "$OUT/steps_$label.log" || tail -1 "$OUT/steps_$label.log")" | tee -a "$WORK/steps.txt"
    return $rc
}

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
$PY - <<'PY' | tee "$OUT/environment.txt"
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
PY

echo "== 1. a $SETUP cache from a corpus built here"
$PY -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_corpus; write_corpus('$WORK/corpus', $CHARS)"
AUTORESEARCH_CACHE="$CACHE" stage 240 "$OUT/prepare.log" $PY prepare.py --data "$WORK/corpus" --setup $SETUP
prepare_rc=$?
grep -E "^(Flash Attention 3|ready):" "$OUT/prepare.log" || tail -3 "$OUT/prepare.log"
echo "   ($SECONDS s so far)"

echo "== 2. the full config's steps, each in a fresh process"
steps cold 200; steps_rc=$?
steps warm 100 || steps_rc=1
mkdir -p "$WORK/edited"  # one line of the MLP edited, as an experiment does: the graph changes
sed 's/F\.relu(x)\.square()/F.relu(x).square() * 1.01/' train.py > "$WORK/edited/train.py"
grep -q 'square() \* 1.01' "$WORK/edited/train.py" || echo "warning: train.py's MLP line changed: the edit found nothing"
steps edited 150 --train "$WORK/edited/train.py" || steps_rc=1
if grep -q "attention: Flash Attention 3" "$OUT/steps_cold.log"; then
    steps flex 150 --attention flex || steps_rc=1
fi
steps sdpa 150 --attention sdpa || steps_rc=1
echo "   ($SECONDS s so far)"

echo "== 3. a whole $SETUP run of train.py, its budget cut to $WHOLE_BUDGET s"
AUTORESEARCH_CACHE="$CACHE" $PY - "$WHOLE_BUDGET" <<'PY'
import json, os, sys
path = os.path.join(os.environ["AUTORESEARCH_CACHE"], "setup.json")
with open(path) as f:
    setup = json.load(f)
setup["constants"]["TIME_BUDGET"] = int(sys.argv[1])
with open(path, "w") as f:
    json.dump(setup, f)
PY
AUTORESEARCH_CACHE="$CACHE" stage 240 "$OUT/whole_run.log" $PY - <<'PY'
# train.py with each output line's time since launch (tests/overhead.py's reader), then one line
import os, re, sys
sys.path.insert(0, "tests")
from overhead import timed_lines
lines = timed_lines([sys.executable, "train.py"], dict(os.environ), ".")
for t, line in lines:
    print(f"{t:7.1f}  {line}")
first = lambda pattern: next(t for t, line in lines if re.search(pattern, line))
value = lambda pattern: next(m.group(1) for _, line in lines if (m := re.search(pattern, line)))
total, training = float(value(r"^total_seconds:\s+([\d.]+)")), float(value(r"^training_seconds:\s+([\d.]+)"))
start_up = first(r"^Time budget")  # imports, the model, the optimizer, the first batch
compile_step = int(value(r"step 00000 .*dt: (\d+)ms")) / 1000  # compiles, then trains
evaluation = first(r"^---") - first(r"^Evaluating")
rest = total - training - start_up - compile_step - evaluation
val_bpb, num_steps, attention = value(r"^val_bpb:\s+(\S+)"), value(r"^num_steps:\s+(\d+)"), value(r"^(Attention: .*)")
eval_tokens = value(r"([\d,]+) evaluation tokens")
print(f"whole_run: val_bpb {val_bpb}, {num_steps} steps | training {training:.1f} s of total {total:.1f} s: "
      f"{total - training:.1f} s outside the budget = start-up {start_up:.1f} + step 0 (compile) {compile_step:.1f} "
      f"+ evaluation {evaluation:.1f} ({eval_tokens} tokens) + untimed steps and the rest {rest:.1f} | {attention}")
PY
whole_rc=$?
tail -1 "$OUT/whole_run.log"
echo "   ($SECONDS s so far)"

echo "== 4. tests: ${TESTS[*]}"
stage 300 "$OUT/tests.log" env -u AUTORESEARCH_CACHE HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-tests" \
    $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
tests_rc=$?
tests_line=$(grep -E "passed|failed|error|skipped: no time" "$OUT/tests.log" | tail -1)

first_step() { grep -o 'first step [0-9.]* s' "$OUT/steps_$1.log" | cut -d' ' -f3- | grep . || echo "none"; }
{
    echo "== gpu_check summary ($SECONDS s in all; logs in $OUT)"
    cat "$OUT/environment.txt"
    echo "prepare:    rc $prepare_rc | $(grep -m1 '^Flash Attention 3:' "$OUT/prepare.log" || tail -1 "$OUT/prepare.log")"
    echo "first step: cold cache $(first_step cold) | warm, train.py unchanged $(first_step warm) | warm, after a one-line edit $(first_step edited)"
    cat "$WORK/steps.txt"
    echo "whole run:  rc $whole_rc | $(grep '^whole_run:' "$OUT/whole_run.log" || tail -1 "$OUT/whole_run.log")"
    echo "tests:      rc $tests_rc, $tests_line"
} | tee "$OUT/summary.txt"
[ $prepare_rc = 0 ] && [ $steps_rc = 0 ] && [ $whole_rc = 0 ] && [ $tests_rc = 0 ]
