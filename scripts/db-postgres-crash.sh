#!/usr/bin/env bash
# PostgreSQL on clonefs through daemon crashes: pgbench and a ledger writer on cluster "prod", the clonefs daemon killed
# with SIGKILL mid-load, then fsck, remount, crash recovery, pg_amcheck, every committed ledger id and pgbench's balances.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh

cycles=3                      # crash cycles; --cycles N
port=${DB_PORT:-55462}        # the server's port, or the first free one above
scale=${PG_SCALE:-5}          # pgbench scale (5 = 500,000 accounts, ~80 MB)
while (($#)); do
  case $1 in
  --cycles) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || fail "--cycles takes a positive number"; cycles=$2; shift 2 ;;
  *) fail "unknown argument $1 (usage: $0 [--cycles N])" ;;
  esac
done

# ---- engine and tools -----------------------------------------------------------
setup_postgres

# ---- server and clients ----------------------------------------------------------
# The server's log (appended to at each start, so every recovery stays in it) and the clients' sockets live in
# $dir, outside the mount. launch_server, server_ready, server_socket and port_taken are for start_server.
launch_server() { # launch_server NAME DATADIR PORT
  (exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    postgres -D "$2" -p "$3" -k "$sock" -c listen_addresses=127.0.0.1 \
    >>"$dir/server-$1.log" 2>&1) &
}
server_ready() { timeout 10 pg_isready -q -h "$sock" -p "$2"; } # server_ready NAME PORT
server_socket() { echo "$sock"; }
port_taken='could not create any TCP/IP sockets'
# stop_server PID: fast shutdown, then immediate, then SIGKILL; then its children must go (kill_server).
stop_server() {
  local kids
  kids=$(pgrep -P "$1" || true)
  stop_pid "$1" 20 INT QUIT KILL
  wait "$1" 2>/dev/null || true
  wait_children "$kids"
}
# kill_server PID: SIGKILL to the postmaster (on a dead mount, pg_ctl stop -m immediate may hang), then its children.
kill_server() {
  local kids
  kids=$(pgrep -P "$1" || true)
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  wait_children "$kids"
}
# wait_children PIDS: up to 30 s for each (they notice their postmaster's death), then SIGKILL to each one left.
wait_children() {
  local p i
  for p in $1; do
    for ((i = 0; i < 60; i++)); do gone "$p" && break; sleep 0.5; done
    gone "$p" || { echo "$me: postgres child $p outlived its postmaster by 30 s; SIGKILL" >&2; stop_pid "$p" 20 KILL; }
  done
}
# gone PID: the process has exited (no /proc entry, or a zombie).
gone() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  [[ ${s:0:1} == [ZX] ]]
}
q() { # q SQL...: one psql call on the server, unaligned, tuples only (SQL on stdin if none given)
  timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port_prod" -U postgres -d postgres "$@"
}

# daemon_pid: the clonefs daemon's pid, from MNT/.clonefs-status; it must be the process holding the store open.
daemon_pid() {
  local pid f want
  pid=$(timeout 30 jq -r .pid "$mnt/.clonefs-status") || fail "cannot read $mnt/.clonefs-status"
  [[ $pid =~ ^[0-9]+$ ]] || fail "no daemon pid in $mnt/.clonefs-status"
  want=$(readlink -f "$store")
  for f in /proc/"$pid"/fd/*; do
    [ "$(readlink "$f" 2>/dev/null)" = "$want" ] && { echo "$pid"; return 0; }
  done
  fail "pid $pid (from $mnt/.clonefs-status) does not hold $store open"
}

# ledger_loop FIRST: inserts ids FIRST, FIRST+1... one transaction each, appending each id to $dir/ledger.txt (outside the
# mount) only once its COMMIT has returned; ends at the first failed insert (the crash) or when $stop exists.
ledger_loop() {
  local i=$1
  while [ ! -e "$stop" ]; do
    timeout 20 psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port_prod" -U postgres -d postgres \
      -c "INSERT INTO ledger (id) VALUES ($i)" >/dev/null 2>>"$dir/ledger-errors.log" || return 0
    echo "$i" >>"$dir/ledger.txt"
    i=$((i + 1))
  done
}

# ends_within PID SECS: waits up to SECS for a background client to exit; SIGTERM if it has not. Its exit code is in $rc.
ends_within() {
  local i
  for ((i = 0; i < $2 * 2; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$1" 2>/dev/null && { echo "$me: client $1 still running $2 s after the crash; SIGTERM" >&2; kill -TERM "$1"; }
  rc=0
  wait "$1" || rc=$?
}

# log_ms LINE: the timestamp at the start of a server log line ("2026-01-01 12:00:00.123 UTC [pid] ...") in ms.
log_ms() { date -d "$(cut -d' ' -f1-3 <<<"$1")" +%s%3N; }

# ---- scratch dir, store, mount, initdb, load ---------------------------------------
postgres_on_mount
touch "$dir/ledger.txt"
start_server prod "$mnt/prod/pgdata" "$port"

say "loading: pgbench -i -s $scale"
timeout 300 pgbench -i -s "$scale" -q -h "$sock" -p "$port_prod" -U postgres postgres 2>&1 | tail -n 2
q -c "CREATE TABLE ledger (id bigint PRIMARY KEY)"
q -c "CHECKPOINT"
accounts_want=$((scale * 100000))

# ---- crash cycles ---------------------------------------------------------------
# pgbench runs with -n: its vacuum step would truncate pgbench_history, which must keep every transaction of every cycle.
recoveries=() # per cycle: recovery time in ms (server log: start to ready to accept connections)
history_before=0
for ((c = 1; c <= cycles; c++)); do
  delay_ms=$((2000 + RANDOM % 4001))
  say "cycle $c/$cycles: pgbench -c 4 -T 10 and the ledger; SIGKILL to the clonefs daemon after $(ms "$delay_ms") s"
  daemon=$(daemon_pid)
  first=$(($(q -c "SELECT coalesce(max(id), 0) FROM ledger") + 1))
  logged_before=$(wc -l <"$dir/ledger.txt")
  rm -f "$stop"
  timeout 60 pgbench -n -c 4 -j 2 -T 10 -h "$sock" -p "$port_prod" -U postgres postgres >"$dir/pgbench-$c.log" 2>&1 &
  pgbench_pid=$!
  ledger_loop "$first" &
  ledger_pid=$!
  clients=("$pgbench_pid" "$ledger_pid")
  sleep "$(ms "$delay_ms")"
  kill -0 "$pgbench_pid" 2>/dev/null || fail "pgbench ended before the crash: $(tail -n 5 "$dir/pgbench-$c.log")"
  kill -0 "$ledger_pid" 2>/dev/null || fail "the ledger ended before the crash: $(tail -n 3 "$dir/ledger-errors.log")"
  kill -KILL "$daemon"
  for ((i = 0; i < 60; i++)); do gone "$daemon" && break; sleep 0.5; done
  gone "$daemon" || fail "the clonefs daemon (pid $daemon) is still there 30 s after SIGKILL"
  echo "killed the clonefs daemon (pid $daemon)"

  # The clients fail on their own (their server lost its files); the server is killed.
  ends_within "$pgbench_pid" 30
  echo "pgbench exited $rc: $(grep -m1 -iE 'error|fatal|panic|abort' "$dir/pgbench-$c.log" || tail -n 1 "$dir/pgbench-$c.log")"
  touch "$stop"
  ends_within "$ledger_pid" 30
  clients=()
  committed=$(($(wc -l <"$dir/ledger.txt") - logged_before))
  total=$(wc -l <"$dir/ledger.txt")
  ((committed > 0)) || fail "no ledger id committed in cycle $c: the check proves nothing"
  if gone "$pid_prod"; then how="had already exited on its own (PANIC on the lost mount)"; else how="killed (SIGKILL)"; fi
  kill_server "$pid_prod"
  servers=()
  echo "postgres server (pid $pid_prod) $how; its children are gone"

  # Detach the dead mount, check the store, mount it again.
  timeout 30 fusermount3 -uz "$mnt" || fail "fusermount3 -uz $mnt failed"
  ! grep -q " $mnt " /proc/mounts || fail "$mnt is still mounted after fusermount3 -uz"
  timeout 300 "$bin" fsck "$store" >"$dir/fsck-$c.txt" 2>&1 || fail "fsck after the crash of cycle $c: $(cat "$dir/fsck-$c.txt")"
  echo "fsck after the crash: clean"
  t=$(now_us)
  timeout 60 "$bin" mount "$store" "$mnt" --allow-other --log "$dir/clonefs.log" || fail "mount after the crash of cycle $c failed"
  mount_us=$(($(now_us) - t))
  grep -q " $mnt " /proc/mounts || fail "clonefs mount returned but $mnt is not mounted"
  echo "mounted again in $(ms "$mount_us") ms"

  # PostgreSQL recovers as after a crash.
  timeout 30 rm -f "$mnt/prod/pgdata/postmaster.pid"
  start_server prod "$mnt/prod/pgdata" "$port"
  start_line=$(grep 'LOG:  starting PostgreSQL' "$dir/server-prod.log" | tail -n 1)
  ready_line=$(grep 'database system is ready to accept connections' "$dir/server-prod.log" | tail -n 1)
  recovery_ms=$(($(log_ms "$ready_line") - $(log_ms "$start_line")))
  recoveries+=("$recovery_ms")
  awk -v s="$start_line" 'f; $0 == s { f = 1 }' "$dir/server-prod.log" |
    grep -E 'not properly shut down|interrupted|redo (starts|done)' | sed 's/^/  server: /' || true

  # PostgreSQL's own checks, the ledger, pgbench's balances.
  timeout 600 pg_amcheck -h "$sock" -p "$port_prod" -U postgres --all --install-missing --heapallindexed \
    >"$dir/amcheck-$c.txt" 2>&1 || fail "pg_amcheck after the crash of cycle $c found problems: $(tail -n 20 "$dir/amcheck-$c.txt")"
  echo "pg_amcheck --all --heapallindexed: clean"
  IFS='|' read -r found missing <<<"$(q <<EOF
CREATE TEMP TABLE logged (id bigint);
\copy logged FROM '$dir/ledger.txt'
SELECT count(l.id), (SELECT string_agg(id::text, ',') FROM (SELECT id FROM logged EXCEPT SELECT id FROM ledger ORDER BY 1 LIMIT 20) m)
  FROM logged l JOIN ledger g USING (id);
EOF
)"
  IFS='|' read -r in_table max_id <<<"$(q -c "SELECT count(*), coalesce(max(id), 0) FROM ledger")"
  IFS='|' read -r accounts a t b h history <<<"$(q -c "SELECT (SELECT count(*) FROM pgbench_accounts),
    (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), coalesce(sum(delta), 0), count(*) FROM pgbench_history")"
  echo "cycle $c: ledger ids committed: $committed this cycle, $total in all; found in the table: $found of $total" \
    "(table: $in_table ids, 1..$max_id); recovery: $(ms "$recovery_ms") s; pgbench: $((history - history_before))" \
    "transactions this cycle, sum(abalance) $a = sum(tbalance) $t = sum(bbalance) $b = sum(history.delta) $h"
  ((found == total)) || fail "ledger ids committed but missing after the crash of cycle $c: $missing"
  ((in_table == max_id)) || fail "the ledger table has gaps: $in_table ids, 1..$max_id"
  ((in_table - total <= c)) || fail "$((in_table - total)) ledger ids in the table were never committed (at most one in flight per crash)"
  ((accounts == accounts_want)) || fail "pgbench_accounts holds $accounts rows, not $accounts_want"
  ((a == t && t == b && b == h)) || fail "pgbench's balances disagree after the crash of cycle $c"
  ((history > history_before)) || fail "no pgbench transaction committed in cycle $c"
  history_before=$history
done

# ---- the end -----------------------------------------------------------------------
say "stopping the server, unmounting, fsck"
stop_server "$pid_prod"
servers=()
unmount_and_fsck

say "summary"
echo "$cycles of $cycles daemon SIGKILLs survived under pgbench -c 4 (scale $scale) and the ledger: fsck clean," \
  "pg_amcheck clean, all $total committed ledger ids found, balances agree ($history pgbench transactions);" \
  "recovery $(for r in "${recoveries[@]}"; do printf '%s s ' "$(ms "$r")"; done | sed 's/ $//')"
echo "$me: PASS"
