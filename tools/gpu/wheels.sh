#!/usr/bin/env bash
# Fill .whl/ with the Python 3.12 x86-64 wheels a stock CUDA PyTorch image lacks, so that
# tools/gpu/check.sh can install them on a GPU machine without network.
#
#   tools/gpu/wheels.sh            # needs PyPI (pip download / pip wheel); runs on any machine
#
# What: deepspeed (built here as a pure-Python wheel with DS_BUILD_OPS=0; ops compile on first
# use there, and filtertron's configs need none on CUDA), megatron-core, and the requirements
# of the two that the GPU image (shared/notes/gpu-machine.md) does not have: hjson, pydantic,
# pydantic-core, annotated-types, typing-inspection. Everything else they need (numpy, torch,
# packaging, einops, msgpack, ninja, psutil, py-cpuinfo, tqdm, typing-extensions) is there.
# Versions: exactly the ones of this checkout's environment (the ones the tests ran with), one
# wheel per package; other versions found in .whl/ are removed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${FILTERTRON_WHEELS:-$ROOT/.whl}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
PACKAGES="deepspeed megatron-core hjson pydantic pydantic-core annotated-types typing-inspection"
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)

die() { echo "wheels.sh: $*" >&2; exit 1; }

version_of() {  # the installed version of a distribution in $PYTHON's environment
  "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" \
    2>/dev/null || die "$1 is not installed in $PYTHON's environment (make install first)"
}

wheel_name() { echo "$1" | tr '-' '_'; }  # wheel files spell - as _

mkdir -p "$OUT"
echo "wheels for Python 3.12 / x86-64 into $OUT (versions from $PYTHON)"
for pkg in $PACKAGES; do
  ver=$(version_of "$pkg")
  name=$(wheel_name "$pkg")
  # one version of each: drop wheels of other versions
  for f in "$OUT"/"$name"-*.whl; do
    [ -e "$f" ] || continue
    case "$(basename "$f")" in "$name-$ver-"*) ;; *) echo "  removing $(basename "$f")"; rm -f "$f";; esac
  done
  if ls "$OUT"/"$name-$ver-"*.whl >/dev/null 2>&1; then
    echo "  have $pkg $ver"
    continue
  fi
  if [ "$pkg" = deepspeed ]; then
    # No binary wheel on PyPI: build one without ops (pure Python, any platform).
    echo "  building $pkg $ver (DS_BUILD_OPS=0)"
    # --no-build-isolation: build with this environment's setuptools and torch instead of
    # letting pip fetch a (multi-GB) torch into an isolated build environment.
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" \
      "$pkg==$ver" \
      || die "building $pkg $ver failed"
  else
    echo "  downloading $pkg $ver"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" --dest "$OUT" \
      "$pkg==$ver" || die "no Python 3.12 x86-64 wheel of $pkg $ver"
  fi
done
# Check: exactly one wheel per package, each installable on CPython 3.12 x86-64.
for pkg in $PACKAGES; do
  n=$(find "$OUT" -maxdepth 1 -type f -name "$(wheel_name "$pkg")-*.whl" | wc -l)
  [ "$n" = 1 ] || die "$pkg: $n wheels in $OUT, expected 1"
done
for f in "$OUT"/*.whl; do
  case "$(basename "$f")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*x86_64*.whl) ;;
    *) die "$(basename "$f") is not for CPython 3.12 x86-64";;
  esac
done
ls -l "$OUT"
echo "done: copy the checkout (with .whl/) to the GPU machine and run tools/gpu/check.sh OUTDIR"
