#!/usr/bin/env bash
# The one-command GPU check: run on a machine with one NVIDIA GPU and no network.
#
#   tools/gpu/check.sh OUTDIR
#
# Needs .whl/ from tools/gpu/wheels.sh (run it where PyPI is reachable). Installs those wheels
# into a temporary prefix (pip --no-index --no-deps --target, then PYTHONPATH), prints the
# versions, and runs, each with its own time limit and log file OUTDIR/NN-name.log:
#   1. pytest -m gpu                     (trainer step on CUDA + NCCL, eval reduction, kernels)
#   2. filtertron prepare corpus/sample  (offline)
#   3. train: 50 steps, tiny preset, bf16, ZeRO-2, through the deepspeed launcher (NCCL)
#   4. resume: the same run resumed from its step-25 checkpoint; steps 26-50 must repeat
#   5. filtertron eval on the trained run
#   6. python bench/attention.py --device cuda --out OUTDIR/bench
# and writes OUTDIR/summary.txt (one PASS / FAIL / SKIP line per part). Exit status: 0 if all
# passed, 1 if a part failed, 2 for a usage or set-up error, 3 when no GPU is present.
# Expected to finish in under 8 minutes on an H100-class GPU; CHECK_BUDGET (seconds, default
# 480) skips the parts that would start after it. Environment: PYTHON (default python3),
# FILTERTRON_WHEELS (default .whl/), SITE (install prefix, default a fresh temporary folder).
set -uo pipefail

usage() { echo "usage: tools/gpu/check.sh OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$1
mkdir -p "$OUT" || { echo "check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${FILTERTRON_WHEELS:-$ROOT/.whl}
BUDGET=${CHECK_BUDGET:-480}
SUMMARY=$OUT/summary.txt
START=$(date +%s)
: >"$SUMMARY"

say() { echo "[check $(($(date +%s) - START))s] $*"; }
fail_setup() { echo "check.sh: $1" | tee -a "$SUMMARY" >&2; exit "${2:-2}"; }

# --- 1. the wheels folder: every package, one version each ---------------------------------
PACKAGES="deepspeed megatron_core hjson pydantic pydantic_core annotated_types typing_inspection"
[ -d "$WHEELS" ] || fail_setup "no wheels folder $WHEELS: run tools/gpu/wheels.sh on a machine with network first, then copy .whl/ here"
for pkg in $PACKAGES; do
  n=$(find "$WHEELS" -maxdepth 1 -type f -name "$pkg-*.whl" | wc -l)
  [ "$n" = 1 ] || fail_setup "$WHEELS holds $n wheels of $pkg (expected exactly 1): run tools/gpu/wheels.sh again"
done
say "wheels: $(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | wc -l) files in $WHEELS"

# --- 2. a GPU -------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || fail_setup "no $PYTHON on PATH (set PYTHON)"
"$PYTHON" -c "import torch" >"$OUT/00-gpu.log" 2>&1 \
  || fail_setup "$PYTHON cannot import torch ($(tail -1 "$OUT/00-gpu.log")); set PYTHON to the CUDA PyTorch environment"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    >"$OUT/00-gpu.log" 2>&1; then
  fail_setup "no GPU present: torch.cuda.is_available() is False on this machine (torch $("$PYTHON" -c 'import torch; print(torch.__version__)')). This check needs one NVIDIA GPU; on CPU run the test suite instead." 3
fi
"$PYTHON" -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)" \
  || fail_setup "the wheels are for Python 3.12; $PYTHON is $("$PYTHON" -V 2>&1)"

# --- 3. install into a temporary prefix ------------------------------------------------------
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

# --- 4. versions -----------------------------------------------------------------------------
"$PYTHON" - >"$OUT/00-versions.log" 2>&1 <<'PY'
import platform, sys
import torch
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("nccl", ".".join(map(str, torch.cuda.nccl.version())))
print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB",
      "count", torch.cuda.device_count())
for name in ("triton", "deepspeed", "megatron.core", "pydantic", "sentencepiece", "numpy"):
    try:
        mod = __import__(name, fromlist=["_"])
        print(name, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:  # reported, the parts below will fail with the details
        print(name, "IMPORT FAILED:", repr(e))
PY
rc=$?
cat "$OUT/00-versions.log"
[ $rc = 0 ] || fail_setup "reading versions failed: see $OUT/00-versions.log"
grep -q "IMPORT FAILED" "$OUT/00-versions.log" && fail_setup "an installed package does not import: see $OUT/00-versions.log"
{ command -v nvidia-smi >/dev/null && nvidia-smi; command -v nvcc >/dev/null && nvcc --version; } \
  >>"$OUT/00-versions.log" 2>&1

# --- 5. the parts ------------------------------------------------------------------------------
declare -A STATUS
FAILED=0
part() {  # part NAME LIMIT_S NEEDS COMMAND...: run with a time limit, log, record
  local name=$1 limit=$2 needs=$3; shift 3
  local log="$OUT/$name.log" t0 rc
  if [ "$needs" != - ] && [ "${STATUS[$needs]:-}" != PASS ]; then
    echo "SKIP $name (needs $needs)" | tee -a "$SUMMARY"; STATUS[$name]=SKIP; return
  fi
  if [ $(($(date +%s) - START)) -ge "$BUDGET" ]; then
    echo "SKIP $name (past the ${BUDGET}s budget)" | tee -a "$SUMMARY"; STATUS[$name]=SKIP; return
  fi
  say "$name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0))
  if [ $rc = 0 ]; then
    echo "PASS $name (${dt}s)" | tee -a "$SUMMARY"; STATUS[$name]=PASS
  else
    local why="exit $rc"; [ $rc = 124 ] || [ $rc = 137 ] && why="timed out after ${limit}s"
    echo "FAIL $name ($why, ${dt}s): see $log" | tee -a "$SUMMARY"; STATUS[$name]=FAIL
    FAILED=1
    tail -n 25 "$log" | sed 's/^/    /'
  fi
}

DATA=$OUT/data/sample
RUN=$OUT/run
TRAIN_SETS=(--set "data.path=$DATA" --set "train.out_dir=$RUN" --set train.steps=50
            --set train.save_every=25 --set train.keep_last=2 --set eval.every=25
            --set train.log_every=10 --set train.precision=bf16 --set parallel.zero_stage=2)
launch() {  # the deepspeed launcher on this machine's one GPU (NCCL)
  "$PYTHON" -m deepspeed.launcher.runner --num_gpus 1 --master_addr 127.0.0.1 \
    --master_port "$1" launch/train.py --config configs/tiny.yaml "${@:2}"
}

part 01-pytest-gpu 240 - "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider tests
part 02-prepare 90 - "$PYTHON" -m filtertron.cli prepare --source corpus/sample --output "$DATA" \
  --vocab-size 2048 --workers 4 --overwrite --no-progress
part 03-train 240 02-prepare launch 29511 "${TRAIN_SETS[@]}"
part 03-train-check 30 03-train "$PYTHON" - "$RUN" <<'PY'
import json, math, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
assert sorted(losses) == list(range(1, 51)), sorted(losses)
assert all(math.isfinite(v) for v in losses.values()), losses
assert losses[50] < losses[1], (losses[1], losses[50])
assert (run / "checkpoints" / "step_00000050" / "model.pt").is_file()
mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
print(f"loss {losses[1]:.4f} -> {losses[50]:.4f}; val_loss {rows[-1]['val_loss']:.4f}; "
      f"median tokens/s {sorted(r['tokens_per_s'] for r in rows if 'tokens_per_s' in r)[25]:,.0f}; "
      f"MFU logged on {len(mfu)} steps, max {max(mfu, default=float('nan')):.4f}")
assert all(0 < m <= 1 for m in mfu)
PY
# Resume: a copy of the run rolled back to its step-25 checkpoint trains steps 26-50 again.
RESUMED=$OUT/resumed
part 04-resume 180 03-train-check bash -c '
  rm -rf "$1" && cp -r "$2" "$1" && rm -rf "$1/checkpoints/step_00000050" "$1/metrics.jsonl" &&
  shift 2 && "$@"' _ "$RESUMED" "$RUN" "$PYTHON" -m deepspeed.launcher.runner --num_gpus 1 \
  --master_addr 127.0.0.1 --master_port 29512 launch/train.py --config configs/tiny.yaml \
  "${TRAIN_SETS[@]}" --set "train.out_dir=$RESUMED" --resume
part 04-resume-check 30 04-resume "$PYTHON" - "$RUN" "$RESUMED" <<'PY'
import json, sys
from pathlib import Path
def losses(d):
    rows = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
ref, got = losses(sys.argv[1]), losses(sys.argv[2])
assert sorted(got) == list(range(26, 51)), sorted(got)
diff = max(abs(got[s] - ref[s]) for s in got)
print(f"resumed steps 26-50: max |loss - uninterrupted| = {diff:.2e}")
assert diff <= 0.05, diff  # bf16; identical kernels and data order give ~0
PY
part 05-eval 180 03-train-check "$PYTHON" -m filtertron.cli eval "$RUN" --data "$DATA" \
  --lengths 1x,4x --contamination 0,0.1 --out "$OUT/eval" --no-progress
part 06-bench-attention 240 - "$PYTHON" bench/attention.py --device cuda --out "$OUT/bench"

TOTAL=$(($(date +%s) - START))
{
  echo "---"
  echo "$(grep -c '^PASS' "$SUMMARY") passed, $(grep -c '^FAIL' "$SUMMARY") failed, $(grep -c '^SKIP' "$SUMMARY") skipped in ${TOTAL}s"
  head -4 "$OUT/00-versions.log"
} | tee -a "$SUMMARY"
exit $FAILED
