#!/usr/bin/env bash
# `ray job submit` of examples/etl_pipeline.py to a real two-node Ray cluster (CLI `ray start --head` with
# the dashboard/job server + `ray start --address`), with checkpoints on Azurite (abfss:// URI), then the
# node records are read back from Azurite.
#
# Usage: job_submit_etl.sh PYTHON WORKDIR REPO
# Run it as root; it re-executes itself inside new network + PID + mount namespaces (see
# two_node_cluster.sh): only loopback exists, the head is 127.0.0.1, the second node 127.0.0.2, and when
# the script ends the kernel kills whatever is left in the PID namespace (Azurite, Ray).
# Ports are fixed (the namespace has its own, empty, port space): Azurite 10000, GCS 6390, dashboard 8265.
# The account key is Azurite's publicly documented development key (not a secret); the job gets it as the
# environment variable AZ_KEY and the example reads it through `account_key=env://AZ_KEY`.
# Prints "RESULT {...}" (Ray nodes, and the Ray node id in each node record); exit 0 only if all went well.
set -euo pipefail

PY=${1:?python}; WORK=${2:?workdir}; REPO=${3:?repo}

if [[ "${ODIBI_IN_NS:-}" != 1 ]]; then
    export ODIBI_IN_NS=1
    exec unshare --net --pid --fork --mount-proc bash "$0" "$PY" "$WORK" "$REPO"
fi

ip link set lo up
BIN=$(dirname "$PY")
RAY="$BIN/ray"
export PATH="$BIN:$PATH"                      # `python` in the job's entrypoint is the venv's
AZ_PORT=10000 GCS_PORT=6390 DASH_PORT=8265
ACCOUNT=devstoreaccount1
export AZ_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ENDPOINT="http://127.0.0.1:$AZ_PORT/$ACCOUNT"
CONTAINER=etljob
URI="abfss://$CONTAINER@$ACCOUNT.dfs.core.windows.net/etl"
export HOME="$WORK/home"                      # ~/.ray of this run only
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 AWS_EC2_METADATA_DISABLED=true
mkdir -p "$HOME" "$WORK/azurite"

AZ_PID=
cleanup() {
    "$RAY" stop --force >/dev/null 2>&1 || true
    if [[ -n "$AZ_PID" ]]; then kill "$AZ_PID" 2>/dev/null || true; wait "$AZ_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
t0=$SECONDS
stamp() { echo "TIMING $1 $((SECONDS - t0))s"; }

# Azurite (in memory, no telemetry), on 127.0.0.1 only.
(cd "$WORK/azurite" && exec "$REPO/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZ_PORT" \
    --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --silent) >"$WORK/azurite.log" 2>&1 &
AZ_PID=$!
"$PY" - "$ENDPOINT" "$CONTAINER" <<'EOF'
import os, socket, sys, time
from azure.storage.blob import BlobServiceClient
endpoint, container = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(endpoint.split(":")[2].split("/")[0])), timeout=0.5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("azurite did not listen within 30 s")
        time.sleep(0.1)
cred = {"account_name": "devstoreaccount1", "account_key": os.environ["AZ_KEY"]}
with BlobServiceClient(endpoint, credential=cred, retry_total=0) as svc:
    svc.create_container(container)
EOF
stamp azurite

# The cluster: head (1 CPU, job server) on 127.0.0.1, second node (2 CPUs) on 127.0.0.2, so most of the
# pipeline's tasks have to run on the second node.
COMMON=(--disable-usage-stats --object-store-memory 150000000 --temp-dir "$WORK/ray")
"$RAY" start --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" --num-cpus 1 \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" "${COMMON[@]}" \
    >"$WORK/head.log" 2>&1 || { cat "$WORK/head.log"; exit 1; }
"$RAY" start --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.2 --num-cpus 2 "${COMMON[@]}" \
    >"$WORK/second.log" 2>&1 || { cat "$WORK/second.log"; exit 1; }
stamp cluster

# The job: the repo is uploaded as working_dir (without the venv, node_modules, caches); the key reaches the
# job only as an environment variable.
RUNTIME_ENV=$("$PY" -c 'import json, os; print(json.dumps({"env_vars": {"AZ_KEY": os.environ["AZ_KEY"]},
    "excludes": [".venv", "node_modules", ".git", ".odibi", "out", "**/__pycache__", ".pytest_cache",
                 ".ruff_cache", "*.egg-info", "benchmarks/results"]}))')
"$RAY" job submit --address "http://127.0.0.1:$DASH_PORT" --submission-id etl_job --working-dir "$REPO" \
    --runtime-env-json "$RUNTIME_ENV" --log-style record --log-color false -- \
    python examples/etl_pipeline.py --rows 20000 --backend ray --address auto --storage "$URI" \
    --storage-option "endpoint=$ENDPOINT" --storage-option account_key=env://AZ_KEY --out "$WORK/out" \
    >"$WORK/job.log" 2>&1 || { echo "JOB FAILED"; cat "$WORK/job.log"; exit 1; }
stamp job
"$RAY" job status --address "http://127.0.0.1:$DASH_PORT" --log-style record --log-color false etl_job >"$WORK/job_status.log" 2>&1 || true
grep -q "Job .etl_job. succeeded" "$WORK/job_status.log" || { echo "JOB NOT SUCCEEDED"; cat "$WORK/job_status.log"; exit 1; }

# Read the checkpoints' provenance back from Azurite, with the same URI and options as the job.
"$PY" - "127.0.0.1:$GCS_PORT" "$URI" "$ENDPOINT" 2>"$WORK/reader.log" <<'PYEOF' || { cat "$WORK/reader.log"; exit 1; }
import json, sys
import ray
from odibi_ray.checkpoint import run_checkpoints
from odibi_ray.storage.uri import open_storage
address, uri, endpoint = sys.argv[1:4]
store = open_storage(uri, endpoint=endpoint, account_key="env://AZ_KEY")
runs = sorted({info.key.split("/")[2] for info in store.list("runs/etl_sales/")})
records = {}
for run_id in runs:
    for node, meta in run_checkpoints(store, "etl_sales", run_id).items():
        records[node] = meta.ray_node_id
manifest = json.loads(store.get(f"runs/etl_sales/{runs[-1]}/run.json")) if runs else {}
ray.init(address=address, logging_level="ERROR")
nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
ray.shutdown()
print("RESULT " + json.dumps({"nodes": nodes, "runs": runs, "records": records,
                              "run_status": manifest.get("status")}))
PYEOF
stamp read

"$RAY" stop >/dev/null 2>&1
kill "$AZ_PID"; wait "$AZ_PID" 2>/dev/null || true; AZ_PID=
trap - EXIT
stamp total
