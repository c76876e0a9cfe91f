#!/usr/bin/env bash
# MariaDB (InnoDB, default settings) on clonefs: a datadir on cluster "prod", a load, clone prod to "test" under
# write load, then mariadb-check on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

port=${DB_PORT:-53306}          # prod's port, or the first free one above; test's is the next free one
rows=${MARIADB_ROWS:-300000}  # accounts loaded; the history table gets 2/3 as many
load_secs=${DB_LOAD_SECS:-20} # write load; the clone happens halfway through
workers=3                     # concurrent sessions running the write load

say() { printf '\n== db-mariadb: %s\n' "$*"; }
fail() { echo "db-mariadb: FAIL: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { echo "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; } # microseconds as milliseconds
install_pkgs() { # apt-get install, with an update first only if that fails
  export DEBIAN_FRONTEND=noninteractive
  echo "db-mariadb: installing $*"
  timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "$@" >/dev/null; }
}

# ---- engine and tools -----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (the servers run as user mysql)"
export PATH=$PATH:/usr/sbin:/sbin
command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null && command -v mariadb-check >/dev/null ||
  install_pkgs mariadb-server
need=()
command -v jq >/dev/null || need+=(jq)
command -v fusermount3 >/dev/null || need+=(fuse3)
((${#need[@]} == 0)) || install_pkgs "${need[@]}"
id mysql >/dev/null || fail "no user mysql after installing mariadb-server"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

say "building clonefs (cargo build --release)"
timeout 900 cargo build --release -q
bin=$root/target/release/clonefs
[ -x "$bin" ] || fail "no $bin after the build"

# ---- scratch dir, store, mount ---------------------------------------------------
dir=$(mktemp -d -t clonefs-db-mariadb.XXXXXX)
chmod 755 "$dir" # the servers run as mysql and must reach the mount below it
mnt=$dir/mnt
store=$dir/store.clonefs
run=$dir/run # sockets, pid files, tmpdir
mkdir -p "$mnt" "$run"
chown mysql: "$run"
cd "$dir"

servers=() # PIDs of the mariadbd we started
clients=() # PIDs of background clients (the load sessions, the ledger loop)
cleanup() {
  local rc=$?
  set +e
  trap - EXIT TERM INT
  touch "$dir/stop-ledger"
  for p in "${clients[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${servers[@]}"; do stop_server "$p"; done
  if grep -q " $mnt " /proc/mounts; then
    timeout 120 "$bin" umount "$mnt" || timeout 20 fusermount3 -uz "$mnt"
  fi
  if [ "$rc" != 0 ]; then
    echo "db-mariadb: failed (exit $rc); the last lines of each log:" >&2
    for f in "$dir"/*.log; do
      [ -f "$f" ] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }
    done
  fi
  if grep -q " $mnt " /proc/mounts; then
    echo "db-mariadb: $mnt is still mounted; leaving $dir" >&2
  elif [ "${DB_KEEP:-0}" = 1 ]; then
    echo "db-mariadb: DB_KEEP=1: leaving $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# stop_server PID: SIGTERM (a clean shutdown), then SIGKILL; only PIDs we started.
stop_server() {
  local pid=$1 sig i
  for sig in TERM KILL; do
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 240; i++)); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.5
    done
  done
}
# free_port N: the first port from N up on which nothing listens on 127.0.0.1
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
# start_server NAME DATADIR PORT: mariadbd as user mysql on 127.0.0.1 at the first free port from PORT
# (sets port_NAME, pid_NAME), its socket $run/NAME.sock. Clients connect through that socket only, so
# they never reach the server of another run (cargo test may run this script in another checkout too).
start_server() {
  local name=$1 data=$2 port=$3 try i pid
  for ((try = 0; try < 10; try++)); do
    port=$(free_port "$port")
    : >"$dir/server-$name.log"
    chown mysql: "$dir/server-$name.log" # mariadbd opens it as mysql
    (exec mariadbd --no-defaults --user=mysql --datadir="$data" --port="$port" --bind-address=127.0.0.1 \
      --socket="$run/$name.sock" --pid-file="$run/$name.pid" --tmpdir="$run" \
      --log-error="$dir/server-$name.log") &
    pid=$!
    servers+=("$pid")
    for ((i = 0; i < 240; i++)); do
      if timeout 10 mariadb-admin --socket="$run/$name.sock" -u root ping >/dev/null 2>&1; then
        eval "pid_$name=$pid port_$name=$port"
        echo "$name server: pid $pid, 127.0.0.1:$port, socket $run/$name.sock"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    ! kill -0 "$pid" 2>/dev/null || fail "the $name server is not ready after 120 s"
    grep -q "Bind on TCP/IP port.*in use" "$dir/server-$name.log" ||
      fail "the $name server exited during startup (see server-$name.log)"
    echo "db-mariadb: port $port was taken while the $name server started; trying the next one"
    port=$((port + 1))
  done
  fail "no free port for the $name server"
}
q() { # q NAME SQL...: one client call on database bench, tab-separated, no headers
  local name=$1
  shift
  timeout 300 mariadb --socket="$run/$name.sock" -u root -N -B bench "$@"
}
status() {
  say "clonefs status $mnt ($1)"
  timeout 60 "$bin" status "$mnt"
}
unique_bytes() { timeout 60 "$bin" status "$mnt" --json | jq -r --arg c "$1" '.clusters[] | select(.name == $c) | .unique'; }
human() { numfmt --to=iec-i --suffix=B "$1"; }
# ledger NAME LOG: inserts ids 1, 2, 3... one transaction each, and appends "id start_us end_us"
# to LOG once its COMMIT has returned; stops when $dir/stop-ledger exists; exit 1 on a failed insert.
ledger() {
  local name=$1 out=$2 i=0 s
  while [ ! -e "$dir/stop-ledger" ]; do
    i=$((i + 1))
    s=$(now_us)
    q "$name" -e "INSERT INTO ledger (id) VALUES ($i)" || { echo "ledger: insert $i failed" >&2; exit 1; }
    echo "$i $s $(now_us)" >>"$out"
  done
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

say "store $store, mount $mnt"
timeout 60 "$bin" mkfs "$store" --size 8G
timeout 60 "$bin" mount "$store" "$mnt" --allow-other --log "$dir/clonefs.log"
grep -q " $mnt " /proc/mounts || fail "clonefs mount returned but $mnt is not mounted"
timeout 30 mkdir "$mnt/prod"
timeout 30 mkdir "$mnt/prod/mysql"
timeout 30 chown mysql: "$mnt/prod/mysql"

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
ledger prod "$dir/ledger.txt" &
ledger_pid=$!
clients+=("$ledger_pid")
sleep $((load_secs / 2))
kill -0 "$ledger_pid" 2>/dev/null || fail "the ledger stopped before the clone"
t0=$(now_us)
timeout 60 mkdir "$mnt/prod/.clone/test"
t1=$(now_us)
clone_us=$((t1 - t0))
echo "clone: mkdir $mnt/prod/.clone/test took $(ms "$clone_us") ms (under load)"
wait "$load_pid" || fail "the write load failed"
we=$(now_us)
touch "$dir/stop-ledger"
wait "$ledger_pid" || fail "the ledger loop failed"
clients=()
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
read -r n lo hi <<<"$r"
must=$(awk -v t0="$t0" '$3 < t0 { m = $1 } END { print m + 0 }' "$dir/ledger.txt")
mustnot=$(awk -v t1="$t1" '$2 > t1 { print $1; exit }' "$dir/ledger.txt")
total=$(wc -l <"$dir/ledger.txt")
echo "ledger: $total ids committed on prod; committed before the clone began: 1..$must;" \
  "first id begun after it ended: ${mustnot:-none}; the clone holds $n ids, $lo..$hi"
((must > 0)) || fail "no ledger id committed before the clone: the check proves nothing"
[ -n "$mustnot" ] || fail "no ledger id begun after the clone: the check proves nothing"
((n == hi && (n == 0 || lo == 1))) || fail "the clone's ledger ids are not a gap-free prefix ($n ids, $lo..$hi)"
((hi >= must)) || fail "ids $((hi + 1))..$must committed before the clone began but are missing from it"
((hi < mustnot)) || fail "ids $mustnot..$hi began after the clone ended but are in it"
n_prod=$(q prod -e "SELECT COUNT(*) FROM ledger")
((n_prod == total)) || fail "prod holds $n_prod ledger ids but $total commits returned"

# ---- 5. the two sides diverge ----------------------------------------------------------
say "5. writes on each side stay on that side"
q prod -e "UPDATE accounts SET balance = balance + 111111 WHERE id = 1; INSERT INTO history (account, delta, at) VALUES (1, 111111, SYSDATE(6)); CREATE TABLE only_prod (x INT) ENGINE=InnoDB"
q test -e "UPDATE accounts SET balance = balance + 222222 WHERE id = 1; INSERT INTO history (account, delta, at) VALUES (1, 222222, SYSDATE(6)); CREATE TABLE only_test (x INT) ENGINE=InnoDB"
seen_prod=$(q prod -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 222222) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_test')")
seen_test=$(q test -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 111111) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_prod')")
own_prod=$(q prod -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 111111) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_prod')")
own_test=$(q test -e "SELECT (SELECT COUNT(*) FROM history WHERE delta = 222222) + (SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'only_test')")
echo "prod sees its own row and table: $own_prod/2, test's: $seen_prod/2; test sees its own: $own_test/2, prod's: $seen_test/2"
[ "$own_prod" = 2 ] && [ "$own_test" = 2 ] || fail "a side does not see its own writes"
[ "$seen_prod" = 0 ] && [ "$seen_test" = 0 ] || fail "a write on one side shows on the other"
status "after both sides wrote"
unique_prod=$(unique_bytes prod)
unique_test=$(unique_bytes test)
[[ $unique_prod =~ ^[0-9]+$ && $unique_test =~ ^[0-9]+$ ]] || fail "no unique bytes in clonefs status --json"

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. stopping prod and deleting it (rm -rf $mnt/prod)"
stop_server "$pid_prod"
timeout 300 rm -rf "$mnt/prod"
[ ! -e "$mnt/prod" ] || fail "$mnt/prod still exists"
ts=$(now_us)
load test 5
tps_test=$(tps test "$ts" "$(now_us)")
echo "test after prod's deletion: $tps_test tps ($workers sessions for 5 s)"
checks test
n_after=$(q test -e "SELECT COUNT(*) FROM ledger")
((n_after == n)) || fail "test's ledger changed from $n to $n_after ids"
sleep 3 # pages freed by the deletion come back at the next commit (every 2 s)
status "after prod's deletion"

say "stopping test, unmounting, fsck"
stop_server "$pid_test"
servers=()
timeout 120 "$bin" umount "$mnt" || fail "clonefs umount failed"
timeout 300 "$bin" fsck "$store" >"$dir/fsck.log" 2>&1 || fail "fsck: $(cat "$dir/fsck.log")"
echo "fsck: clean"

say "summary"
cat <<EOF
load (INSERT ... SELECT):      $load_rate rows/s ($load_rows rows in $(ms "$load_us") ms)
prod under $workers sessions:        $tps_before tps before the clone, $tps_after tps after
clone of prod under load:      $(ms "$clone_us") ms (mkdir, measured around the call)
ledger:                        clone holds 1..$hi of $total; all $must committed before the clone are in, none begun after it
unique after both sides wrote: prod $(human "$unique_prod"), test $(human "$unique_test")
test after prod's deletion:    $tps_test tps, mariadb-check and CHECK TABLE clean
db-mariadb: PASS
EOF
