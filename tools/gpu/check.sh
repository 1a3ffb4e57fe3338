#!/usr/bin/env bash
# The one-command GPU check: one NVIDIA GPU, no network, within 6 minutes on an H200.
#
#   tools/gpu/check.sh OUTDIR          # then fetch OUTDIR/check.tar.gz (everything it wrote)
#
# Needs .whl/ from tools/gpu/wheels.sh (run it where PyPI is reachable). Checks the GPU,
# installs the wheels into a temporary prefix (pip --no-index --no-deps --target, then
# PYTHONPATH), and runs these parts, key results first. Each has a time limit and a log
# OUTDIR/NAME.log, and prints one line (PASS / FAIL / SKIP, seconds, what it measured) to
# the console and OUTDIR/summary.txt the moment it ends:
#   versions        Python, torch, CUDA, NCCL, GPU, triton, deepspeed, megatron-core
#   00-prepare      filtertron prepare corpus/sample (CPU; in the background from the start)
#   01-kernels      pytest -m "gpu and not slow" tests/: kernels against the reference on
#                   CUDA, the trainer against a CPU fp32 run, eval on NCCL (-n 4 with xdist)
#   02-throughput   bench/train_throughput.py --device cuda: GPT-2 small, tokens/s and MFU of
#                   the trainer and a plain loop, eager and compiled, its own budget
#   03-train        tiny preset, 50 steps, bf16, ZeRO-2, deepspeed launcher on NCCL
#   04-train-check  steps 1-50 finite and falling, val_loss, model.pt, MFU in (0, 1]
#   05-resume       a copy rolled back to its step-25 checkpoint, --resume (in the background,
#   06-resume-check   beside eval): steps 26-50 must equal the first run's to bf16 noise
#   07-eval         filtertron eval RUN --lengths 1x,4x --contamination 0,0.1
#   08-generate     filtertron generate RUN (greedy, 32 tokens)
#   09-attention    bench/attention.py --device cuda --budget (what is left) --out
# then a final summary (parts in this order, counts, versions) and OUTDIR/check.tar.gz: the
# logs, summary and results (no caches, checkpoints or token files).
#
# Time: CHECK_BUDGET (seconds, default 330) bounds the whole run, setup included: each part's
# limit is cut to what is left, and a part that needs more than is left (its minimum) is
# skipped with a line saying so; the run ends at most ~15 s after the budget. Exit status: 0
# if no part failed, 1 if one did, 2 for a usage or set-up error, 3 when no GPU is present.
# CHECK_SLOWDOWN (default 1) multiplies every part's minimum and limit, for a slower machine
# (the CPU test under a fake GPU uses 8, with a larger budget). Environment: PYTHON (default
# python3), FILTERTRON_WHEELS (default .whl/), SITE (install prefix, default a fresh temporary
# folder), CHECK_BUDGET, CHECK_SLOWDOWN.
#
# Every part's command is a program (timeout execs it; a shell function cannot be run that
# way, which kept training from ever starting on 2026-12-04): `part` refuses anything else.
# tests/test_gpu_check.py runs this script end to end on a CPU under a fake GPU.
set -uo pipefail
{  # one compound command: bash reads the whole file first, so editing it cannot change a run

usage() { echo "usage: tools/gpu/check.sh OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$1
mkdir -p "$OUT" || { echo "check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${FILTERTRON_WHEELS:-$ROOT/.whl}
BUDGET=${CHECK_BUDGET:-330}
SLOWDOWN=${CHECK_SLOWDOWN:-1}
case $BUDGET in ''|*[!0-9]*) echo "check.sh: CHECK_BUDGET=$BUDGET is not a whole number of seconds" >&2; exit 2;; esac
case $SLOWDOWN in ''|0|*[!0-9]*) echo "check.sh: CHECK_SLOWDOWN=$SLOWDOWN is not a whole number >= 1" >&2; exit 2;; esac
SUMMARY=$OUT/summary.txt
STATE=$OUT/state  # one file per part: its status, and its summary line
ARCHIVE=$OUT/check.tar.gz
START=$(date +%s)
# A rerun into the same OUTDIR starts clean but keeps cache/ (warm compiles) and data/.
rm -rf "$STATE" "$ARCHIVE" "$OUT"/[0-9][0-9]-*.log "$OUT"/{run,resumed,eval,throughput,attention}
mkdir -p "$STATE"
: >"$SUMMARY"

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[check $(elapsed)s] $*"; }
fail_setup() { echo "check.sh: $1" | tee -a "$SUMMARY" >&2; exit "${2:-2}"; }

archive() {  # everything written here but caches, checkpoints, token files and the archive
  local tmp  # written outside OUT: a file growing in the folder tar reads makes it fail
  tmp=$(mktemp "${TMPDIR:-/tmp}/check.XXXXXX.tar.gz") || return
  tar -czf "$tmp" -C "$(dirname "$OUT")" --exclude='*/cache' --exclude='*.pt' --exclude='*.bin' \
    --exclude='*.idx' --exclude="$(basename "$ARCHIVE")" "$(basename "$OUT")" \
    && mv "$tmp" "$ARCHIVE" && echo "archive: $ARCHIVE ($(du -k "$ARCHIVE" | cut -f1) KiB)" \
    || { rm -f "$tmp"; echo "check.sh: writing $ARCHIVE failed" >&2; }
}
trap 'rc=$?; archive; exit $rc' EXIT

# --- setup: the wheels folder, a GPU, the install ------------------------------------------
PACKAGES="deepspeed megatron_core hjson pydantic pydantic_core annotated_types typing_inspection"
[ -d "$WHEELS" ] || fail_setup "no wheels folder $WHEELS: run tools/gpu/wheels.sh on a machine with network first, then copy .whl/ here"
for pkg in $PACKAGES; do
  n=$(find "$WHEELS" -maxdepth 1 -type f -name "$pkg-*.whl" | wc -l)
  [ "$n" = 1 ] || fail_setup "$WHEELS holds $n wheels of $pkg (expected exactly 1): run tools/gpu/wheels.sh again"
done
say "wheels: $(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | wc -l) files in $WHEELS"

# The binary wheels name the one Python they are for (cp312: 3.12).
TAGS=$(find "$WHEELS" -maxdepth 1 -type f -name '*-cp3*.whl' | sed -E 's/.*-(cp3[0-9]+)-[^-]+-[^-]+\.whl$/\1/' | sort -u)
[ "$(echo $TAGS | wc -w)" -le 1 ] || fail_setup "the wheels in $WHEELS are for different Pythons ($(echo $TAGS)): run tools/gpu/wheels.sh again"
command -v "$PYTHON" >/dev/null || fail_setup "no $PYTHON on PATH (set PYTHON)"
"$PYTHON" - "${TAGS#cp3}" >"$OUT/00-gpu.log" 2>&1 <<'PY'
import sys
want = (3, int(sys.argv[1])) if sys.argv[1:] and sys.argv[1] else sys.version_info[:2]
try:
    import torch
except Exception as e:
    print(f"cannot import torch: {e!r}")
    sys.exit(10)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__}")
    sys.exit(11)
if sys.version_info[:2] != want:
    print(f"Python {sys.version.split()[0]}, not {want[0]}.{want[1]}")
    sys.exit(12)
PY
case $? in
  0) ;;
  10) fail_setup "$PYTHON $(tail -1 "$OUT/00-gpu.log"); set PYTHON to the CUDA PyTorch environment";;
  11) fail_setup "no GPU present: torch.cuda.is_available() is False on this machine ($(tail -1 "$OUT/00-gpu.log")). This check needs one NVIDIA GPU; on CPU run the test suite instead." 3;;
  12) fail_setup "the wheels are for Python 3.${TAGS#cp3}; $PYTHON is $(tail -1 "$OUT/00-gpu.log")";;
  *) fail_setup "probing the GPU failed: see $OUT/00-gpu.log";;
esac

SITE=${SITE:-$(mktemp -d /tmp/filtertron-site.XXXXXX)}
say "installing wheels into $SITE"
if ! "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl \
    >"$OUT/00-install.log" 2>&1; then
  # No pip there, or it refused: a wheel is a zip of what goes into site-packages.
  say "pip install failed (see $OUT/00-install.log); unpacking the wheels instead"
  "$PYTHON" - "$SITE" "$WHEELS"/*.whl >>"$OUT/00-install.log" 2>&1 <<'PY' \
    || fail_setup "installing the wheels failed: see $OUT/00-install.log"
import sys, zipfile
for whl in sys.argv[2:]:
    zipfile.ZipFile(whl).extractall(sys.argv[1])
    print("unpacked", whl)
PY
fi
export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=$OUT/cache/torch_extensions
export TORCHINDUCTOR_CACHE_DIR=$OUT/cache/inductor
export TRITON_CACHE_DIR=$OUT/cache/triton
export MPLCONFIGDIR=$OUT/cache/matplotlib
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
cd "$ROOT"

"$PYTHON" - >"$OUT/00-versions.log" 2>&1 <<'PY'
import platform, sys
import torch
gpu = torch.cuda.get_device_properties(0)
cap = torch.cuda.get_device_capability(0)
line = [f"python {sys.version.split()[0]}", f"torch {torch.__version__} (CUDA {torch.version.cuda})",
        "NCCL " + ".".join(map(str, torch.cuda.nccl.version()))]
failed = []
for name in ("triton", "deepspeed", "megatron.core", "pydantic"):
    try:
        line.append(f"{name} {__import__(name, fromlist=['_']).__version__}")
    except Exception as e:  # reported; the parts below fail with the details
        failed.append(f"{name}: {e!r}")
print(f"SUMMARY: {', '.join(line)}; {torch.cuda.get_device_name(0)} sm_{cap[0]}{cap[1]}, "
      f"{gpu.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s), "
      f"{platform.machine()}")
print("cudnn", torch.backends.cudnn.version())
for f in failed:
    print("IMPORT FAILED:", f)
sys.exit(1 if failed else 0)
PY
rc=$?
{ command -v nvidia-smi >/dev/null && nvidia-smi; command -v nvcc >/dev/null && nvcc --version; } \
  >>"$OUT/00-versions.log" 2>&1
VERSIONS=$(grep -a -m1 '^SUMMARY: ' "$OUT/00-versions.log" | cut -c10-)
echo "versions: ${VERSIONS:-unknown}" | tee -a "$SUMMARY"
[ $rc = 0 ] || fail_setup "an installed package does not import: $(grep -a 'IMPORT FAILED' "$OUT/00-versions.log" | head -3 | tr '\n' ' ')(see $OUT/00-versions.log)"

# --- the parts -------------------------------------------------------------------------------
left() { echo $((BUDGET - $(elapsed))); }
limit_for() { local l; l=$(left); echo $(($1 < l ? $1 : l)); }  # limit_for MAX
status_of() { cat "$STATE/$1.status" 2>/dev/null || echo NONE; }
record() {  # record NAME STATUS LINE
  echo "$2" >"$STATE/$1.status"
  echo "$3" >"$STATE/$1.line"
  echo "$3" | tee -a "$SUMMARY"
}
detail_of() {  # what a part measured, in one line, from its log
  local d
  case $1 in
    07-eval) d=$(grep -a -m1 '^| run |' "$2" | tr -s ' ' | sed 's/^| run | /token ppl (word ppl, bits\/byte) at 1x, 4x: /');;
    03-train|05-resume) d=$(grep -a '^done: ' "$2" | tail -1);;
    *) d=$(grep -a '^SUMMARY: ' "$2" | tail -1 | cut -c10-);;
  esac
  [ -n "$d" ] || d=$(tr '\r' '\n' <"$2" | grep -a -v '^[[:space:]]*$' | tail -1)
  echo "${d:0:400}"
}
part() {  # part NAME MIN_S MAX_S NEEDS COMMAND...: run COMMAND with a limit, log, record
  local name=$1 min=$(($2 * SLOWDOWN)) max=$(($3 * SLOWDOWN)) needs=$4; shift 4
  local log="$OUT/$name.log" l limit t0 rc dt
  if [ "$needs" != - ] && [ "$(status_of "$needs")" != PASS ]; then
    record "$name" SKIP "SKIP $name: needs $needs, which did not pass"; return
  fi
  l=$(left)
  if [ "$l" -lt "$min" ]; then
    record "$name" SKIP "SKIP $name: needs at least ${min}s, ${l}s of the ${BUDGET}s budget left"
    return
  fi
  limit=$((max < l ? max : l))
  if [ "$(type -t "$1")" != file ]; then
    record "$name" FAIL "FAIL $name: '$1' is a shell $(type -t "$1" || echo unknown) or missing, not a program: timeout cannot run it"
    return
  fi
  say "$name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 </dev/null
  rc=$?
  dt=$(($(date +%s) - t0))
  if [ $rc = 0 ]; then
    record "$name" PASS "PASS $name (${dt}s): $(detail_of "$name" "$log")"
  else
    local why="exit $rc"
    { [ $rc = 124 ] || [ $rc = 137 ]; } && why="timed out after ${limit}s"
    record "$name" FAIL "FAIL $name ($why, ${dt}s): $(detail_of "$name" "$log") [$log]"
    tail -n 20 "$log" | sed 's/^/    /'
  fi
}

DATA=$OUT/data/sample
RUN=$OUT/run
RESUMED=$OUT/resumed
PORT=$((20000 + RANDOM % 20000))  # the launchers' rendezvous ports: PORT and PORT + 1
TRAIN=("$PYTHON" -m deepspeed.launcher.runner --num_gpus 1 --master_addr 127.0.0.1)
TRAIN_ARGS=(launch/train.py --config configs/tiny.yaml --set "data.path=$DATA"
            --set train.steps=50 --set train.save_every=25 --set train.keep_last=2
            --set eval.every=25 --set train.log_every=10 --set train.precision=bf16
            --set parallel.zero_stage=2)
PYTEST_ARGS=(-m "gpu and not slow" -q -rfEs -p no:cacheprovider --durations=15)
if "$PYTHON" -c "import xdist" 2>/dev/null; then PYTEST_ARGS+=(-n 4); fi

part 00-prepare 10 60 - "$PYTHON" -m filtertron.cli prepare --source corpus/sample \
  --output "$DATA" --vocab-size 2048 --workers 4 --overwrite --no-progress &
PREPARE=$!
part 01-kernels 30 100 - "$PYTHON" -m pytest "${PYTEST_ARGS[@]}" tests
wait $PREPARE
L=$(limit_for 120)  # the bench spends L - 25 s and may overrun that by one misestimated case
part 02-throughput 45 "$L" 00-prepare "$PYTHON" bench/train_throughput.py --device cuda \
  --budget $((L - 25)) --data "$DATA" --out "$OUT/throughput"
part 03-train 30 100 00-prepare "${TRAIN[@]}" --master_port "$PORT" "${TRAIN_ARGS[@]}" \
  --set "train.out_dir=$RUN"
part 04-train-check 3 30 03-train "$PYTHON" tools/gpu/check_run.py train "$RUN" --steps 50
(
  part 05-resume 20 90 04-train-check bash -c \
    '"$1" tools/gpu/check_run.py rollback "$2" "$3" --step 25 && shift 3 && exec "$@"' \
    _ "$PYTHON" "$RUN" "$RESUMED" "${TRAIN[@]}" --master_port $((PORT + 1)) "${TRAIN_ARGS[@]}" \
    --set "train.out_dir=$RESUMED" --resume
  part 06-resume-check 3 30 05-resume "$PYTHON" tools/gpu/check_run.py resume "$RUN" \
    "$RESUMED" --step 25 --steps 50
) &
RESUME=$!
part 07-eval 20 90 04-train-check "$PYTHON" -m filtertron.cli eval "$RUN" --data "$DATA" \
  --lengths 1x,4x --contamination 0,0.1 --out "$OUT/eval"
part 08-generate 10 45 04-train-check "$PYTHON" -m filtertron.cli generate "$RUN" \
  --prompt "The" --max-new-tokens 32
wait $RESUME
L=$(left)
part 09-attention 30 "$L" - "$PYTHON" bench/attention.py --device cuda --budget $((L - 20)) \
  --out "$OUT/attention"

# --- the final summary -----------------------------------------------------------------------
PARTS="00-prepare 01-kernels 02-throughput 03-train 04-train-check 05-resume 06-resume-check
       07-eval 08-generate 09-attention"
FAILED=0
{
  echo "--- summary (parts in order)"
  echo "versions: ${VERSIONS:-unknown}"
  pass=0 fail=0 skip=0
  for p in $PARTS; do
    case $(status_of "$p") in
      PASS) pass=$((pass + 1));; FAIL) fail=$((fail + 1));; SKIP) skip=$((skip + 1));;
      *) fail=$((fail + 1)); echo "FAIL $p: never recorded a result" >"$STATE/$p.line";;
    esac
    cat "$STATE/$p.line"
  done
  echo "$pass passed, $fail failed, $skip skipped in $(elapsed)s (budget ${BUDGET}s)"
} | tee -a "$SUMMARY"
grep -q '^FAIL' "$STATE"/*.line && FAILED=1
exit $FAILED
}
