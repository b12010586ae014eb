#!/usr/bin/env bash
# A local Redis Cluster for trying otpd: 3 primaries and 3 replicas on 127.0.0.1.
#
#   deploy/redis-cluster.sh start DIR [PORT x 6]   (default ports 7000-7005)
#   deploy/redis-cluster.sh stop DIR
#   deploy/redis-cluster.sh status DIR
#
# Each node keeps its config, log and pid file in DIR/PORT. Nothing is persisted
# (no RDB, no AOF): a restart with the same DIR rejoins the cluster, empty.
# A node's cluster bus listens on PORT + 10000, so every PORT must be at most 55535
# and both PORT and PORT + 10000 must be free. Ports below the ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, often 32768-60999) are not taken by
# outgoing connections meanwhile.
# Needs redis-server and redis-cli (Debian: apt-get install redis-server redis-tools).
set -euo pipefail

HOST=127.0.0.1
NODES=6
REPLICAS=1
NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-5000}
WAIT_SECONDS=30

die() {
    echo "redis-cluster.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '4,6s/^# *//p' "$0" >&2
    exit 2
}

need() {
    command -v "$1" >/dev/null || die "$1 not found (Debian: apt-get install $2)"
}

# The pid in DIR/PORT/redis.pid when that process is still a running redis-server.
node_pid() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # a stale pid file may name a pid that now belongs to someone else
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis || return 1
    echo "$pid"
}

# The ports of the nodes ever started in DIR.
node_ports() {
    local dir=$1 node
    for node in "$dir"/*/redis.log; do
        [[ -e $node ]] || continue
        node=${node%/redis.log}
        echo "${node##*/}"
    done
}

# CLUSTER SLOTS lists every node: clients see the replicas too. It leaves out a
# replica until its replication offset is past 0, hence --repl-ping-replica-period 1.
all_listed() {
    local listed
    listed=$(redis-cli -h "$HOST" -p "$1" cluster slots 2>/dev/null | grep -cE '^[0-9a-f]{40}$')
    ((listed == NODES))
}

listening() {
    (: <"/dev/tcp/$HOST/$1") 2>/dev/null
}

cluster_ok() {
    local port=$1
    redis-cli -h "$HOST" -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'
}

start() {
    local dir=$1
    shift
    local ports=("$@")
    [[ ${#ports[@]} -eq 0 ]] && ports=(7000 7001 7002 7003 7004 7005)
    [[ ${#ports[@]} -eq $NODES ]] || die "give $NODES ports (3 primaries, 3 replicas), not ${#ports[@]}"
    need redis-server redis-server
    need redis-cli redis-tools

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local port p
    for port in "${ports[@]}"; do
        if node_pid "$dir/$port/redis.pid" >/dev/null; then
            die "a node already runs in $dir/$port: stop it first"
        fi
        if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 55535)); then
            die "port $port: must be 1-55535 (its cluster bus is port + 10000)"
        fi
        for p in "$port" $((port + 10000)); do
            if listening "$p"; then die "port $p is in use"; fi
        done
    done
    [[ $(printf '%s\n' "${ports[@]}" | sort -u | wc -l) -eq $NODES ]] || die "ports repeat"

    # from here on, a failure stops the nodes this run started
    # shellcheck disable=SC2064 # expanded now on purpose: $dir is local
    trap "stop_after_failure $(printf %q "$dir")" EXIT

    local rejoin=1
    for port in "${ports[@]}"; do
        mkdir -p "$dir/$port"
        # a node that was part of the cluster knows all the others
        [[ -f $dir/$port/nodes.conf && $(grep -vc '^vars' "$dir/$port/nodes.conf") -ge $NODES ]] \
            || rejoin=0
        # a fresh log, so that only this start's errors are read below
        if [[ -f $dir/$port/redis.log ]]; then mv "$dir/$port/redis.log" "$dir/$port/redis.log.1"; fi
        redis-server \
            --port "$port" --bind "$HOST" --dir "$dir/$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout "$NODE_TIMEOUT_MS" \
            --save "" --appendonly no --repl-diskless-sync-delay 0 --repl-ping-replica-period 1 \
            --daemonize yes --pidfile "$dir/$port/redis.pid" \
            --logfile "$dir/$port/redis.log"
    done
    local waited
    for port in "${ports[@]}"; do
        waited=0
        until redis-cli -h "$HOST" -p "$port" ping >/dev/null 2>&1; do
            if grep -q aborting "$dir/$port/redis.log" || ((waited++ >= WAIT_SECONDS * 10)); then
                die "node $port did not start: $(tail -1 "$dir/$port/redis.log")"
            fi
            sleep 0.1
        done
    done

    if ((rejoin)); then
        echo "rejoining the cluster in $dir"
    else
        local addresses=()
        for port in "${ports[@]}"; do addresses+=("$HOST:$port"); done
        redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$REPLICAS" \
            --cluster-yes >"$dir/cluster-create.log" 2>&1 \
            || die "redis-cli --cluster create failed: see $dir/cluster-create.log"
    fi

    for port in "${ports[@]}"; do
        waited=0
        until cluster_ok "$port" && all_listed "$port"; do
            ((waited++ < WAIT_SECONDS * 10)) || die "node $port: cluster not ready after ${WAIT_SECONDS}s"
            sleep 0.1
        done
    done
    trap - EXIT
    echo "cluster ok: redis://$HOST:${ports[0]}/0 (stop it with: $0 stop $dir)"
}

stop_after_failure() {
    echo "redis-cluster.sh: start failed, stopping the nodes" >&2
    stop "$1" >&2
}

stop() {
    local dir=$1 port pid pids=()
    [[ -d $dir ]] || die "no directory $dir"
    for port in $(node_ports "$dir"); do
        if pid=$(node_pid "$dir/$port/redis.pid"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    local waited=0
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((waited++ >= 100)); then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    done
    echo "stopped ${#pids[@]} node(s) in $dir"
}

status() {
    local dir=$1 port pid state
    [[ -d $dir ]] || die "no directory $dir"
    for port in $(node_ports "$dir"); do
        if pid=$(node_pid "$dir/$port/redis.pid"); then
            state=$(redis-cli -h "$HOST" -p "$port" role 2>/dev/null | head -1 || echo "?")
            echo "$port pid $pid $state$(cluster_ok "$port" && echo ", cluster ok")"
        else
            echo "$port stopped"
        fi
    done
}

[[ $# -ge 2 ]] || usage
command=$1
dir=$2
shift 2
case $command in
    start) start "$dir" "$@" ;;
    stop) [[ $# -eq 0 ]] || usage; stop "$dir" ;;
    status) [[ $# -eq 0 ]] || usage; status "$dir" ;;
    *) usage ;;
esac
