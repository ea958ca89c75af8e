#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target in fuzz/ (CI: .ci/run).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# 0 seconds: build, and only run each target over its seed corpus once.
# Builds the targets once, then runs each for the given time from a scratch
# copy of its committed seed corpus (fuzz/corpus/<target>: never grown here).
# Fails if a target finds a crash, printing the input and how to reproduce it.
#
# Environment:
#   FUZZ_TARGET_DIR  build dir (default: $CARGO_TARGET_DIR/fuzz, or target/fuzz)
#   FUZZ_QUICK       1: build with 16 codegen units and no sanitizer (CI:
#                    ~6 min cold on 2 cores instead of ~14); panics, timeouts
#                    and out-of-memory are still caught, not memory errors in C
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_TARGETS     targets to run (default: all of `cargo fuzz list`)
#   FUZZ_ARGS        more libFuzzer flags, e.g. "-malloc_limit_mb=100000"
#   ASAN_OPTIONS     default allocator_may_return_null=1: a failed fallible
#                    allocation (try_reserve) fails as in production instead
#                    of aborting; libFuzzer still reports any single
#                    allocation above -malloc_limit_mb (default 2048 MB).
#
# Needs only stable Rust: cargo-fuzz passes -Z flags, which RUSTC_BOOTSTRAP=1
# allows. cargo-fuzz is installed from crates.io when missing (~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/fuzz}"
export PATH="$HOME/.cargo/bin:$PATH"
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1}"
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Same flags for building here and for the reproduce command printed below.
# Release (-O) with ASan; outpost's own code has overflow checks and debug
# assertions (fuzz/Cargo.toml profile), its dependencies run as released.
# Not --dev: it turns on overflow checks in every dependency, and yrs 0.28
# overflows on a crafted update (harmless in a release build).
if [ "${FUZZ_QUICK:-0}" = 1 ]; then
  sanitizer=none
  build_flags=(-O --sanitizer none --codegen-units 16)
else
  build_flags=(-O --sanitizer "$sanitizer")
fi
started=$SECONDS
echo "== fuzz build (${build_flags[*]}, target dir $CARGO_TARGET_DIR)"
cargo fuzz build "${build_flags[@]}"
echo "== fuzz build took $((SECONDS - started)) s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$CARGO_TARGET_DIR/$host/release"
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/outpost-fuzz.XXXXXX")
keep_scratch=0
cleanup() {
  if [ "$keep_scratch" = 0 ]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT

failed=()
for target in "${targets[@]}"; do
  corpus="$scratch/corpus/$target"
  artifacts="$root/fuzz/artifacts/$target"
  log="$scratch/$target.log"
  mkdir -p "$corpus" "$artifacts" "$scratch/tmp/$target"
  if [ -d "fuzz/corpus/$target" ]; then
    cp -R "fuzz/corpus/$target/." "$corpus/"
  fi
  dict=()
  if [ -f "fuzz/dict/$target.dict" ]; then
    dict=("-dict=fuzz/dict/$target.dict")
  fi
  if [ "$seconds" = 0 ]; then
    limit=(-runs=0) # -max_total_time=0 would mean no limit
  else
    limit=("-max_total_time=$seconds")
  fi
  echo "== fuzz $target (${seconds} s)"
  before=$(find "$artifacts" -type f | wc -l)
  t0=$SECONDS
  status=0
  # TMPDIR: the databases apply_entry creates go away with the scratch dir.
  TMPDIR="$scratch/tmp/$target" "$bin_dir/$target" "$corpus" ${dict[@]+"${dict[@]}"} \
    "${limit[@]}" -timeout=60 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" ${extra_args[@]+"${extra_args[@]}"} >"$log" 2>&1 || status=$?
  elapsed=$((SECONDS - t0))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(find "$corpus" -type f -exec cat {} + | wc -c)
  echo "   ran ${elapsed} s, ${execs:-?} executions, corpus ${files} files / ${bytes} bytes (exit ${status})"
  after=$(find "$artifacts" -type f | wc -l)
  if [ "$status" != 0 ] || [ "$after" -gt "$before" ]; then
    failed+=("$target")
    keep_scratch=1
    echo "!! $target failed; the end of its log ($log):"
    tail -n 60 "$log"
    crash=$(grep -o 'Test unit written to .*' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
    run="ASAN_OPTIONS=$ASAN_OPTIONS CARGO_TARGET_DIR=$CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target"
    if [ -n "$crash" ]; then
      echo "!! crash input: $crash"
      echo "!! reproduce:   $run $crash"
      if [ "$target" = apply_entry ]; then
        echo "!! (apply_entry keeps database state between inputs; if the input alone passes,"
        echo "!!  replay the run's corpus before it: cp $crash $corpus/ && $run $corpus -- -runs=0)"
      fi
    fi
  fi
done

echo "== fuzz done in $((SECONDS - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "!! crashes in: ${failed[*]} (inputs under fuzz/artifacts/, scratch kept at $scratch)" >&2
  exit 1
fi
