#!/usr/bin/env bash
# PostgreSQL and restore points: restore cluster "prod" to three times T under an insert ledger, check each restored server
# (recovery, pg_amcheck, exactly the rows committed by the restore point's time P); reset, expiry and protection. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh

port=${DB_PORT:-55500}        # prod's port, or the first free one above; the other servers take the next free ones
scale=${PG_SCALE:-2}          # pgbench scale (2 = 200,000 accounts, ~30 MB): a background load beside the ledger
load_secs=${DB_LOAD_SECS:-16} # pgbench and the ledger run this long; the restores and the reset happen inside it
expires=5                     # seconds the expiring clone lives

# ---- engine and tools -----------------------------------------------------------
setup_postgres

# ---- scratch dir, store, mount, initdb ---------------------------------------------
client_grace=20 # cleanup waits up to 10 s for each client (pgbench, the ledger, the expiry watch) after its SIGTERM
postgres_on_mount
echo "restore points: $(timeout 30 "$bin" restorable --cluster prod "$mnt")"

# ---- servers and clients ---------------------------------------------------------
# stop_server PID: fast shutdown, then immediate, then SIGKILL; only PIDs we started.
stop_server() { stop_pid "$1" 60 INT QUIT KILL; }
# stop_named NAME: stop_server of the NAME server, which leaves the list cleanup stops.
stop_named() {
  local pid p keep=()
  eval "pid=\$pid_$1"
  stop_server "$pid"
  for p in "${servers[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  servers=("${keep[@]}")
}
# start_server's parts: a postmaster as user postgres, its socket in $sock. Commit timestamps are on, so each row's
# commit time can be read back (pg_xact_commit_timestamp); every server (restored ones too) runs with them.
launch_server() { # launch_server NAME DATADIR PORT
  (exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    postgres -D "$2" -p "$3" -k "$sock" -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on \
    >"$dir/server-$1.log" 2>&1) &
}
server_ready() { timeout 10 pg_isready -q -h "$sock" -p "$2"; } # server_ready NAME PORT
server_socket() { echo "$sock"; }
port_taken='could not create any TCP/IP sockets'
q() { # q PORT SQL...: one psql call, unaligned, tuples only (SQL on stdin if none given)
  local port=$1
  shift
  timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}
sec() { ms $(($1 / 1000)); } # µs as seconds, 3 decimals
us_of() { date -d "$1" +%s%6N; }                                                 # RFC 3339 -> µs since the epoch
rfc_of() { date -u -d "@$(($1 / 1000000)).$(printf %06d $(($1 % 1000000)))" +%Y-%m-%dT%H:%M:%S.%6NZ; } # µs -> RFC 3339

# ledger_loop: one psql session on prod inserts ids 1, 2, 3..., one autocommit transaction each (the row stores its
# clock_timestamp()), and appends "id begin_us end_us" to $dir/ledger.txt: begin just before the INSERT is sent, end
# once psql has printed the row it returned (the COMMIT has returned). Ends when $stop exists; exit 1 if an insert fails.
ledger_loop() {
  local i=0 s line
  coproc LEDGER_PSQL { exec timeout 600 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port_prod" -U postgres \
    -d postgres 2>>"$dir/ledger-errors.log"; }
  while [ ! -e "$stop" ]; do
    i=$((i + 1))
    s=${EPOCHREALTIME/./}
    printf 'INSERT INTO ledger (id) VALUES (%d) RETURNING id;\n' "$i" >&"${LEDGER_PSQL[1]}"
    read -r -t 30 line <&"${LEDGER_PSQL[0]}" || { echo "ledger: no reply to insert $i" >&2; exit 1; }
    [ "$line" = "$i" ] || { echo "ledger: insert $i returned '$line'" >&2; exit 1; }
    echo "$i $s ${EPOCHREALTIME/./}" >>"$dir/ledger.txt"
  done
  exec {LEDGER_PSQL[1]}>&-
  wait "$LEDGER_PSQL_PID" || { echo "ledger: psql exited $?" >&2; exit 1; }
}

# watch_gone PATH OUT: stats PATH every 0.1 s (up to 60 s); once it is gone, writes "last_present_us first_absent_us"
# to OUT. A stat that fails for any reason but ENOENT (exit 1) ends the watch with exit 1.
watch_gone() {
  local last=0 t rc i
  for ((i = 0; i < 600; i++)); do
    t=${EPOCHREALTIME/./}
    rc=0
    timeout 5 stat "$1" >/dev/null 2>&1 || rc=$?
    case $rc in
    0) last=$t ;;
    1) echo "$last $t" >"$2"; return 0 ;;
    *) echo "watch: stat $1 failed ($rc)" >&2; exit 1 ;;
    esac
    sleep 0.1
  done
  echo "watch: $1 still there after 60 s" >&2
  exit 1
}

# restore NAME WHEN: clonefs restore-to-point-in-time of prod as NAME at WHEN (RFC 3339 or relative); sets
# P_NAME (the restore point's time, µs), ms_NAME (the time the command reports) and c0_NAME, c1_NAME (µs around it).
restore() {
  local name=$1 when=$2 out c0 c1
  c0=$(now_us)
  out=$(timeout 60 "$bin" restore-to-point-in-time --source-cluster prod --cluster "$name" --restore-to-time "$when" "$mnt") ||
    fail "restore-to-point-in-time of prod as $name at $when failed"
  c1=$(now_us)
  echo "$out"
  [[ $out =~ from\ its\ restore\ point\ at\ ([0-9T:.Z-]+)\ in\ ([0-9]+)\ ms ]] || fail "no restore point time in: $out"
  eval "P_$name=$(us_of "${BASH_REMATCH[1]}") ms_$name=${BASH_REMATCH[2]} c0_$name=$c0 c1_$name=$c1"
}

# check_restored NAME T_US: a server on restored cluster NAME (T_US: the latest time the restore could have asked for)
# recovers, passes pg_amcheck --heapallindexed and pgbench's invariant, and holds exactly the ledger rows its restore
# point's time P allows: every id whose COMMIT returned at or before P, none whose INSERT was sent after P. Ids in
# flight across P (sent at or before P, returned after it) may go either way. Its rows' clock_timestamp() and commit
# timestamps are at or before P. Appends a line to $dir/restores.txt for the summary.
check_restored() {
  local name=$1 t=$2 p pport r n lo hi at_max ts_max must mustnot inflight bal rec how
  eval "p=\$P_$name"
  say "restored cluster $name: restore point P = $(rfc_of "$p"), $(ms $((t - p))) ms before the time asked for"
  ((p <= t)) || fail "$name: its restore point $(rfc_of "$p") is after the time asked for, $(rfc_of "$t")"
  ((t - p <= 5000000)) || fail "$name: the newest restore point at or before $(rfc_of "$t") is $(ms $((t - p))) ms older"
  timeout 30 rm -f "$mnt/$name/pgdata/postmaster.pid"
  start_server "$name" "$mnt/$name/pgdata" "$((port_prod + 1))"
  eval "pport=\$port_$name"
  grep -E 'redo (starts|done)|database system was (not properly shut down|interrupted)' "$dir/server-$name.log" |
    sed 's/^/  server: /' || true
  grep -q 'database system was not properly shut down' "$dir/server-$name.log" ||
    fail "$name: the server did not recover as after a crash (see server-$name.log)"
  rec=$(awk '/redo done at/ { for (i = 1; i <= NF; i++) if ($i == "elapsed:") print $(i + 1) }' "$dir/server-$name.log")
  timeout 600 pg_amcheck -h "$sock" -p "$pport" -U postgres --all --install-missing --heapallindexed \
    >"$dir/amcheck-$name.txt" 2>&1 || fail "pg_amcheck on $name found problems: $(tail -n 20 "$dir/amcheck-$name.txt")"
  echo "pg_amcheck --all --heapallindexed on $name: clean"
  bal=$(q "$pport" -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = coalesce(sum(delta), 0)
    AND (SELECT sum(bbalance) FROM pgbench_branches) = coalesce(sum(delta), 0)
    AND (SELECT sum(tbalance) FROM pgbench_tellers) = coalesce(sum(delta), 0) FROM pgbench_history")
  [ "$bal" = t ] || fail "$name: pgbench's balances disagree with pgbench_history"
  echo "pgbench invariant on $name: sum(abalance) = sum(bbalance) = sum(tbalance) = sum(history.delta)"
  r=$(q "$pport" -c "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0),
    coalesce((extract(epoch FROM max(at)) * 1000000)::bigint, 0),
    coalesce((extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) * 1000000)::bigint, 0) FROM ledger")
  IFS='|' read -r n lo hi at_max ts_max <<<"$r"
  must=$(awk -v p="$p" '$3 <= p { m = $1 } END { print m + 0 }' "$dir/ledger.txt")
  mustnot=$(awk -v p="$p" '$2 > p { print $1; exit }' "$dir/ledger.txt")
  inflight=$(awk -v p="$p" '$2 <= p && $3 > p { printf "%s%s", s, $1; s = "," }' "$dir/ledger.txt")
  echo "ledger: COMMIT returned by P: ids 1..$must; in flight across P: ${inflight:-none}; sent after P: from" \
    "${mustnot:-none}; $name holds $n ids, $lo..$hi; its newest row's clock_timestamp() $(ms $((p - at_max))) ms" \
    "before P, its newest commit timestamp $(ms $((p - ts_max))) ms before P"
  ((must > 0)) || fail "$name: no ledger id committed by P: the check proves nothing"
  [ -n "$mustnot" ] || fail "$name: no ledger id sent after P: the check proves nothing"
  ((n == hi && (n == 0 || lo == 1))) || fail "$name: its ledger ids are not a gap-free prefix ($n ids, $lo..$hi)"
  ((hi >= must)) || fail "$name: ids $((hi + 1))..$must committed by P but are missing"
  ((hi < mustnot)) || fail "$name: ids $mustnot..$hi were sent after P but are in it"
  ((at_max <= p && ts_max <= p)) || fail "$name: a row's clock_timestamp() or commit timestamp is after P"
  stop_named "$name"
  how="none in flight"
  [ -z "$inflight" ] || { ((hi >= inflight)) && how="id $inflight in flight: in" || how="id $inflight in flight: out"; }
  printf '%s: T %s, P %s (T-P %s ms), restore %s ms, redo %s s; holds ids 1..%s: 1..%s returned by P, none sent after (%s)\n' \
    "$name" "$(rfc_of "$t" | cut -c12-26)" "$(rfc_of "$p" | cut -c12-26)" "$(ms $((t - p)))" "$(eval "echo \$ms_$name")" \
    "${rec:--}" "$hi" "$must" "$how" >>"$dir/restores.txt"
}

start_server prod "$mnt/prod/pgdata" "$port"

# ---- 1. load, and a clone "test" with a server of its own ---------------------------------
say "1. loading: pgbench -i -s $scale; the ledger table; a clone 'test' served beside prod"
timeout 600 pgbench -i -s "$scale" -q -h "$sock" -p "$port_prod" -U postgres postgres 2>&1 | tail -n 1
q "$port_prod" -c "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
q "$port_prod" -c "CHECKPOINT"
timeout 60 "$bin" clone --source-cluster prod --cluster test "$mnt"
timeout 30 rm -f "$mnt/test/pgdata/postmaster.pid"
start_server test "$mnt/test/pgdata" "$((port_prod + 1))"
q "$port_test" -c "CREATE TABLE only_test AS SELECT 1 AS x"

# ---- 2. write load; three restores and a reset inside it -----------------------------------
say "2. write load: pgbench -c 2 -T $load_secs and the ledger; restores of prod to three times T; reset of test"
: >"$dir/ledger.txt"
timeout $((load_secs + 120)) pgbench -n -c 2 -j 1 -T "$load_secs" -h "$sock" -p "$port_prod" -U postgres postgres \
  >"$dir/pgbench.log" 2>&1 &
pgbench_pid=$!
clients+=("$pgbench_pid")
ledger_loop &
ledger_pid=$!
clients+=("$ledger_pid")
load_t0=$(now_us)
sleep 3
# T1 and T2: absolute times, the restore asked for a second later (restore points taken since then must not be used).
T_r1=$(now_us)
sleep 1
restore r1 "$(rfc_of "$T_r1")"
sleep 2
T_r2=$(now_us)
sleep 1
restore r2 "$(rfc_of "$T_r2")"
sleep 2
# T3: relative, resolved by the command as it starts: at most 1 s before the command returned.
restore r3 -1s
T_r3=$((c1_r3 - 1000000))
sleep 1
kill -0 "$ledger_pid" 2>/dev/null || fail "the ledger stopped during the restores"

say "2b. reset test to prod's latest, prod under load: refused while test's server has its files open"
if timeout 60 "$bin" reset --cluster test "$mnt" 2>"$dir/reset-refused.txt"; then
  fail "reset of test succeeded with its server running"
fi
reset_refused=$(cat "$dir/reset-refused.txt")
echo "refused: $reset_refused"
grep -q busy <<<"$reset_refused" || fail "the refusal does not say the cluster is busy: $reset_refused"
[ "$(q "$port_test" -c "SELECT count(*) FROM only_test")" = 1 ] || fail "test changed after the refused reset"
echo "test's server still serves its own table only_test after the refusal"
stop_named test
t0=$(now_us)
timeout 60 "$bin" reset --cluster test "$mnt"
t1=$(now_us)
reset_us=$((t1 - t0))
echo "reset with test's server stopped: $(ms "$reset_us") ms (measured around the command), prod still under load"

wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 5 "$dir/pgbench.log")"
stop_ledger
load_us=$(($(now_us) - load_t0))
tps=$(awk '/^tps/ { printf "%.0f", $3; exit }' "$dir/pgbench.log")
total=$(wc -l <"$dir/ledger.txt")
echo "load: pgbench $tps tps; the ledger committed $total ids in $(sec "$load_us") s" \
  "($((total * 1000000 / load_us)) a second, one client, one session)"

# The clocks agree: each row's clock_timestamp() and commit timestamp lie between its INSERT's send and its reply.
r=$(q "$port_prod" <<EOF
CREATE TEMP TABLE client (id bigint, sent bigint, returned bigint);
\copy client FROM '$dir/ledger.txt' WITH (DELIMITER ' ')
SELECT count(*), count(*) FILTER (WHERE (extract(epoch FROM l.at) * 1000000)::bigint < c.sent
  OR (extract(epoch FROM pg_xact_commit_timestamp(l.xmin)) * 1000000)::bigint > c.returned
  OR pg_xact_commit_timestamp(l.xmin) < l.at) FROM client c JOIN ledger l USING (id);
EOF
)
IFS='|' read -r joined bad <<<"$r"
echo "prod: $joined of $total ledger ids found; $bad with a clock_timestamp() or commit timestamp outside its client window"
((joined == total && bad == 0)) || fail "prod's ledger disagrees with the client's ($joined of $total found, $bad outside)"
status "after the restores and the reset"
timeout 30 "$bin" restorable --cluster prod "$mnt"

# ---- 3. an expiring clone, watched in the background while the restored clusters are checked ----------------
e0=$(now_us)
timeout 60 "$bin" clone --source-cluster prod --cluster scratch --expires-in "${expires}s" "$mnt"
e1=$(now_us)
watch_gone "$mnt/scratch" "$dir/gone.txt" &
watch_pid=$!
clients+=("$watch_pid")

# ---- 4. each restored cluster: recovery, pg_amcheck, the ledger against P -------------------------------
: >"$dir/restores.txt"
check_restored r1 "$T_r1"
check_restored r2 "$T_r2"
check_restored r3 "$T_r3"

# ---- 5. test after its reset ----------------------------------------------------------------------
say "5. test after its reset: recovery, pg_amcheck, its table gone, prod's ledger as at the reset"
timeout 30 rm -f "$mnt/test/pgdata/postmaster.pid"
start_server test "$mnt/test/pgdata" "$((port_prod + 1))"
timeout 600 pg_amcheck -h "$sock" -p "$port_test" -U postgres --all --install-missing --heapallindexed \
  >"$dir/amcheck-test.txt" 2>&1 || fail "pg_amcheck on test after its reset found problems"
echo "pg_amcheck --all --heapallindexed on test: clean"
seen=$(q "$port_test" -c "SELECT coalesce(to_regclass('only_test')::text, 'none')")
[ "$seen" = none ] || fail "test still has its own table only_test after the reset"
echo "only_test is gone: test holds prod's contents"
r=$(q "$port_test" -c "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM ledger")
check_ledger "$r" "$(q "$port_prod" -c "SELECT count(*) FROM ledger")"
reset_hi=$hi reset_must=$must reset_mustnot=$mustnot
stop_named test

# ---- 6. the expiring clone is gone on time -------------------------------------------------------------
say "6. clone 'scratch' made with --expires-in ${expires}s"
wait "$watch_pid" || fail "the watch of $mnt/scratch failed"
clients=()
read -r last_seen gone_at <"$dir/gone.txt"
exp_lo=$((e0 + expires * 1000000)) exp_hi=$((e1 + expires * 1000000))
echo "scratch: made at +0, last seen +$(sec $((last_seen - e0))) s, gone by +$(sec $((gone_at - e0))) s" \
  "(expiry at +${expires} s; the daemon deletes within ~2 s)"
grep 'cluster scratch expired' "$dir/clonefs.log" | sed 's/^/  clonefs.log: /' || fail "clonefs.log does not log scratch's expiry"
((last_seen > 0 && last_seen < gone_at)) || fail "scratch was never seen"
((gone_at >= exp_lo)) || fail "scratch was gone before its expiry"
((last_seen < exp_hi + 4000000)) || fail "scratch was still there 4 s after its expiry"
timeout 30 "$bin" status "$mnt" --json | jq -e '.clusters | all(.name != "scratch")' >/dev/null ||
  fail "clonefs status still lists scratch"
expiry_line="gone $(sec $((gone_at - exp_hi)))..$(sec $((gone_at - exp_lo))) s after its expiry (polled every 0.1 s)"

# ---- 7. a protected cluster survives rm -rf ------------------------------------------------------------
say "7. protect r1; rm -rf $mnt/r1 must leave every file; unprotect, then rm -rf deletes it"
timeout 30 "$bin" protect --cluster r1 "$mnt"
manifest() { timeout 300 tar -C "$mnt/r1" --sort=name -cf - . | sha256sum | cut -c1-16; } # r1's files, names and metadata
files=$(timeout 60 find "$mnt/r1" -type f | wc -l)
before=$(manifest)
if timeout 120 rm -rf "$mnt/r1" 2>"$dir/rm-protected.txt"; then fail "rm -rf of protected r1 succeeded"; fi
refused=$(grep -c 'Operation not permitted' "$dir/rm-protected.txt" || true)
echo "rm -rf: $refused removals refused (EPERM); first: $(head -n 1 "$dir/rm-protected.txt")"
after=$(manifest)
files_after=$(timeout 60 find "$mnt/r1" -type f | wc -l)
echo "r1: $files files, tar digest $before before; $files_after files, $after after"
((refused > 0)) || fail "rm -rf of protected r1 failed, but not with EPERM"
[ "$before" = "$after" ] && ((files == files_after)) || fail "rm -rf changed protected r1"
if timeout 60 "$bin" reset --cluster r1 "$mnt" 2>"$dir/reset-protected.txt"; then fail "reset of protected r1 succeeded"; fi
grep -q protected "$dir/reset-protected.txt" || fail "the reset refusal does not say r1 is protected: $(cat "$dir/reset-protected.txt")"
echo "reset refused too: $(cat "$dir/reset-protected.txt")"
timeout 30 "$bin" unprotect --cluster r1 "$mnt"
timeout 120 rm -rf "$mnt/r1" || fail "rm -rf of r1 failed after unprotect"
[ ! -e "$mnt/r1" ] || fail "$mnt/r1 still exists after unprotect and rm -rf"
echo "r1 deleted after unprotect"

# ---- the end -----------------------------------------------------------------------
say "stopping prod, unmounting, fsck"
stop_named prod
unmount_and_fsck

say "summary"
cat <<EOF
load: pgbench -c 2 (scale $scale) at $tps tps and a one-session ledger of $total ids over $(sec "$load_us") s
restores of prod under that load (T: the time asked for; P: the restore point used, the newest at or before T):
$(sed 's/^/  /' "$dir/restores.txt")
  each: server recovered as after a crash, pg_amcheck --heapallindexed clean, pgbench's balances agree,
  no row's clock_timestamp() or commit timestamp after P
reset of test to prod's latest: refused with test's server running ($reset_refused);
  with it stopped, $(ms "$reset_us") ms under load; test holds 1..$reset_hi: all $reset_must ids committed before, none begun after (from $reset_mustnot)
expiring clone (--expires-in ${expires}s): $expiry_line
protected r1: rm -rf refused $refused removals, its $files files unchanged; reset refused; deleted after unprotect
fsck: clean
$me: PASS
EOF
