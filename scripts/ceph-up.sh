#!/usr/bin/env bash
# Starts a throwaway Ceph cluster on loopback in DIR (one monitor, three BlueStore
# OSDs on files, pool "clonefs" of size 3, min_size 2; no ceph-mgr) for tests and demos.
# Usage: scripts/ceph-up.sh DIR   -> last line of output: CEPH_CONF=DIR/ceph.conf
# Stop it with scripts/ceph-down.sh DIR (by the PIDs recorded in DIR/*.pid).
set -euo pipefail

dir=${1:?usage: ceph-up.sh DIR}
osds=${CEPH_OSDS:-3}
pool=${CEPH_POOL:-clonefs}

missing=()
for cmd in ceph-mon ceph-osd ceph rados; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "ceph-up: installing ceph-mon ceph-osd ceph-common (missing: ${missing[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >&2
    timeout 900 apt-get install -y -qq --no-install-recommends \
        ceph-mon ceph-osd ceph-common >&2
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -e "$dir/ceph.conf" ]; then
    echo "ceph-up: $dir already holds a cluster; stop it with scripts/ceph-down.sh $dir" >&2
    exit 1
fi
started=0
cleanup() {
    if [ "$started" = 0 ]; then
        echo "ceph-up: failed; stopping what was started (logs in $dir/log)" >&2
        tail -n 5 "$dir"/log/*.out >&2 2>/dev/null || true
        for f in "$dir"/osd*.pid; do
            [ -e "$f" ] || continue
            pid=$(cat "$f")
            id=${f##*/osd}
            id=${id%.pid}
            if [ -d "/proc/$pid" ]; then state=running; else state=gone; fi
            echo "== osd.$id (pid $pid, $state): the end of its log" >&2
            grep -E "^[0-9]{4}-" "$dir/log/osd.$id.log" 2>/dev/null | tail -n 4 >&2 || true
        done
        timeout 10 ceph osd stat >&2 2>/dev/null || true
        "$(dirname "$0")/ceph-down.sh" "$dir" --keep >&2 || true
    fi
}
trap cleanup EXIT

# A free port for the monitor, so two clusters (or a stale one) never collide.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
fsid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$dir/mon" "$dir/log" "$dir/run"
cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
run dir = $dir/run
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
osd memory target = 939524096
bluestore cache autotune = true
osd op num shards = 1
osd op num threads per shard = 2
# A killed OSD is marked down by its peers when they are refused a connection;
# these only bound how long a silent one takes.
osd heartbeat grace = 6
osd heartbeat interval = 2
mon osd down out interval = 600
[mon.a]
mon data = $dir/mon/a
[osd]
# The script puts each OSD in the CRUSH map itself. Left on, the OSD's own update
# at start raced the monitor session of OSDs booting side by side: the command
# went out with a null fsid, was refused ("wrong fsid") and the OSD exited.
osd crush update on start = false
osd class update on start = false
osd data = $dir/osd\$id
bluestore block path = $dir/osd\$id.block
EOF
export CEPH_CONF=$dir/ceph.conf
t0=$(date +%s%N)
# The daemons get a clean environment, whatever the caller's (cargo test's, say).
clean=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" "CEPH_CONF=$CEPH_CONF")

timeout 30 "${clean[@]}" ceph-mon --id a --mkfs --keyring /dev/null -c "$CEPH_CONF"
# Daemons run in the foreground (-f) of a process of their own, so $! is their PID.
"${clean[@]}" setsid ceph-mon -f --id a -c "$CEPH_CONF" </dev/null >>"$dir/log/mon.out" 2>&1 &
echo $! >"$dir/mon.pid"

start_osd() {
    local id=$1 uuid=$2
    mkdir -p "$dir/osd$id"
    timeout 60 "${clean[@]}" ceph-osd --id "$id" --mkfs --osd-uuid "$uuid" \
        -c "$CEPH_CONF" >"$dir/log/osd$id-mkfs.out" 2>&1
    "${clean[@]}" setsid ceph-osd -f --id "$id" -c "$CEPH_CONF" </dev/null >>"$dir/log/osd$id.out" 2>&1 &
    echo $! >"$dir/osd$id.pid"
}

# mon CMD...: a monitor command, tried up to 5 times, its output on stdout (a
# monitor just started, or busy with OSDs booting on a loaded machine, has answered
# "EPERM: problem getting command descriptions", EAGAIN, or nothing in time); the
# last error shows. The commands used here are idempotent.
mon() {
    local try out
    for try in 1 2 3 4 5; do
        if out=$(timeout 30 ceph "$@" 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        sleep "$try"
    done
    echo "ceph-up: 'ceph $*' failed 5 times: $out" >&2
    return 1
}

# Each OSD is registered with the uuid its mkfs gets: registered without one, an
# OSD booting beside others was refused at times ("wrong fsid") and never came up.
uuids=()
for ((i = 0; i < osds; i++)); do
    uuids+=("$(cat /proc/sys/kernel/random/uuid)")
    id=$(mon osd create "${uuids[$i]}" | tail -n 1)
    [ "$id" = "$i" ] || { echo "ceph-up: expected osd.$i, the monitor made osd.$id" >&2; exit 1; }
    mon osd crush add "osd.$id" 1 root=default host=localhost >&2
done
# The OSDs format and start side by side: each mkfs is mostly waiting.
pids=()
for ((i = 0; i < osds; i++)); do
    start_osd "$i" "${uuids[$i]}" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

mon osd pool create "$pool" 8 8 replicated >&2
mon osd pool set "$pool" size "$osds" >&2
mon osd pool set "$pool" min_size $((osds > 1 ? 2 : 1)) >&2
mon osd pool application enable "$pool" clonefs >&2

# Ready when every OSD is up and a write and a read of the pool go through
# (ceph pg stat would need a ceph-mgr).
deadline=$((SECONDS + 120))
until [ "$(timeout 10 ceph osd stat -f json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_up_osds"])' 2>/dev/null)" = "$osds" ]; do
    if [ $SECONDS -gt $deadline ]; then echo "ceph-up: OSDs not up after 120 s" >&2; exit 1; fi
    sleep 0.3
done
until echo ready | timeout 10 rados -p "$pool" put ceph-up.probe - 2>/dev/null &&
    timeout 10 rados -p "$pool" rm ceph-up.probe 2>/dev/null; do
    if [ $SECONDS -gt $deadline ]; then echo "ceph-up: pool $pool takes no write after 120 s" >&2; exit 1; fi
    sleep 0.3
done
started=1
echo "ceph-up: cluster in $dir ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms (mon 127.0.0.1:$port, $osds OSDs, pool $pool)" >&2
echo "CEPH_CONF=$CEPH_CONF"
