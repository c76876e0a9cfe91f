#!/usr/bin/env bash
# PostgreSQL on clonefs: initdb on cluster "prod", pgbench load, clone prod to "test" under write load,
# then pg_amcheck on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
# --store rados://POOL/STORE --ceph-conf FILE: the same on a store in a Ceph pool, made here and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh
store_options "$@"

port=${DB_PORT:-55432} # prod's port, or the first free one above; test's is the next free one
# pgbench scale (10 = 1M accounts, ~160 MB) and seconds of write load (the clone happens halfway through); lighter
# on Ceph, where a store's write waits on a RADOS round trip (an 8 KiB write ~17 ms on a loopback cluster, an fsync
# more): scale 1 loads in about a minute there
if [ -n "$store_addr" ]; then
  scale=${PG_SCALE:-1} load_secs=${DB_LOAD_SECS:-10}
else
  scale=${PG_SCALE:-10} load_secs=${DB_LOAD_SECS:-20}
fi

# ---- engine and tools -----------------------------------------------------------
setup_postgres

# ---- scratch dir, store, mount, initdb ---------------------------------------------
postgres_on_mount

# ---- servers and clients ---------------------------------------------------------
# stop_server PID: fast shutdown, then immediate, then SIGKILL; only PIDs we started.
stop_server() { stop_pid "$1" 60 INT QUIT KILL; }
# start_server's parts: a postmaster as user postgres on 127.0.0.1:PORT, its socket in $sock (clients connect
# through that socket only, so they never reach the server of another run).
launch_server() { # launch_server NAME DATADIR PORT
  (exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    postgres -D "$2" -p "$3" -k "$sock" -c listen_addresses=127.0.0.1 \
    >"$dir/server-$1.log" 2>&1) &
}
server_ready() { timeout 10 pg_isready -q -h "$sock" -p "$2"; } # server_ready NAME PORT
server_socket() { echo "$sock"; }
port_taken='could not create any TCP/IP sockets'
q() { # q PORT SQL...: one psql call, unaligned, tuples only
  local port=$1
  shift
  timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}

start_server prod "$mnt/prod/pgdata" "$port"

# ---- 1. load ------------------------------------------------------------------------
say "1. loading: pgbench -i -s $scale"
t=$(now_us)
timeout 600 pgbench -i -s "$scale" -q -h "$sock" -p "$port_prod" -U postgres postgres 2>&1 | tail -n 3
load_us=$(($(now_us) - t))
load_rows=$((scale * 100000))
load_rate=$((load_rows * 1000000 / load_us))
echo "loaded $load_rows rows in $((load_us / 1000)) ms: $load_rate rows/s (with indexes and vacuum)"
q "$port_prod" -c "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
q "$port_prod" -c "CHECKPOINT" # so the load's dirty buffers do not weigh on the tps before the clone
status "after the load"

# ---- 2. write load, clone in the middle ---------------------------------------------------
say "2. write load: pgbench -c 4 -T $load_secs and the ledger; clone at ${load_secs}/2 s"
timeout $((load_secs + 120)) pgbench -c 4 -j 2 -T "$load_secs" -P 1 --progress-timestamp \
  -h "$sock" -p "$port_prod" -U postgres postgres >"$dir/pgbench.log" 2>&1 &
pgbench_pid=$!
clients+=("$pgbench_pid")
start_ledger timeout 60 psql -X -q -h "$sock" -p "$port_prod" -U postgres -d postgres -v ON_ERROR_STOP=1 -c
clone_under_load
wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 5 "$dir/pgbench.log")"
stop_ledger
grep -E '^(number of failed|latency average|tps)' "$dir/pgbench.log" || true
# progress lines: "progress: EPOCH s, TPS tps, ..." each covering the second before EPOCH
read -r tps_before tps_during tps_after < <(awk -v t0="$t0" -v t1="$t1" '
  /^progress:/ { ts = $2 * 1e6; tps = $4
    if (ts <= t0) { b += tps; nb++ } else if (ts - 1e6 >= t1) { a += tps; na++ } else { d += tps; nd++ } }
  END { printf "%.0f %.0f %.0f\n", nb ? b / nb : 0, nd ? d / nd : 0, na ? a / na : 0 }' "$dir/pgbench.log")
echo "prod tps: $tps_before before the clone, $tps_during in the second(s) of the clone, $tps_after after"
status "after the clone"

# ---- 3. a server on the clone, and PostgreSQL's own checks ------------------------------------
say "3. starting a server on the clone (crash recovery), then pg_amcheck --all"
timeout 30 rm -f "$mnt/test/pgdata/postmaster.pid"
t=$(now_us)
start_server test "$mnt/test/pgdata" "$((port_prod + 1))"
recovery_us=$(($(now_us) - t))
echo "the server on the clone accepts connections $(ms "$recovery_us") ms after its start (crash recovery included)"
grep -E 'redo (starts|done)|database system was (not properly shut down|interrupted)' "$dir/server-test.log" || true
timeout 600 pg_amcheck -h "$sock" -p "$port_test" -U postgres --all --install-missing --heapallindexed ||
  fail "pg_amcheck on the clone found problems"
echo "pg_amcheck --all --heapallindexed on the clone: clean"
accounts=$(q "$port_test" -c "SELECT count(*) FROM pgbench_accounts")
[ "$accounts" = "$load_rows" ] || fail "the clone has $accounts accounts, not $load_rows"
balance_ok=$(q "$port_test" -c "SELECT count(*) > 0 AND (SELECT sum(abalance) FROM pgbench_accounts) = sum(delta)
  AND (SELECT sum(bbalance) FROM pgbench_branches) = sum(delta) AND (SELECT sum(tbalance) FROM pgbench_tellers) = sum(delta)
  FROM pgbench_history")
[ "$balance_ok" = t ] || fail "pgbench balances disagree with pgbench_history on the clone"
echo "pgbench invariant on the clone: sum(abalance) = sum(bbalance) = sum(history.delta)"

# ---- 4. the clone is one point in time -------------------------------------------------
say "4. ledger: the clone holds exactly a prefix that fits the clone's instant"
r=$(q "$port_test" -c "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM ledger")
n_prod=$(q "$port_prod" -c "SELECT count(*) FROM ledger")
check_ledger "$r" "$n_prod"

# ---- 5. the two sides diverge ----------------------------------------------------------
say "5. writes on each side stay on that side"
q "$port_prod" -c "UPDATE pgbench_accounts SET abalance = 111111 WHERE aid = 1" -c "CREATE TABLE only_prod AS SELECT 1 AS x"
q "$port_test" -c "UPDATE pgbench_accounts SET abalance = 222222 WHERE aid = 1" -c "CREATE TABLE only_test AS SELECT 1 AS x"
a_prod=$(q "$port_prod" -c "SELECT abalance FROM pgbench_accounts WHERE aid = 1")
a_test=$(q "$port_test" -c "SELECT abalance FROM pgbench_accounts WHERE aid = 1")
seen_prod=$(q "$port_prod" -c "SELECT coalesce(to_regclass('only_test')::text, 'none')")
seen_test=$(q "$port_test" -c "SELECT coalesce(to_regclass('only_prod')::text, 'none')")
echo "account 1: prod $a_prod, test $a_test; prod sees only_test: $seen_prod; test sees only_prod: $seen_test"
[ "$a_prod" = 111111 ] && [ "$a_test" = 222222 ] || fail "a write on one side shows on the other"
[ "$seen_prod" = none ] && [ "$seen_test" = none ] || fail "a table made on one side shows on the other"
q "$port_prod" -c "CHECKPOINT"
q "$port_test" -c "CHECKPOINT"
space_after_writes

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. stopping prod and deleting it (rm -rf $mnt/prod)"
stop_server "$pid_prod"
delete_prod
timeout 60 pgbench -c 4 -j 2 -T 5 -h "$sock" -p "$port_test" -U postgres postgres >"$dir/pgbench-test.log" 2>&1 ||
  fail "pgbench on test after prod's deletion failed: $(tail -n 5 "$dir/pgbench-test.log")"
tps_test=$(awk '/^tps/ { printf "%.0f", $3; exit }' "$dir/pgbench-test.log")
echo "test after prod's deletion: $tps_test tps (pgbench -c 4 -T 5)"
timeout 600 pg_amcheck -h "$sock" -p "$port_test" -U postgres --all --heapallindexed ||
  fail "pg_amcheck on test after prod's deletion found problems"
echo "pg_amcheck --all --heapallindexed on test: clean"
n_after=$(q "$port_test" -c "SELECT count(*) FROM ledger")
test_kept "$n_after"

say "stopping test, unmounting, fsck"
stop_server "$pid_test"
servers=()
unmount_and_fsck

summary "load (pgbench -i -s $scale):   $load_rate rows/s ($load_rows rows in $((load_us / 1000)) ms)" \
  "prod under pgbench -c 4:       $tps_before tps before the clone, $tps_during tps in the clone's second, $tps_after tps after
server on the clone:           ready in $(ms "$recovery_us") ms (start and crash recovery)" \
  "test after prod's deletion:    $tps_test tps, pg_amcheck clean"
