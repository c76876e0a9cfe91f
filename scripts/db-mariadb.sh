#!/usr/bin/env bash
# MariaDB (InnoDB, default settings) on clonefs: a datadir on cluster "prod", a load, clone prod to "test" under
# write load, then mariadb-check on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh

port=${DB_PORT:-53306}          # prod's port, or the first free one above; test's is the next free one
rows=${MARIADB_ROWS:-300000}  # accounts loaded; the history table gets 2/3 as many
load_secs=${DB_LOAD_SECS:-20} # write load; the clone happens halfway through
workers=3                     # concurrent sessions running the write load

# ---- engine and tools -----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (the servers run as user mysql)"
export PATH=$PATH:/usr/sbin:/sbin
command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null && command -v mariadb-check >/dev/null ||
  install_pkgs mariadb-server
id mysql >/dev/null || fail "no user mysql after installing mariadb-server"
require_tools
build_clonefs

# ---- scratch dir, store, mount ---------------------------------------------------
make_scratch
chmod 755 "$dir" # the servers run as mysql and must reach the mount below it
run=$dir/run # sockets, pid files, tmpdir
mkdir -p "$run"
chown mysql: "$run"
mount_store
timeout 30 mkdir "$mnt/prod/mysql"
timeout 30 chown mysql: "$mnt/prod/mysql"

# ---- servers and clients ---------------------------------------------------------
# stop_server PID: SIGTERM (a clean shutdown), then SIGKILL; only PIDs we started.
stop_server() { stop_pid "$1" 240 TERM KILL; }
# start_server's parts: mariadbd as user mysql on 127.0.0.1:PORT, its socket $run/NAME.sock (clients connect
# through that socket only, so they never reach the server of another run).
launch_server() { # launch_server NAME DATADIR PORT
  : >"$dir/server-$1.log"
  chown mysql: "$dir/server-$1.log" # mariadbd opens it as mysql
  (exec mariadbd --no-defaults --user=mysql --datadir="$2" --port="$3" --bind-address=127.0.0.1 \
    --socket="$run/$1.sock" --pid-file="$run/$1.pid" --tmpdir="$run" \
    --log-error="$dir/server-$1.log") &
}
server_ready() { timeout 10 mariadb-admin --socket="$run/$1.sock" -u root ping >/dev/null 2>&1; } # server_ready NAME PORT
server_socket() { echo "$run/$1.sock"; }
port_taken='Bind on TCP/IP port.*in use'
q() { # q NAME SQL...: one client call on database bench, tab-separated, no headers
  local name=$1
  shift
  timeout 300 mariadb --socket="$run/$name.sock" -u root -N -B bench "$@"
}
# checks NAME: mariadb-check of every table, CHECK TABLE ... EXTENDED of ours, and the balance invariant.
checks() {
  local name=$1 out bad ok
  out=$(timeout 600 mariadb-check --socket="$run/$name.sock" -u root --all-databases --extended 2>&1) ||
    fail "mariadb-check on $name failed: $out"
  bad=$(grep -Eiv '^[^ ]+[[:space:]]+OK$' <<<"$out" || true)
  [ -z "$bad" ] || fail "mariadb-check on $name reports: $bad"
  echo "mariadb-check --all-databases --extended on $name: $(wc -l <<<"$out") tables OK"
  out=$(q "$name" -e "CHECK TABLE accounts, history, ledger EXTENDED")
  bad=$(awk -F'\t' '!($3 == "status" && $4 == "OK")' <<<"$out")
  [ -z "$bad" ] || fail "CHECK TABLE on $name reports: $bad"
  ok=$(q "$name" -e "SELECT (SELECT SUM(balance) FROM accounts) = (SELECT SUM(delta) FROM history)")
  [ "$ok" = 1 ] || fail "on $name, sum(accounts.balance) differs from sum(history.delta)"
  echo "CHECK TABLE accounts, history, ledger EXTENDED on $name: OK; sum(balance) = sum(history.delta)"
}
# tps NAME FROM_US TO_US: write-load transactions per second committed on NAME in [FROM, TO)
tps() {
  q "$1" -e "SELECT ROUND(COUNT(*) / ($3 - $2) * 1e6) FROM history
    WHERE delta = 1 AND at >= FROM_UNIXTIME($2 / 1e6) AND at < FROM_UNIXTIME($3 / 1e6)"
}
# One write transaction, sent by the client statement by statement like pgbench's: each COMMIT
# returns once durable. (Not a stored procedure: inside CALL, MariaDB completes commits
# asynchronously and waits for their flush only when the CALL returns.)
tx="SET @a = 1 + FLOOR(RAND() * $rows); START TRANSACTION; UPDATE accounts SET balance = balance + 1 WHERE id = @a;
INSERT INTO history (account, delta, at) VALUES (@a, 1, SYSDATE(6)); COMMIT;"
# session NAME SECONDS: one client session sending write transactions for SECONDS
session() {
  local end=$((${EPOCHREALTIME/./} + $2 * 1000000))
  while ((${EPOCHREALTIME/./} < end)); do printf '%s\n' "$tx"; done | q "$1"
}
# load NAME SECONDS: $workers sessions at once; waits for them
load() {
  local pids=() i p
  for ((i = 0; i < workers; i++)); do
    session "$1" "$2" &
    pids+=("$!")
  done
  clients+=("${pids[@]}")
  for p in "${pids[@]}"; do wait "$p" || fail "a write-load session on $1 failed"; done
}

say "mariadb-install-db on the mount"
timeout 300 mariadb-install-db --no-defaults --user=mysql --datadir="$mnt/prod/mysql" --skip-test-db \
  >"$dir/install-db.log" 2>&1 || fail "mariadb-install-db failed: $(tail -n 5 "$dir/install-db.log")"
start_server prod "$mnt/prod/mysql" "$port"
mariadbd --version

# ---- 1. load ------------------------------------------------------------------------
say "1. loading $rows accounts and $((rows * 2 / 3)) history rows into InnoDB"
timeout 60 mariadb --socket="$run/prod.sock" -u root <<'EOF'
CREATE DATABASE bench;
USE bench;
CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL DEFAULT 0, filler CHAR(84) NOT NULL) ENGINE=InnoDB;
CREATE TABLE history (id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL, delta INT NOT NULL,
  at DATETIME(6) NOT NULL, KEY (account), KEY (at)) ENGINE=InnoDB;
CREATE TABLE ledger (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL DEFAULT SYSDATE(6)) ENGINE=InnoDB;
EOF
t=$(now_us)
q prod -e "INSERT INTO accounts (id, filler) SELECT seq, REPEAT('x', 84) FROM seq_1_to_$rows"
q prod -e "INSERT INTO history (account, delta, at) SELECT seq % $rows + 1, 0, SYSDATE(6) FROM seq_1_to_$((rows * 2 / 3))"
load_us=$(($(now_us) - t))
load_rows=$((rows + rows * 2 / 3))
load_rate=$((load_rows * 1000000 / load_us))
echo "loaded $load_rows rows in $(ms "$load_us") ms: $load_rate rows/s"
# Let the page cleaner write the load's dirty pages out first (as PostgreSQL's CHECKPOINT does),
# so that they do not weigh on the tps before the clone; then back to the default.
dflt=$(q prod -e "SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
q prod -e "SET GLOBAL innodb_max_dirty_pages_pct = 0"
for ((i = 0; i < 120; i++)); do
  dirty=$(q prod -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'")
  ((dirty < 100)) && break
  sleep 0.5
done
q prod -e "SET GLOBAL innodb_max_dirty_pages_pct = $dflt"
echo "dirty pages written out (left: $dirty)"
status "after the load"

# ---- 2. write load, clone in the middle ---------------------------------------------------
say "2. write load: $workers sessions of update+insert transactions for $load_secs s and the ledger; clone at ${load_secs}/2 s"
fsyncs() { q "$1" -e "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = '$2'"; }
fs0=$(fsyncs prod INNODB_DATA_FSYNCS)
ws=$(now_us)
load prod "$load_secs" &
load_pid=$!
clients+=("$load_pid")
start_ledger q prod -e
clone_under_load
wait "$load_pid" || fail "the write load failed"
we=$(now_us)
stop_ledger
fs1=$(fsyncs prod INNODB_DATA_FSYNCS)
[[ $fs0 =~ ^[0-9]+$ && $fs1 =~ ^[0-9]+$ ]] || fail "no Innodb_data_fsyncs in information_schema.GLOBAL_STATUS"
commits=$(q prod -e "SELECT COUNT(*) FROM history WHERE delta = 1")
echo "InnoDB fsyncs during the load: $((fs1 - fs0)) for $commits write-load commits and $(wc -l <"$dir/ledger.txt") ledger commits (group commit merges concurrent sessions' flushes)"
tps_before=$(tps prod "$ws" "$t0")
tps_after=$(tps prod "$t1" "$we")
echo "prod: $tps_before tps before the clone, $tps_after tps after (each: update one account, insert one history row)"
status "after the clone"

# ---- 3. a server on the clone, and MariaDB's own checks ------------------------------------
say "3. starting a server on the clone (crash recovery), then mariadb-check and CHECK TABLE"
start_server test "$mnt/test/mysql" "$((port_prod + 1))"
grep -Ei 'crash recovery|Starting final batch|redo log|Recovered' "$dir/server-test.log" | head -n 5 || true
checks test

# ---- 4. the clone is one point in time -------------------------------------------------
say "4. ledger: the clone holds exactly a prefix that fits the clone's instant"
r=$(q test -e "SELECT COUNT(*), COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM ledger")
n_prod=$(q prod -e "SELECT COUNT(*) FROM ledger")
check_ledger "$r" "$n_prod"

# ---- 5. the two sides diverge ----------------------------------------------------------
say "5. writes on each side stay on that side"
q prod -e "UPDATE accounts SET balance = balance + 111111 WHERE id = 1; INSERT INTO history (account, delta, at) VALUES (1, 111111, SYSDATE(6)); CREATE TABLE only_prod (x INT) ENGINE=InnoDB"
q test -e "UPDATE accounts SET balance = balance + 222222 WHERE id = 1; INSERT INTO history (account, delta, at) VALUES (1, 222222, SYSDATE(6)); CREATE TABLE only_test (x INT) ENGINE=InnoDB"
seen_prod=$(q prod -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 222222) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_test')")
seen_test=$(q test -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 111111) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_prod')")
own_prod=$(q prod -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 111111) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_prod')")
own_test=$(q test -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 222222) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_test')")
check_sides "$own_prod" "$own_test" "$seen_prod" "$seen_test"
space_after_writes

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. stopping prod and deleting it (rm -rf $mnt/prod)"
stop_server "$pid_prod"
delete_prod
ts=$(now_us)
load test 5
tps_test=$(tps test "$ts" "$(now_us)")
echo "test after prod's deletion: $tps_test tps ($workers sessions for 5 s)"
checks test
n_after=$(q test -e "SELECT COUNT(*) FROM ledger")
test_kept "$n_after"

say "stopping test, unmounting, fsck"
stop_server "$pid_test"
servers=()
unmount_and_fsck

summary "load (INSERT ... SELECT):      $load_rate rows/s ($load_rows rows in $(ms "$load_us") ms)" \
  "prod under $workers sessions:        $tps_before tps before the clone, $tps_after tps after" \
  "test after prod's deletion:    $tps_test tps, mariadb-check and CHECK TABLE clean"
