#!/usr/bin/env bash
# A real two-node Ray cluster started with the CLI (`ray start --head` + `ray start --address`), a tiny
# odibi_ray pipeline run on it by a driver script, then `ray stop`.
#
# Usage: two_node_cluster.sh PYTHON WORKDIR
# Run it as root; it re-executes itself inside new network + PID + mount namespaces:
#   - network: only loopback exists (ip link set lo up), so nothing can leave the machine; the head
#     uses 127.0.0.1 and the second node 127.0.0.2;
#   - PID (with its own /proc): `ray stop` sees, and stops, only this cluster's processes, not the
#     Ray of the test session or of anyone else on the machine; when the script ends, the kernel
#     kills whatever is left in the namespace.
# Token auth (on by default in Ray 2.60): every process gets RAY_AUTH_MODE=token and one shared
# RAY_AUTH_TOKEN, so `ray start --address` and the driver can join the head.
# Prints the driver's "RESULT {...}" line; exit status 0 only if the pipeline succeeded.
set -euo pipefail

PY=${1:?python}; WORK=${2:?workdir}
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ "${ODIBI_IN_NS:-}" != 1 ]]; then
    export ODIBI_IN_NS=1
    exec unshare --net --pid --fork --mount-proc bash "$0" "$PY" "$WORK"
fi

ip link set lo up
RAY=$(dirname "$PY")/ray
PORT=6390
export HOME="$WORK/home"                      # ~/.ray of this run only
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what the test suite sets to keep `ray.init` on 127.0.0.1) makes
# `ray start --address` refuse to start a second node, on Linux too: allow clusters here, where the
# namespace has no other network than loopback anyway.
export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 AWS_EC2_METADATA_DISABLED=true
mkdir -p "$HOME" "$WORK/store"

cleanup() { "$RAY" stop --force >/dev/null 2>&1 || true; }
trap cleanup EXIT

COMMON=(--num-cpus 1 --disable-usage-stats --object-store-memory 100000000 --temp-dir "$WORK/ray")
"$RAY" start --head --node-ip-address 127.0.0.1 --port "$PORT" --resources '{"first": 1}' \
    --include-dashboard false "${COMMON[@]}" \
    >"$WORK/head.log" 2>&1 || { cat "$WORK/head.log"; exit 1; }
"$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.2 --resources '{"second": 1}' \
    "${COMMON[@]}" >"$WORK/second.log" 2>&1 || { cat "$WORK/second.log"; exit 1; }

"$PY" "$HERE/two_node_driver.py" "127.0.0.1:$PORT" "$WORK/store"

"$RAY" stop >/dev/null 2>&1
trap - EXIT
