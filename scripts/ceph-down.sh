#!/usr/bin/env bash
# Stops a cluster started by scripts/ceph-up.sh DIR, by the PIDs it recorded, and
# removes DIR (unless --keep). Usage: scripts/ceph-down.sh DIR [--keep]
set -euo pipefail

dir=${1:?usage: ceph-down.sh DIR [--keep]}
keep=${2:-}
[ -d "$dir" ] || exit 0

# Only a PID whose command line names this cluster's config is ours to stop.
ours() {
    local pid=$1
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$dir/ceph.conf"
}

pids=()
for f in "$dir"/osd*.pid "$dir"/mon.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if [ -n "$pid" ] && ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
done
# Ten seconds to go quietly, then SIGKILL.
for _ in $(seq 100); do
    alive=0
    for pid in "${pids[@]}"; do
        if ours "$pid"; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
done
for pid in "${pids[@]}"; do
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
done
if [ "$keep" != --keep ]; then
    rm -rf "$dir"
fi
