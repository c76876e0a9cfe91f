#!/usr/bin/env bash
# PostgreSQL on single-cluster mounts: prod's data directory is mounted on its own (clonefs mount --cluster prod),
# cloned under pgbench through that mount's .clone, the clone mounted on its own too, both servers running at once.
# Checks: one daemon serves the three mounts, pg_amcheck on the clone, both sides diverge, the mounted clone cannot be
# deleted through the store mount, each mount unmounts alone, fsck clean. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh

port=${DB_PORT:-55532}
scale=${PG_SCALE:-5}
load_secs=${DB_LOAD_SECS:-10}

setup_postgres
postgres_on_mount # initdb on $mnt/prod/pgdata, through the whole-store mount

stop_server() { stop_pid "$1" 60 INT QUIT KILL; }
launch_server() { # launch_server NAME DATADIR PORT
  (exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    postgres -D "$2" -p "$3" -k "$sock" -c listen_addresses=127.0.0.1 \
    >"$dir/server-$1.log" 2>&1) &
}
server_ready() { timeout 10 pg_isready -q -h "$sock" -p "$2"; }
server_socket() { echo "$sock"; }
port_taken='could not create any TCP/IP sockets'
q() { # q PORT SQL...
  local port=$1
  shift
  timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}
daemons() { # processes whose command line names the store
  local p n=0
  for p in /proc/[0-9]*; do tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$store" && n=$((n + 1)); done
  echo "$n"
}

# ---- 1. prod on a mount of its own ---------------------------------------------------
say "1. cluster prod mounted alone at $dir/prod-mnt; PostgreSQL serves it from there"
mkdir "$dir/prod-mnt" "$dir/test-mnt"
more_mounts+=("$dir/test-mnt" "$dir/prod-mnt")
timeout 60 "$bin" mount "$store" "$dir/prod-mnt" --cluster prod --allow-other
[ -f "$dir/prod-mnt/pgdata/PG_VERSION" ] || fail "prod's data directory is not at the root of its mount"
start_server prod "$dir/prod-mnt/pgdata" "$port"
timeout 600 pgbench -i -s "$scale" -q -h "$sock" -p "$port_prod" -U postgres postgres 2>&1 | tail -n 1
q "$port_prod" -c "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"

# ---- 2. clone under load through the cluster mount's .clone ----------------------------------
say "2. pgbench for $load_secs s with the ledger; mkdir $dir/prod-mnt/.clone/test halfway"
timeout $((load_secs + 120)) pgbench -c 4 -j 2 -T "$load_secs" -h "$sock" -p "$port_prod" -U postgres postgres \
  >"$dir/pgbench.log" 2>&1 &
pgbench_pid=$!
clients+=("$pgbench_pid")
start_ledger timeout 60 psql -X -q -h "$sock" -p "$port_prod" -U postgres -d postgres -v ON_ERROR_STOP=1 -c
sleep $((load_secs / 2))
t0=$(now_us)
timeout 60 mkdir "$dir/prod-mnt/.clone/test"
t1=$(now_us)
clone_us=$((t1 - t0))
echo "clone: $(ms "$clone_us") ms; $mnt/test: $(ls "$mnt/test" | tr '\n' ' ')"
wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 5 "$dir/pgbench.log")"
stop_ledger

# ---- 3. the clone on a mount of its own, its server beside prod's --------------------------------
say "3. cluster test mounted alone at $dir/test-mnt; both servers run"
timeout 60 "$bin" mount "$store" "$dir/test-mnt" --cluster test --allow-other
n=$(daemons)
[ "$n" = 1 ] || fail "$n processes hold the store for three mounts (want one daemon)"
timeout 30 rm -f "$dir/test-mnt/pgdata/postmaster.pid"
start_server test "$dir/test-mnt/pgdata" "$((port_prod + 1))"
kill -0 "$pid_prod" || fail "prod's server stopped"
timeout 600 pg_amcheck -h "$sock" -p "$port_test" -U postgres --all --install-missing --heapallindexed ||
  fail "pg_amcheck on the clone found problems"
check_ledger "$(q "$port_test" -c "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM ledger")" \
  "$(q "$port_prod" -c "SELECT count(*) FROM ledger")"
q "$port_prod" -c "CREATE TABLE only_prod AS SELECT 1 AS x"
q "$port_test" -c "CREATE TABLE only_test AS SELECT 1 AS x"
seen_prod=$(q "$port_prod" -c "SELECT count(*) FROM pg_tables WHERE tablename IN ('only_prod', 'only_test')")
seen_test=$(q "$port_test" -c "SELECT count(*) FROM pg_tables WHERE tablename IN ('only_prod', 'only_test')")
[ "$seen_prod" = 1 ] && [ "$seen_test" = 1 ] || fail "the sides do not diverge: prod sees $seen_prod, test $seen_test"
echo "both servers run; each sees its own table only"
timeout 60 "$bin" status "$mnt" | tail -n 4

# ---- 4. a mounted cluster is kept -------------------------------------------------------------
say "4. rm -rf $mnt/test and clonefs reset are refused while test is mounted"
if timeout 60 rm -rf "$mnt/test" 2>"$dir/rm.log"; then fail "rm -rf of a mounted cluster succeeded"; fi
grep -q "busy" "$dir/rm.log" || fail "rm -rf did not say busy: $(head -n 2 "$dir/rm.log")"
if timeout 60 "$bin" reset --cluster test --force "$mnt" 2>"$dir/reset.log"; then fail "reset of a mounted cluster succeeded"; fi
grep -q "mounted at $dir/test-mnt" "$dir/reset.log" || fail "reset's error does not name the mount: $(cat "$dir/reset.log")"
[ "$(q "$port_test" -c "SELECT count(*) FROM only_test")" = 1 ] || fail "the clone's server lost its table"
echo "refused: $(cat "$dir/reset.log")"

# ---- 5. each mount goes on its own --------------------------------------------------------------
say "5. servers stopped; each mount unmounted on its own, the daemon goes with the last"
stop_server "$pid_test"
stop_server "$pid_prod"
servers=()
timeout 120 "$bin" umount "$dir/test-mnt" || fail "umount of test's mount failed"
[ "$(ls "$mnt/test/pgdata" | wc -l)" -gt 0 ] || fail "test's files are gone after its unmount"
timeout 120 umount "$dir/prod-mnt" || fail "umount(8) of prod's mount failed"
for i in $(seq 100); do grep -q " $dir/prod-mnt " /proc/mounts || break; sleep 0.1; done
[ "$(daemons)" = 1 ] || fail "the daemon did not stay for the store mount"
unmount_and_fsck
sleep 0.5
[ "$(daemons)" = 0 ] || fail "the daemon is still running after the last unmount"

say "summary"
echo "clone of prod through its own mount's .clone under pgbench: $(ms "$clone_us") ms; ledger 1..$hi of $total"
echo "$me: PASS"
