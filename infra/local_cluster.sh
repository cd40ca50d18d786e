#!/usr/bin/env bash
# A two-node Ray cluster and an MLflow tracking server on this machine, for trying `ray job submit`
# and multi-node code paths (object transfer between raylets, a tracking server instead of a local
# SQLite file) without a real cluster.
#
#   infra/local_cluster.sh start [--num-cpus N] [--state-dir DIR] [--gcs-port P] [--dashboard-port P]
#                                [--mlflow-port P] [--no-mlflow]
#   infra/local_cluster.sh status [--state-dir DIR]
#   infra/local_cluster.sh stop   [--state-dir DIR]
#
# `start` prints shell exports on stdout (everything else goes to stderr), so
#   eval "$(infra/local_cluster.sh start)"
#   ray job submit --working-dir . -- python jobs/train_ttvsr.py --config configs/ttvsr_sample.yaml \
#       --set data.path="$PWD/data/sample" --storage-path "$PWD/runs" --mlflow-uri "$MLFLOW_TRACKING_URI"
#   (absolute paths: the job runs in a copy of the working dir)
#
# - Head and worker node: `ray start --block`, each in its own session, with their own temp dirs and
#   with every fixed default port replaced by a free one, so several clusters (parallel tests) coexist.
# - Loopback only: every Ray server (GCS, raylets, object managers, workers, dashboard and its agents,
#   metrics exporters, client server) listens on 127.0.0.1. Plain `ray start --node-ip-address
#   127.0.0.1` would not do it (Ray 2.60 swaps a loopback node IP for the machine's address and then
#   listens on all interfaces), so both nodes start through `python -m pipelines.common.ray_session
#   start ...` (Ray's CLI with that swap turned off, for it and the Ray processes it starts; see its
#   docstring). Submitted jobs inherit it. Other clients join through the same module:
#   pipelines.common.ray_session.init_ray (every job does) or `python -m pipelines.common.ray_session
#   status --address "$RAY_GCS_ADDRESS"`; a plain `ray.init()` / `ray status` from outside dials the
#   machine's address and finds nothing there.
# - Token authentication is always on, with a token made for this cluster (Ray 2.60 turns it on for
#   `ray start --head` whenever ~/.ray/auth_token exists but not for joining nodes or clients; being
#   explicit makes both cases work). Clients need the exported RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH.
# - MLflow: `mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact root that the
#   server proxies (clients upload through HTTP, as on a real cluster).
# - Pids, ports and logs live in the state dir (default .cache/local_cluster); `start` is a no-op
#   when the cluster is up, `stop` when it is down. Processes are stopped by their recorded pid.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${RAY_VSR_CLUSTER_DIR:-$REPO_ROOT/.cache/local_cluster}"
NUM_CPUS=2
GCS_PORT="" DASHBOARD_PORT="" MLFLOW_PORT=""
WITH_MLFLOW=1
START_TIMEOUT_S=180

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
log() { echo "local_cluster: $*" >&2; }

[[ $# -ge 1 ]] || usage
[[ "$1" == -h || "$1" == --help ]] && usage 0
COMMAND="$1"; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --num-cpus) NUM_CPUS="$2"; shift 2 ;;
        --state-dir) STATE_DIR="$2"; shift 2 ;;
        --gcs-port) GCS_PORT="$2"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
        --mlflow-port) MLFLOW_PORT="$2"; shift 2 ;;
        --no-mlflow) WITH_MLFLOW=0; shift ;;
        -h|--help) usage 0 ;;
        *) log "unknown option $1"; usage ;;
    esac
done

# The project's virtualenv when there is one, else whatever is on PATH.
if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then BIN="$REPO_ROOT/.venv/bin"; else BIN="$(dirname "$(command -v ray)")"; fi
# `ray ...` that keeps 127.0.0.1 as the node and GCS address (needs the project installed: pip install -e .).
RAY_CLI=("$BIN/python" -m pipelines.common.ray_session)
STATE_DIR="$(mkdir -p "$STATE_DIR" && cd "$STATE_DIR" && pwd)"
ENV_FILE="$STATE_DIR/cluster.env"
COMPONENTS=(worker head mlflow)

alive() { [[ -f "$STATE_DIR/$1.pid" ]] && kill -0 "$(cat "$STATE_DIR/$1.pid")" 2>/dev/null; }

free_ports() {  # free_ports N: N distinct free TCP ports on 127.0.0.1
    "$BIN/python" - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

http_up() {  # any HTTP answer (401 included: the dashboard requires the token) means the server is up
    local code
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true)"
    [[ "$code" != "000" ]]
}

launch() {  # launch NAME CMD...: run CMD in its own session (process group = pid), log, record pid
    local name="$1"; shift
    setsid "$@" >"$STATE_DIR/logs/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE_DIR/$name.pid"
}

wait_for() {  # wait_for NAME DESCRIPTION CHECK...: poll CHECK until it succeeds or NAME dies
    local name="$1" what="$2"; shift 2
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until "$@"; do
        if ! alive "$name" || ((SECONDS > deadline)); then
            log "$what did not come up; last lines of $STATE_DIR/logs/$name.log:"
            tail -n 20 "$STATE_DIR/logs/$name.log" >&2 || true
            stop_all
            exit 1
        fi
        sleep 1
    done
}

alive_nodes() {  # number of alive Ray nodes, asked through Ray's own client (it sends the token)
    RAY_ADDRESS="$GCS_ADDRESS" "$BIN/python" -c '
import ray
from pipelines.common.ray_session import init_ray
init_ray()  # joins $RAY_ADDRESS on loopback
print(sum(node["Alive"] for node in ray.nodes()))' 2>/dev/null | tail -n 1
}

both_nodes_alive() { [[ "$(alive_nodes)" == 2 ]]; }

print_exports() {
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    echo "export RAY_ADDRESS=$RAY_ADDRESS"
    echo "export RAY_GCS_ADDRESS=$RAY_GCS_ADDRESS"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    [[ -n "${MLFLOW_TRACKING_URI:-}" ]] && echo "export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"
    log "dashboard and job submission: $RAY_ADDRESS (ray job submit --address \$RAY_ADDRESS ...)"
    log "Ray address for ray.init / ray start: $RAY_GCS_ADDRESS"
    [[ -n "${MLFLOW_TRACKING_URI:-}" ]] && log "MLflow tracking server: $MLFLOW_TRACKING_URI"
    return 0
}

stop_one() {  # SIGTERM the recorded process (Ray drains and stops its children), then its whole group
    local name="$1" pid
    [[ -f "$STATE_DIR/$name.pid" ]] || return 0
    pid="$(cat "$STATE_DIR/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        # mlflow's job consumers ignore their parent's exit: signal its whole process group.
        if [[ "$name" == mlflow ]]; then kill -TERM -- "-$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    # Whatever is left in the session started for it (pgid == pid).
    if kill -0 -- "-$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/$name.pid"
}

stop_all() {
    local name
    for name in "${COMPONENTS[@]}"; do stop_one "$name"; done
    if [[ -f "$ENV_FILE" ]]; then
        # shellcheck source=/dev/null
        source "$ENV_FILE"
        [[ -n "${RAY_TEMP_ROOT:-}" && -d "$RAY_TEMP_ROOT" ]] && rm -rf "$RAY_TEMP_ROOT"
        rm -f "$ENV_FILE"
    fi
}

start() {
    if alive head && [[ -f "$ENV_FILE" ]]; then
        log "already running (state in $STATE_DIR)"
        print_exports
        return 0
    fi
    stop_all  # leftovers of a half-started or crashed cluster
    mkdir -p "$STATE_DIR/logs" "$STATE_DIR/mlflow"
    if ! "$BIN/python" -c 'import pipelines.common.ray_session' 2>/dev/null; then
        log "pipelines.common.ray_session is not importable by $BIN/python: pip install -e $REPO_ROOT"
        exit 1
    fi

    local ports
    read -r -a ports <<<"$(free_ports 7)"
    GCS_PORT="${GCS_PORT:-${ports[0]}}"
    DASHBOARD_PORT="${DASHBOARD_PORT:-${ports[1]}}"
    MLFLOW_PORT="${MLFLOW_PORT:-${ports[2]}}"
    GCS_ADDRESS="127.0.0.1:$GCS_PORT"
    # Ray's sockets live under the temp dir and Unix socket paths are limited to ~107 bytes: keep it short.
    RAY_TEMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/rayvsr-XXXXXX")"
    local token="$STATE_DIR/auth_token"
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$token")

    # PATH: job entrypoints (`python jobs/...`) run with this environment's interpreter.
    # No drain on SIGTERM: nothing on a local cluster needs a graceful handover.
    local ray_env=(env PATH="$BIN:$PATH" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token" RAY_USAGE_STATS_ENABLED=0
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0)
    # Ports Ray otherwise fixes (client server 10001, agent 52365) are taken from the free ones; the
    # rest (node manager, object manager, workers, metrics export) are random when 0 / unset. All of
    # them, the Prometheus metrics exporters included, bind the node IP 127.0.0.1 (see the header).
    local common=(--block --node-ip-address 127.0.0.1 --num-cpus "$NUM_CPUS" --disable-usage-stats
        --min-worker-port 0 --max-worker-port 0)

    if ((WITH_MLFLOW)); then
        # Job execution (MLflow's background consumers for GenAI features) is not needed and slow to start.
        launch mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$BIN/mlflow" server \
            --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
            --backend-store-uri "sqlite:///$STATE_DIR/mlflow/mlflow.db" \
            --artifacts-destination "$STATE_DIR/mlflow/artifacts"
    fi
    launch head "${ray_env[@]}" "${RAY_CLI[@]}" start --head "${common[@]}" --port "$GCS_PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "${ports[3]}" \
        --dashboard-agent-listen-port "${ports[4]}" --temp-dir "$RAY_TEMP_ROOT/head"
    wait_for head "Ray head (dashboard http://127.0.0.1:$DASHBOARD_PORT)" http_up "http://127.0.0.1:$DASHBOARD_PORT/api/version"
    launch worker "${ray_env[@]}" "${RAY_CLI[@]}" start --address "$GCS_ADDRESS" "${common[@]}" \
        --dashboard-agent-listen-port "${ports[5]}" --temp-dir "$RAY_TEMP_ROOT/worker"

    local mlflow_uri=""
    ((WITH_MLFLOW)) && mlflow_uri="http://127.0.0.1:$MLFLOW_PORT"
    cat >"$ENV_FILE" <<EOF
RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
RAY_GCS_ADDRESS=$GCS_ADDRESS
RAY_AUTH_TOKEN_PATH=$token
RAY_TEMP_ROOT=$RAY_TEMP_ROOT
NUM_CPUS=$NUM_CPUS
MLFLOW_TRACKING_URI=$mlflow_uri
EOF
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token"
    wait_for worker "Ray worker node" both_nodes_alive
    if ((WITH_MLFLOW)); then
        wait_for mlflow "MLflow server (http://127.0.0.1:$MLFLOW_PORT)" http_up "http://127.0.0.1:$MLFLOW_PORT/health"
    fi
    log "up: 2 Ray nodes x $NUM_CPUS CPUs; logs in $STATE_DIR/logs"
    print_exports
}

status() {
    local name up=1
    for name in head worker mlflow; do
        if alive "$name"; then
            log "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
        elif [[ "$name" != mlflow || -f "$STATE_DIR/mlflow.pid" ]]; then
            log "$name: stopped"; up=0
        fi
    done
    if ((up)) && [[ -f "$ENV_FILE" ]]; then
        print_exports
        return 0
    fi
    return 3
}

case "$COMMAND" in
    start) start ;;
    stop) stop_all; log "stopped (state in $STATE_DIR)" ;;
    status) status ;;
    *) usage ;;
esac
