#!/usr/bin/env bash
# `ray up` / `ray submit` / `ray down` of tests/multinode/ray_up_cluster.yaml (provider `local`) against a
# private sshd on loopback: head 127.0.0.1, worker 127.0.0.2, both this machine.
#
# Usage: ray_up_local.sh PYTHON WORKDIR REPO
# Needs root and openssh-server + rsync (tests/test_ray_up.py installs them with apt-get when missing). The
# script re-executes itself inside new network + PID + mount namespaces:
#   - network: only loopback (nothing leaves the machine); sshd listens on port 22 of this namespace only;
#   - mount: WORKDIR/home is bind-mounted over /root (the home of ssh's root, so keys, ~/.bashrc, the Ray
#     token and `ray up`'s files land there; a pyenv interpreter under the real /root stays visible), fresh tmpfs over /tmp and /run (Ray's /tmp/ray, ssh control
#     sockets, the local provider's cluster state, /run/sshd): nothing of the real machine is touched;
#   - PID: `ray stop` (run by `ray down`) sees only this cluster; the kernel kills what is left at the end.
# Token auth: one random token in ~/.ray/auth_token, shared by both "hosts" (they share ~) and the client.
# Prints "RESULT {...}" (Ray nodes seen before the submit, exit codes); exit 0 only if all went well.
set -euo pipefail

PY=${1:?python}; WORK=${2:?workdir}; REPO=${3:?repo}
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ "${ODIBI_IN_NS:-}" != 1 ]]; then
    export ODIBI_IN_NS=1
    exec unshare --net --pid --fork --mount-proc bash "$0" "$PY" "$WORK" "$REPO"
fi

ip link set lo up
mkdir -p "$WORK/home"
# The venv's interpreter may live under the real /root (pyenv): keep that one folder visible in the new home.
REAL_PY=$(readlink -f "$PY")
if [[ "$REAL_PY" == /root/* ]]; then
    KEEP=${REAL_PY#/root/}; KEEP=${KEEP%%/*}
    mkdir -p "$WORK/home/$KEEP"
    mount --bind "/root/$KEEP" "$WORK/home/$KEEP"
fi
mount --rbind "$WORK/home" /root
# A checkout (and its venv) under /tmp or /run would vanish under the fresh tmpfs: carry it across.
CARRY=""
if [[ "$REPO" == /tmp/* || "$REPO" == /run/* ]]; then
    CARRY=/root/.odibi-repo
    mkdir -p "$CARRY"
    mount --bind "$REPO" "$CARRY"
fi
mount -t tmpfs -o size=512m tmpfs /tmp
mount -t tmpfs tmpfs /run
if [[ -n "$CARRY" ]]; then
    mkdir -p "$REPO"
    mount --bind "$CARRY" "$REPO"
fi
export HOME=/root TMPDIR=/tmp
cd /root
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH"
export RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
export AWS_EC2_METADATA_DISABLED=true RAY_UP_enable_autoscaler_v2=0   # v1: the v2 autoscaler and `local` disagree
mkdir -p /root/.ssh /root/.ray /root/sshd /root/logs /root/store /run/sshd
chmod 700 /root/.ssh /root/.ray
t0=$SECONDS
stamp() { echo "TIMING $1 $((SECONDS - t0))s"; }

# Ray token (shared by all "hosts": they share ~) and the keys: host key for sshd, client key for root.
"$PY" -c 'import secrets; print(secrets.token_hex(16))' > /root/.ray/auth_token
chmod 600 /root/.ray/auth_token
ssh-keygen -q -t ed25519 -N '' -f /root/sshd/host_key
ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/ray_up_key
cp /root/.ssh/ray_up_key.pub /root/sshd/authorized_keys
cat > /root/sshd/sshd_config <<CFG
ListenAddress 127.0.0.1:22
ListenAddress 127.0.0.2:22
HostKey /root/sshd/host_key
PidFile /root/sshd/sshd.pid
AuthorizedKeysFile /root/sshd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
MaxSessions 50
Subsystem sftp internal-sftp
CFG

SSHD_PID=
cleanup() {
    "$BIN/ray" stop --force >/dev/null 2>&1 || true
    if [[ -n "$SSHD_PID" ]]; then kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
/usr/sbin/sshd -D -e -f /root/sshd/sshd_config 2>/root/logs/sshd.log &
SSHD_PID=$!
for _ in $(seq 50); do
    ssh -q -i /root/.ssh/ray_up_key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=2 root@127.0.0.2 true 2>/dev/null && break
    sleep 0.1
done
stamp sshd

sed -e "s#__VENV_BIN__#$BIN#g" -e "s#__REPO__#$REPO#g" "$HERE/ray_up_cluster.yaml" > /root/cluster.yaml

ray up -y --no-config-cache --log-style record --log-color false /root/cluster.yaml \
    >/root/logs/up.log 2>&1 || { echo "RAY UP FAILED"; tail -80 /root/logs/up.log; exit 1; }
stamp up

# The autoscaler on the head starts the worker over SSH: wait (at most 60 s) until both nodes are alive,
# then print their node ids and addresses.
cat > /root/wait_nodes.py <<'PYEOF'
import json, time
import ray
ray.init(address="127.0.0.1:6379", logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while True:
    alive = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(alive) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
ray.shutdown()
print("NODES " + json.dumps(alive))
if len(alive) < 2:
    raise SystemExit(f"only {sorted(alive.values())} alive after 60 s")
PYEOF
RAY_SCHEDULER_EVENTS=0 "$PY" /root/wait_nodes.py >/root/logs/wait.log 2>&1 || {
    echo "WORKER DID NOT JOIN"; cat /root/logs/wait.log; tail -40 /tmp/ray/session_latest/logs/monitor.* 2>/dev/null; exit 1; }
NODES=$(sed -n 's/^NODES //p' /root/logs/wait.log)
stamp worker

set +e
ray submit --log-style record --log-color false /root/cluster.yaml "$REPO/examples/etl_pipeline.py" -- \
    --rows 5000 --backend ray --address auto --storage /root/store --out /root/out >/root/logs/submit.log 2>&1
SUBMIT=$?
stamp submit
ray down -y --log-style record --log-color false /root/cluster.yaml >/root/logs/down.log 2>&1
DOWN=$?
set -e
stamp down
# After `ray down`, no Ray process may be left in this namespace.
LEFT=$(pgrep -f 'ray/_private|raylet|gcs_server' | wc -l || true)
kill "$SSHD_PID"; wait "$SSHD_PID" 2>/dev/null || true; SSHD_PID=
trap - EXIT
echo "RESULT {\"nodes\": $NODES, \"submit\": $SUBMIT, \"down\": $DOWN, \"ray_left\": $LEFT}"
[[ $SUBMIT == 0 ]] || { echo "SUBMIT FAILED"; tail -60 /root/logs/submit.log; }
[[ $DOWN == 0 ]] || { echo "DOWN FAILED"; tail -40 /root/logs/down.log; }
stamp total
[[ $SUBMIT == 0 && $DOWN == 0 ]]
