#!/usr/bin/env bash
# The Perl documentation as a prepared dataset (docs/results.md): Debian's perl-doc, 207 .pod
# files split by file (every 10th to validation, every 10th from the 5th to test), one
# document per file, a 2048-token SentencePiece BPE trained by `filtertron prepare`.
#
#   apt-get install -y perl-doc       # once, where Debian's mirror is reachable
#   tools/prepare_perl_doc.sh [OUT]   # default data/perl-doc (about 7 MB; data/ is ignored)
#
# The result can be carried to a machine without network (e.g. a GPU session's device tool
# carries data/perl-doc when asked to). Environment: PYTHON (default .venv/bin/python, else
# python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/data/perl-doc}
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
POD=$(ls -d /usr/share/perl/5.*/pod 2>/dev/null | sort | tail -1 || true)
[ -n "$POD" ] || { echo "prepare_perl_doc.sh: no /usr/share/perl/5.*/pod: apt-get install -y perl-doc" >&2; exit 2; }
SRC=$(mktemp -d /tmp/perl-doc-src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
i=0
for f in $(ls "$POD"/*.pod | sort); do
  case $((i % 10)) in 0) s=valid;; 5) s=test;; *) s=train;; esac
  cp "$f" "$SRC/$(basename "$f" .pod).$s.txt"; i=$((i + 1))
done
echo "prepare_perl_doc.sh: $i files from $POD"
PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m filtertron.cli prepare --source "$SRC" \
  --output "$OUT" --vocab-size 2048 --txt-docs file --encoding-errors replace --workers 1
