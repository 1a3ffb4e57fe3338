#!/usr/bin/env bash
# The 6-minute scaling sweep on one GPU, after tools/gpu/check.sh in the same session:
#
#   SITE=/tmp/site tools/gpu/check.sh OUT/check      # installs .whl/ into $SITE, checks
#   SITE=/tmp/site tools/gpu/sweep.sh OUT/sweep      # this: configs/sweeps/gpu-6min.yaml
#
# Trains the preset's 60 runs in one process (--plan inprocess), fits both approaches and
# writes OUT/gpu-6min/fit/ and OUT/gpu-6min/gpu-6min-results.tar.gz (table, fits,
# multipliers, plots, every run's result, metrics and log; no checkpoints), plus
# OUT/overhead.txt (each run's start and end overhead in this process). Needs the prepared
# Perl documentation in data/perl-doc (tools/prepare_perl_doc.sh where apt works; carry data/
# to the GPU machine). SWEEP_BUDGET (seconds, default 330) stops the training: what finished
# is still collected, fitted and archived, and `--resume` continues it later.
# Environment: PYTHON (default python3), SITE (the wheels' prefix; installed from .whl/ into a
# temporary folder when it has no deepspeed), DATA (default data/perl-doc).
# Exit status: 0 all runs finished and fitted; 1 some runs missing or failed; 2 set-up error.
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: tools/gpu/sweep.sh OUTDIR" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python3}
DATA=${DATA:-$ROOT/data/perl-doc}
BUDGET=${SWEEP_BUDGET:-330}
START=$(date +%s)
say() { echo "[sweep $(($(date +%s) - START))s] $*"; }
die() { echo "sweep.sh: $1" >&2; exit 2; }

[ -f "$DATA/train.bin" ] || die "no prepared dataset in $DATA: run tools/prepare_perl_doc.sh where perl-doc can be installed, and carry data/ here"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "no GPU: torch.cuda.is_available() is False"
SITE=${SITE:-}
if [ -z "$SITE" ] || [ ! -d "$SITE/deepspeed" ]; then
  SITE=$(mktemp -d /tmp/filtertron-site.XXXXXX)
  say "installing $ROOT/.whl/*.whl into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$ROOT"/.whl/*.whl \
    >"$OUT/install.log" 2>&1 \
    || "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
         "$SITE" "$ROOT"/.whl/*.whl >>"$OUT/install.log" 2>&1 \
    || die "installing the wheels failed: see $OUT/install.log"
fi
export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=$OUT/cache/torch_extensions TORCHINDUCTOR_CACHE_DIR=$OUT/cache/inductor
export TRITON_CACHE_DIR=$OUT/cache/triton MPLCONFIGDIR=$OUT/cache/matplotlib
cd "$ROOT"
SWEEP=(-m filtertron.cli sweep configs/sweeps/gpu-6min.yaml --out "$OUT/gpu-6min"
       --set "data.path=$DATA")
"$PYTHON" "${SWEEP[@]}" --plan inprocess --dry-run >"$OUT/dry-run.txt" 2>&1 \
  || die "the dry run failed: see $OUT/dry-run.txt"
grep "^estimated" "$OUT/dry-run.txt"
say "training (limit ${BUDGET}s; log $OUT/train.log)"
timeout --signal=INT --kill-after=20 "$BUDGET" "$PYTHON" "${SWEEP[@]}" --plan inprocess --resume \
  >"$OUT/train.log" 2>&1
rc=$?
say "training ended with status $rc ($( [ $rc = 124 ] && echo "stopped at the ${BUDGET}s limit" || echo done))"
say "collecting, fitting, archiving"
timeout 120 "$PYTHON" "${SWEEP[@]}" --resume --collect --fit --archive >"$OUT/fit.log" 2>&1
frc=$?
sed -n '/^wrote .*table.csv/p; /^# Scaling comparison/,/^## The runs/p' "$OUT/fit.log" | head -40
"$PYTHON" bench/sweep_overhead.py --summarize "$OUT/gpu-6min" >"$OUT/overhead.txt" 2>&1
cat "$OUT/overhead.txt"
ls -l "$OUT"/gpu-6min/*.tar.gz 2>/dev/null
say "done"
[ $rc = 0 ] && [ $frc = 0 ] && exit 0
exit 1
