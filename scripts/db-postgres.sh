#!/usr/bin/env bash
# PostgreSQL on clonefs: initdb on cluster "prod", pgbench load, clone prod to "test" under write load,
# then pg_amcheck on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

port=${DB_PORT:-55432}          # prod's port, or the first free one above; test's is the next free one
scale=${PG_SCALE:-10}         # pgbench scale (10 = 1M accounts, ~160 MB)
load_secs=${DB_LOAD_SECS:-20} # write load; the clone happens halfway through

say() { printf '\n== db-postgres: %s\n' "$*"; }
fail() { echo "db-postgres: FAIL: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
install_pkgs() { # apt-get install, with an update first only if that fails
  export DEBIAN_FRONTEND=noninteractive
  echo "db-postgres: installing $*"
  timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "$@" >/dev/null; }
}

# ---- engine and tools -----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (the servers run as user postgres)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/pg_amcheck" ] || [ ! -x "$pgbin/pgbench" ]; then
  install_pkgs postgresql
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
[ -x "$pgbin/pg_amcheck" ] || install_pkgs postgresql-contrib
need=()
command -v jq >/dev/null || need+=(jq)
command -v fusermount3 >/dev/null || need+=(fuse3)
((${#need[@]} == 0)) || install_pkgs "${need[@]}"
id postgres >/dev/null || fail "no user postgres after installing postgresql"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"
export PATH=$pgbin:$PATH

say "building clonefs (cargo build --release)"
timeout 900 cargo build --release -q
bin=$root/target/release/clonefs
[ -x "$bin" ] || fail "no $bin after the build"

# ---- scratch dir, store, mount ---------------------------------------------------
dir=$(mktemp -d -t clonefs-db-postgres.XXXXXX)
chmod 755 "$dir" # the servers run as postgres and must reach the mount below it
mnt=$dir/mnt
store=$dir/store.clonefs
sock=$dir/sock
mkdir -p "$mnt" "$sock"
chown postgres: "$sock"
cd "$dir" # postgres cannot read the checkout

servers=()  # PIDs of the postmasters we started
clients=()  # PIDs of background clients (pgbench, the ledger loop)
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
    echo "db-postgres: failed (exit $rc); the last lines of each log:" >&2
    for f in "$dir"/*.log; do
      [ -f "$f" ] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }
    done
  fi
  if grep -q " $mnt " /proc/mounts; then
    echo "db-postgres: $mnt is still mounted; leaving $dir" >&2
  elif [ "${DB_KEEP:-0}" = 1 ]; then
    echo "db-postgres: DB_KEEP=1: leaving $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# stop_server PID: fast shutdown, then immediate, then SIGKILL; only PIDs we started.
stop_server() {
  local pid=$1 sig i
  for sig in INT QUIT KILL; do
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
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
# start_server NAME DATADIR PORT: a postmaster as user postgres on 127.0.0.1 at the first free port from
# PORT (sets port_NAME, pid_NAME), its socket in $sock. Clients connect through that socket only, so
# they never reach the server of another run (cargo test may run this script in another checkout too).
start_server() {
  local name=$1 data=$2 port=$3 try i pid
  for ((try = 0; try < 10; try++)); do
    port=$(free_port "$port")
    (exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
      postgres -D "$data" -p "$port" -k "$sock" -c listen_addresses=127.0.0.1 \
      >"$dir/server-$name.log" 2>&1) &
    pid=$!
    servers+=("$pid")
    for ((i = 0; i < 240; i++)); do
      if timeout 10 pg_isready -q -h "$sock" -p "$port"; then
        eval "pid_$name=$pid port_$name=$port"
        echo "$name server: pid $pid, 127.0.0.1:$port, socket $sock"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    ! kill -0 "$pid" 2>/dev/null || fail "the $name server is not ready after 120 s"
    grep -q 'could not create any TCP/IP sockets' "$dir/server-$name.log" ||
      fail "the $name server exited during startup (see server-$name.log)"
    echo "db-postgres: port $port was taken while the $name server started; trying the next one"
    port=$((port + 1))
  done
  fail "no free port for the $name server"
}
q() { # q PORT SQL...: one psql call, unaligned, tuples only
  local port=$1
  shift
  timeout 300 psql -X -q -At -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres "$@"
}
status() {
  say "clonefs status $mnt ($1)"
  timeout 60 "$bin" status "$mnt"
}
unique_bytes() { timeout 60 "$bin" status "$mnt" --json | jq -r --arg c "$1" '.clusters[] | select(.name == $c) | .unique'; }
human() { numfmt --to=iec-i --suffix=B "$1"; }
# ledger PORT LOG: inserts ids 1, 2, 3... one transaction each, and appends "id start_us end_us"
# to LOG once its COMMIT has returned; stops when $dir/stop-ledger exists; exit 1 on a failed insert.
ledger() {
  local port=$1 out=$2 i=0 s
  while [ ! -e "$dir/stop-ledger" ]; do
    i=$((i + 1))
    s=$(now_us)
    timeout 60 psql -X -q -h "$sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      -c "INSERT INTO ledger (id) VALUES ($i)" >/dev/null || { echo "ledger: insert $i failed" >&2; exit 1; }
    echo "$i $s $(now_us)" >>"$out"
  done
}

say "store $store, mount $mnt"
timeout 60 "$bin" mkfs "$store" --size 8G
timeout 60 "$bin" mount "$store" "$mnt" --allow-other --log "$dir/clonefs.log"
grep -q " $mnt " /proc/mounts || fail "clonefs mount returned but $mnt is not mounted"
timeout 30 mkdir "$mnt/prod"
timeout 30 mkdir "$mnt/prod/pgdata"
timeout 30 chown postgres: "$mnt/prod/pgdata"
timeout 30 chmod 700 "$mnt/prod/pgdata"

say "initdb on the mount"
timeout 300 setpriv --reuid=postgres --regid=postgres --init-groups -- \
  initdb -D "$mnt/prod/pgdata" -U postgres --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 ||
  fail "initdb failed: $(tail -n 5 "$dir/initdb.log")"
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
ledger "$port_prod" "$dir/ledger.txt" &
ledger_pid=$!
clients+=("$ledger_pid")
sleep $((load_secs / 2))
kill -0 "$ledger_pid" 2>/dev/null || fail "the ledger stopped before the clone"
t0=$(now_us)
timeout 60 mkdir "$mnt/prod/.clone/test"
t1=$(now_us)
clone_us=$((t1 - t0))
echo "clone: mkdir $mnt/prod/.clone/test took $((clone_us / 1000)).$(printf %03d $((clone_us % 1000))) ms (under load)"
wait "$pgbench_pid" || fail "pgbench failed: $(tail -n 5 "$dir/pgbench.log")"
touch "$dir/stop-ledger"
wait "$ledger_pid" || fail "the ledger loop failed"
clients=()
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
start_server test "$mnt/test/pgdata" "$((port_prod + 1))"
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
IFS='|' read -r n lo hi <<<"$r"
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
n_prod=$(q "$port_prod" -c "SELECT count(*) FROM ledger")
((n_prod == total)) || fail "prod holds $n_prod ledger ids but $total commits returned"

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
status "after both sides wrote"
unique_prod=$(unique_bytes prod)
unique_test=$(unique_bytes test)
[[ $unique_prod =~ ^[0-9]+$ && $unique_test =~ ^[0-9]+$ ]] || fail "no unique bytes in clonefs status --json"

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. stopping prod and deleting it (rm -rf $mnt/prod)"
stop_server "$pid_prod"
timeout 300 rm -rf "$mnt/prod"
[ ! -e "$mnt/prod" ] || fail "$mnt/prod still exists"
timeout 60 pgbench -c 4 -j 2 -T 5 -h "$sock" -p "$port_test" -U postgres postgres >"$dir/pgbench-test.log" 2>&1 ||
  fail "pgbench on test after prod's deletion failed: $(tail -n 5 "$dir/pgbench-test.log")"
tps_test=$(awk '/^tps/ { printf "%.0f", $3; exit }' "$dir/pgbench-test.log")
echo "test after prod's deletion: $tps_test tps (pgbench -c 4 -T 5)"
timeout 600 pg_amcheck -h "$sock" -p "$port_test" -U postgres --all --heapallindexed ||
  fail "pg_amcheck on test after prod's deletion found problems"
echo "pg_amcheck --all --heapallindexed on test: clean"
n_after=$(q "$port_test" -c "SELECT count(*) FROM ledger")
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
load (pgbench -i -s $scale):   $load_rate rows/s ($load_rows rows in $((load_us / 1000)) ms)
prod under pgbench -c 4:       $tps_before tps before the clone, $tps_during tps in the clone's second, $tps_after tps after
clone of prod under load:      $((clone_us / 1000)).$(printf %03d $((clone_us % 1000))) ms (mkdir, measured around the call)
ledger:                        clone holds 1..$hi of $total; all $must committed before the clone are in, none begun after it
unique after both sides wrote: prod $(human "$unique_prod"), test $(human "$unique_test")
test after prod's deletion:    $tps_test tps, pg_amcheck clean
db-postgres: PASS
EOF
