#!/usr/bin/env bash
# Checks the deploy kit (deploy/, issue 9) without a Docker engine:
#
#   bash scripts/check-deploy.sh           # static checks, a few seconds
#   bash scripts/check-deploy.sh --fleet   # and the compose fleet run as local processes (~30 s)
#
# Static checks, each printed as PASS, FAIL or SKIPPED:
#   ShellCheck       every *.sh under scripts/ and deploy/, and .ci/run
#   hadolint         deploy/Dockerfile
#   dockerfile       every file the Dockerfile COPYs from the context exists and
#                    .dockerignore lets it through
#   compose          `docker-compose config` accepts deploy/compose.yaml; no
#                    `version:` key, every image tag pinned (no :latest), every
#                    bind-mounted file (the monitoring config) exists
#   systemd          `systemd-analyze verify` on deploy/outpost.service (a temp
#                    copy whose ExecStart names a temp executable: verify wants
#                    the binary to exist) and its offline security exposure
#                    at most 2.0
#
# --fleet runs, with the real outpost binary and a real SeaweedFS, exactly the
# command lines and environments deploy/compose.yaml gives the init, seaweedfs
# and edge services (read from `docker-compose config`, plus the image's ENV
# and ENTRYPOINT from the Dockerfile): container paths become temp dirs,
# `edgeN:PORT`/`0.0.0.0:PORT` become loopback ports. It runs init twice
# (idempotent), starts SeaweedFS and the three edges, waits for each compose
# healthcheck to pass, mints a token on edge1 the way deploy/README.md says,
# writes on edge1 with it and reads the row on edge3 with the same token, waits
# until every peer link is connected and every node's backup has caught up,
# restores edge1 from the bucket and finds the row, runs init on the restored
# node (deploy/README.md's rebuild), and stops the edges with SIGTERM within
# compose's stop_grace_period.
#
# Tools come from OUTPOST_SHELLCHECK, OUTPOST_HADOLINT, OUTPOST_COMPOSE,
# OUTPOST_SYSTEMD_ANALYZE (as printed by scripts/deploy-tools.sh, which
# installs them), else from PATH. A missing tool makes its check SKIPPED, or a
# failure when OUTPOST_REQUIRE_TOOLS=1. --fleet uses OUTPOST_BIN (else builds
# target/debug/outpost) and OUTPOST_WEED (else runs scripts/s3-tools.sh).
# Works from any directory; exits 1 if any check failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fleet=0
for arg in "$@"; do
  case "$arg" in
    --fleet) fleet=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "check-deploy.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

failed=()
skipped=()
work="$(mktemp -d "${TMPDIR:-/tmp}/outpost-check-deploy.XXXXXX")"
trap 'rm -rf "$work"' EXIT

pass() { echo "PASS     $1"; }
fail() {
  echo "FAIL     $1" >&2
  failed+=("$1")
}
skip() {
  if [ "${OUTPOST_REQUIRE_TOOLS:-0}" = 1 ]; then
    fail "$1: $2 (OUTPOST_REQUIRE_TOOLS=1)"
    return
  fi
  echo "SKIPPED  $1: $2 (install it: bash scripts/deploy-tools.sh)" >&2
  skipped+=("$1")
}

# tool VAR NAME [FALLBACK]: the tool's path from $VAR, PATH or FALLBACK.
tool() {
  local var="$1" name="$2" fallback="${3:-}" path
  path="${!var:-}"
  if [ -n "$path" ] && [ -x "$path" ]; then
    echo "$path"
  elif path="$(command -v "$name" 2>/dev/null)"; then
    echo "$path"
  elif [ -n "$fallback" ] && [ -x "$fallback" ]; then
    echo "$fallback"
  else
    return 1
  fi
}

# Shows a failed check's output, indented.
show() {
  sed 's/^/         /' "$1" >&2
}

check_shellcheck() {
  local sc files=()
  if ! sc="$(tool OUTPOST_SHELLCHECK shellcheck)"; then
    skip shellcheck "shellcheck not found"
    return
  fi
  while IFS= read -r f; do files+=("$f"); done < <(
    { find scripts deploy -name '*.sh' -type f; [ -f .ci/run ] && echo .ci/run; } | sort
  )
  if "$sc" --external-sources --source-path=SCRIPTDIR "${files[@]}" >"$work/shellcheck.out" 2>&1; then
    pass "shellcheck (${#files[@]} scripts: ${files[*]})"
  else
    fail "shellcheck: findings in $(grep -c '^In ' "$work/shellcheck.out") places"
    show "$work/shellcheck.out"
  fi
}

check_hadolint() {
  local hl
  if ! hl="$(tool OUTPOST_HADOLINT hadolint "${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}/venv/bin/hadolint")"; then
    skip hadolint "hadolint not found"
    return
  fi
  if "$hl" deploy/Dockerfile >"$work/hadolint.out" 2>&1; then
    pass "hadolint deploy/Dockerfile ($("$hl" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1))"
  else
    fail "hadolint deploy/Dockerfile"
    show "$work/hadolint.out"
  fi
}

# The build context is the repo root: a COPY source that is missing, or that
# .dockerignore drops, fails `docker build` only on a machine with an engine.
check_dockerfile() {
  if python3 deploy/docker/dockerfile.py >"$work/dockerfile.out" 2>&1; then
    pass "dockerfile: every COPY source exists and passes .dockerignore"
  else
    fail "dockerfile: COPY sources"
    show "$work/dockerfile.out"
  fi
}

check_compose() {
  local dc
  if ! dc="$(tool OUTPOST_COMPOSE docker-compose)"; then
    skip compose "docker-compose not found"
    return
  fi
  # Defaults only: the caller's OUTPOST_BIND or OUTPOST_IMAGE must not change
  # what is checked.
  if ! env -u OUTPOST_BIND -u OUTPOST_IMAGE -u GRAFANA_ADMIN_PASSWORD \
    "$dc" --project-directory deploy -f deploy/compose.yaml config >"$work/compose.yaml" 2>"$work/compose.err"; then
    fail "compose: docker-compose config rejects deploy/compose.yaml"
    show "$work/compose.err"
    return
  fi
  if python3 - "$work/compose.yaml" >"$work/compose.out" 2>&1 <<'PY'; then
import os, sys, yaml

problems = []
raw = yaml.safe_load(open("deploy/compose.yaml"))
if "version" in raw:
    problems.append("a top-level `version:` key (obsolete in the Compose spec)")
config = yaml.safe_load(open(sys.argv[1]))
for name, service in config["services"].items():
    image = service.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if not tag or tag == "latest":
        problems.append(f"{name}: image {image!r} is not pinned to a version tag")
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("/") and not os.path.exists(source):
            problems.append(f"{name}: bind mount source {source} does not exist")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
    pass "compose: $("$dc" version --short 2>/dev/null || echo docker-compose) config accepts deploy/compose.yaml; images pinned; bind sources exist"
  else
    fail "compose: deploy/compose.yaml"
    show "$work/compose.out"
  fi
}

check_systemd() {
  local sa unit="$work/unit/outpost.service" exposure
  if ! sa="$(tool OUTPOST_SYSTEMD_ANALYZE systemd-analyze)"; then
    skip systemd "systemd-analyze not found"
    return
  fi
  mkdir -p "$work/unit"
  printf '#!/bin/sh\nexit 0\n' >"$work/unit/outpost"
  chmod +x "$work/unit/outpost"
  sed "s|/usr/local/bin/outpost|$work/unit/outpost|g" deploy/outpost.service >"$unit"
  if ! "$sa" verify "$unit" >"$work/systemd.out" 2>&1 || [ -s "$work/systemd.out" ]; then
    fail "systemd: systemd-analyze verify deploy/outpost.service"
    show "$work/systemd.out"
    return
  fi
  # --offline judges the unit file alone (no running systemd needed).
  # --threshold is on the internal 0..100 scale: 20 is the printed 2.0.
  if ! "$sa" security --offline=true --threshold=20 "$unit" >"$work/security.out" 2>&1; then
    fail "systemd: exposure above 2.0: $(grep -o 'Overall exposure level.*' "$work/security.out" || tail -n 3 "$work/security.out")"
    return
  fi
  exposure="$(grep -o 'Overall exposure level for [^:]*: [0-9.]* [A-Z]*' "$work/security.out" | sed 's/.*: //')"
  pass "systemd: systemd-analyze verify deploy/outpost.service; security exposure ${exposure:-?} (threshold 2.0)"
}

check_shellcheck
check_hadolint
check_dockerfile
check_compose
check_systemd

if [ "$fleet" = 1 ]; then
  if ! dc="$(tool OUTPOST_COMPOSE docker-compose)"; then
    skip fleet "docker-compose not found (it reads deploy/compose.yaml)"
  else
    bin="${OUTPOST_BIN:-}"
    if [ -z "$bin" ]; then
      export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
      cargo build --locked --bin outpost
      bin="$CARGO_TARGET_DIR/debug/outpost"
    fi
    if [ -z "${OUTPOST_WEED:-}" ]; then
      s3_tools="$(bash scripts/s3-tools.sh)"
      eval "$s3_tools"
    fi
    env -u OUTPOST_BIND -u OUTPOST_IMAGE \
      "$dc" --project-directory deploy -f deploy/compose.yaml config >"$work/fleet-compose.yaml"
    if OUTPOST_BIN="$bin" OUTPOST_WEED="$OUTPOST_WEED" \
      python3 "$root/deploy/docker/local-fleet.py" "$work/fleet-compose.yaml" "$work/fleet"; then
      pass "fleet: the compose fleet's commands, run as local processes"
    else
      fail "fleet: the compose fleet's commands, run as local processes (see above)"
    fi
  fi
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "check-deploy: ${#failed[@]} FAILED: ${failed[*]}" >&2
  exit 1
fi
if [ ${#skipped[@]} -gt 0 ]; then
  echo "check-deploy: passed, but SKIPPED ${skipped[*]}: a missing tool is not a pass (OUTPOST_REQUIRE_TOOLS=1 makes it fail)" >&2
else
  echo "check-deploy: all checks passed"
fi
