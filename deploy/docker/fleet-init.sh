#!/usr/bin/env bash
# Initialises the data dirs of a fleet of outpost nodes that share one cluster
# CA and one JWT key pair: deploy/compose.yaml's one-shot `init` service runs
# it (installed in the image as /usr/local/bin/outpost-fleet-init), and
# `scripts/check-deploy.sh --fleet` runs the same command line on this machine.
#
#   outpost-fleet-init --ca-dir DIR [--owner UID:GID] NAME=DATA_DIR...
#
# For every node, `outpost init --data-dir DATA_DIR --ca-dir DIR --host NAME`:
# the node's id, its JWT key pair and its sync certificate (valid for NAME,
# the address its peers dial, besides localhost), signed by the cluster CA in
# DIR, which the first run creates.
#
# One JWT key pair for the whole fleet: the first node's pair (created by its
# `outpost init`) is copied into every other node's keys/ before its init,
# which then keeps it. A token minted on any node (`outpost token`) is
# accepted by all of them, so a client can fail over between nodes.
#
# Safe to run again (compose runs it at every `up`): `outpost init` keeps what
# exists, and this script refuses, with what to do, a fleet whose nodes no
# longer agree (a node with another JWT key pair, or a certificate from
# another CA, e.g. after the CA volume was deleted): serving such a fleet
# would fail later and less clearly (tokens refused, mTLS handshakes refused).
#
# --owner: run as root, hand the data dirs to the user the nodes run as (the
# image's uid 10001). The CA dir (with ca.key) stays private to its owner:
# nodes need only ca.pem, which `outpost init` copies into each tls/.
set -euo pipefail

outpost="${OUTPOST_BIN:-outpost}"
ca_dir=""
owner=""
nodes=()

usage() {
  echo "usage: outpost-fleet-init --ca-dir DIR [--owner UID:GID] NAME=DATA_DIR..." >&2
  exit 2
}

fail() {
  echo "outpost-fleet-init: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --ca-dir) [ $# -ge 2 ] || usage; ca_dir="$2"; shift 2 ;;
    --owner) [ $# -ge 2 ] || usage; owner="$2"; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "outpost-fleet-init: unknown option $1" >&2; usage ;;
    *=*) nodes+=("$1"); shift ;;
    *) echo "outpost-fleet-init: expected NAME=DATA_DIR, got '$1'" >&2; usage ;;
  esac
done
if [ -z "$ca_dir" ] || [ ${#nodes[@]} -eq 0 ]; then
  usage
fi

# The CA key signs every node certificate: nobody else may read it.
umask 077
mkdir -p "$ca_dir"
chmod 0700 "$ca_dir"

same_file() {
  cmp -s "$1" "$2"
}

first_keys=""
for node in "${nodes[@]}"; do
  name="${node%%=*}"
  dir="${node#*=}"
  if [ -z "$name" ] || [ -z "$dir" ]; then
    fail "expected NAME=DATA_DIR, got '$node'"
  fi
  keys="$dir/keys"
  if [ -z "$first_keys" ]; then
    first_keys="$keys"
  elif [ -f "$keys/jwt.pub.pem" ] || [ -f "$keys/jwt.key.pem" ]; then
    if ! same_file "$keys/jwt.pub.pem" "$first_keys/jwt.pub.pem" \
      || ! same_file "$keys/jwt.key.pem" "$first_keys/jwt.key.pem"; then
      fail "$name ($keys) has a JWT key pair other than the fleet's ($first_keys):" \
        "tokens would not work on every node. Remove $keys and run this again."
    fi
  else
    mkdir -p "$keys"
    # cp -p keeps jwt.key.pem at mode 0600.
    cp -p "$first_keys/jwt.key.pem" "$first_keys/jwt.pub.pem" "$keys/"
    echo "$name: copied the fleet's JWT key pair from $first_keys"
  fi

  echo "$name: outpost init --data-dir $dir --ca-dir $ca_dir --host $name"
  "$outpost" init --data-dir "$dir" --ca-dir "$ca_dir" --host "$name" | sed "s/^/$name: /"

  # `outpost init` only warns when an existing node certificate was issued by
  # another CA; its peers would refuse its handshakes. Stop here instead.
  if ! same_file "$dir/tls/ca.pem" "$ca_dir/ca.pem"; then
    fail "$name's certificate ($dir/tls) was not issued by the CA in $ca_dir." \
      "Reissue it: outpost init --data-dir $dir --ca-dir $ca_dir --host $name --force-cert"
  fi
done

if [ -n "$owner" ]; then
  for node in "${nodes[@]}"; do
    chown -R "$owner" "${node#*=}"
  done
fi
echo "fleet initialised: ${#nodes[@]} nodes, cluster CA in $ca_dir"
