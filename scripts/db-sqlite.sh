#!/usr/bin/env bash
# SQLite (WAL mode) on clonefs: a database on cluster "prod", a load, clone prod to "test" under concurrent writers,
# then PRAGMA integrity_check on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

rows=${SQLITE_ROWS:-300000}   # items loaded; the history table gets 2/3 as many
load_secs=${DB_LOAD_SECS:-20} # write load; the clone happens halfway through
writers=2                     # concurrent writer processes (SQLite serializes them on its write lock)
per_tx=50                     # each write transaction: $per_tx history inserts and the matching item updates

say() { printf '\n== db-sqlite: %s\n' "$*"; }
fail() { echo "db-sqlite: FAIL: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { echo "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; } # microseconds as milliseconds
install_pkgs() { # apt-get install, with an update first only if that fails
  export DEBIAN_FRONTEND=noninteractive
  echo "db-sqlite: installing $*"
  timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "$@" >/dev/null; }
}

# ---- engine and tools -----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (mounting needs it)"
need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v jq >/dev/null || need+=(jq)
command -v fusermount3 >/dev/null || need+=(fuse3)
((${#need[@]} == 0)) || install_pkgs "${need[@]}"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"

say "building clonefs (cargo build --release)"
timeout 900 cargo build --release -q
bin=$root/target/release/clonefs
[ -x "$bin" ] || fail "no $bin after the build"

# ---- scratch dir, store, mount ---------------------------------------------------
dir=$(mktemp -d -t clonefs-db-sqlite.XXXXXX)
mnt=$dir/mnt
store=$dir/store.clonefs
mkdir -p "$mnt"
cd "$dir"

clients=() # PIDs of background writers and the ledger loop
cleanup() {
  local rc=$?
  set +e
  trap - EXIT TERM INT
  touch "$dir/stop"
  for p in "${clients[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${clients[@]}"; do
    for ((i = 0; i < 60; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  done
  if grep -q " $mnt " /proc/mounts; then
    timeout 120 "$bin" umount "$mnt" || timeout 20 fusermount3 -uz "$mnt"
  fi
  if [ "$rc" != 0 ]; then
    echo "db-sqlite: failed (exit $rc); the last lines of each log:" >&2
    for f in "$dir"/*.log; do
      [ -f "$f" ] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }
    done
  fi
  if grep -q " $mnt " /proc/mounts; then
    echo "db-sqlite: $mnt is still mounted; leaving $dir" >&2
  elif [ "${DB_KEEP:-0}" = 1 ]; then
    echo "db-sqlite: DB_KEEP=1: leaving $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

q() { # q DB SQL: one sqlite3 call that waits up to 30 s for the write lock and stops at the first error
  timeout 300 sqlite3 -batch -bail -cmd ".timeout 30000" "$@"
}
status() {
  say "clonefs status $mnt ($1)"
  timeout 60 "$bin" status "$mnt"
}
unique_bytes() { timeout 60 "$bin" status "$mnt" --json | jq -r --arg c "$1" '.clusters[] | select(.name == $c) | .unique'; }
human() { numfmt --to=iec-i --suffix=B "$1"; }
epoch="((julianday('now') - 2440587.5) * 86400.0)" # unix seconds, to the millisecond
# One write transaction: $per_tx history rows for random items, and those items' counters raised to match.
tx="BEGIN IMMEDIATE;
INSERT INTO history (item, delta, at)
  WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < $per_tx)
  SELECT abs(random()) % $rows + 1, 1, $epoch FROM r;
UPDATE items SET n = n + (SELECT COUNT(*) FROM history h WHERE h.id > (SELECT MAX(id) FROM history) - $per_tx AND h.item = items.id)
  WHERE id IN (SELECT item FROM history WHERE id > (SELECT MAX(id) FROM history) - $per_tx);
COMMIT;"
# writer DB: batches of 20 write transactions, one sqlite3 process each, until $dir/stop exists.
writer() {
  local db=$1 batch k
  batch=$(for ((k = 0; k < 20; k++)); do echo "$tx"; done)
  while [ ! -e "$dir/stop" ]; do
    q "$db" <<<"$batch" >/dev/null || { echo "writer: a transaction on $db failed" >&2; exit 1; }
  done
}
# load DB SECONDS: $writers writers at once for SECONDS; fails if one of them did.
load() {
  local pids=() i p
  rm -f "$dir/stop"
  for ((i = 0; i < writers; i++)); do
    writer "$1" &
    pids+=("$!")
  done
  clients+=("${pids[@]}")
  sleep "$2"
  touch "$dir/stop"
  for p in "${pids[@]}"; do wait "$p" || fail "a writer on $1 failed"; done
}
# ledger DB LOG: inserts ids 1, 2, 3... one transaction each, and appends "id start_us end_us"
# to LOG once its COMMIT has returned; stops when $dir/stop exists; exit 1 on a failed insert.
ledger() {
  local db=$1 out=$2 i=0 s
  while [ ! -e "$dir/stop" ]; do
    i=$((i + 1))
    s=$(now_us)
    q "$db" "INSERT INTO ledger (id) VALUES ($i)" || { echo "ledger: insert $i failed" >&2; exit 1; }
    echo "$i $s $(now_us)" >>"$out"
  done
}
# rate DB FROM_US TO_US: rows written per second by the write load in [FROM, TO) (an insert and an update per history row)
rate() {
  q "$1" "SELECT CAST(round(2 * COUNT(*) / (($3 - $2) / 1e6)) AS INTEGER) FROM history
    WHERE delta = 1 AND at >= $2 / 1e6 AND at < $3 / 1e6"
}
# checks DB: SQLite's own integrity check, and the counters against the history.
checks() {
  local out ok
  out=$(q "$1" "PRAGMA integrity_check") || fail "PRAGMA integrity_check on $1 failed: $out"
  [ "$out" = ok ] || fail "PRAGMA integrity_check on $1: $out"
  ok=$(q "$1" "SELECT (SELECT SUM(n) FROM items) = (SELECT SUM(delta) FROM history)")
  [ "$ok" = 1 ] || fail "on $1, sum(items.n) differs from sum(history.delta)"
  echo "PRAGMA integrity_check on $1: ok; sum(items.n) = sum(history.delta)"
}

say "store $store, mount $mnt"
timeout 60 "$bin" mkfs "$store" --size 8G
timeout 60 "$bin" mount "$store" "$mnt" --allow-other --log "$dir/clonefs.log"
grep -q " $mnt " /proc/mounts || fail "clonefs mount returned but $mnt is not mounted"
timeout 30 mkdir "$mnt/prod"
prod=$mnt/prod/app.db
test=$mnt/test/app.db
sqlite3 --version

# ---- 1. load ------------------------------------------------------------------------
say "1. loading $rows items and $((rows * 2 / 3)) history rows (WAL mode)"
mode=$(q "$prod" "PRAGMA journal_mode = WAL")
[ "$mode" = wal ] || fail "journal_mode is $mode, not wal"
q "$prod" "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL);
  CREATE TABLE history (id INTEGER PRIMARY KEY, item INTEGER NOT NULL, delta INTEGER NOT NULL, at REAL NOT NULL);
  CREATE INDEX history_item ON history (item);
  CREATE INDEX history_at ON history (at);
  CREATE TABLE ledger (id INTEGER PRIMARY KEY, at REAL NOT NULL DEFAULT $epoch);"
t=$(now_us)
q "$prod" "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < $rows)
  INSERT INTO items (id, payload) SELECT k, randomblob(100) FROM r"
q "$prod" "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < $((rows * 2 / 3)))
  INSERT INTO history (item, delta, at) SELECT k % $rows + 1, 0, $epoch FROM r"
load_us=$(($(now_us) - t))
load_rows=$((rows + rows * 2 / 3))
load_rate=$((load_rows * 1000000 / load_us))
echo "loaded $load_rows rows in $(ms "$load_us") ms: $load_rate rows/s"
status "after the load"

# ---- 2. write load, clone in the middle ---------------------------------------------------
say "2. write load: $writers writers of $per_tx-row transactions for $load_secs s and the ledger; clone at ${load_secs}/2 s"
ws=$(now_us)
load "$prod" "$load_secs" &
load_pid=$!
clients+=("$load_pid")
ledger "$prod" "$dir/ledger.txt" &
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
wait "$ledger_pid" || fail "the ledger loop failed"
clients=()
rate_before=$(rate "$prod" "$ws" "$t0")
rate_after=$(rate "$prod" "$t1" "$we")
echo "prod: $rate_before rows/s before the clone, $rate_after rows/s after"
status "after the clone"

# ---- 3. open the clone (WAL recovery), and SQLite's own check ------------------------------------
say "3. opening the clone (it recovers its WAL), then PRAGMA integrity_check"
timeout 30 ls -l "$mnt/test"
echo "journal_mode on test: $(q "$test" "PRAGMA journal_mode")"
checks "$test"

# ---- 4. the clone is one point in time -------------------------------------------------
say "4. ledger: the clone holds exactly a prefix that fits the clone's instant"
r=$(q "$test" "SELECT COUNT(*), COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM ledger")
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
n_prod=$(q "$prod" "SELECT COUNT(*) FROM ledger")
((n_prod == total)) || fail "prod holds $n_prod ledger ids but $total commits returned"

# ---- 5. the two sides diverge ----------------------------------------------------------
say "5. writes on each side stay on that side"
q "$prod" "BEGIN; UPDATE items SET n = n + 111111 WHERE id = 1; INSERT INTO history (item, delta, at) VALUES (1, 111111, $epoch);
  CREATE TABLE only_prod (x); COMMIT;"
q "$test" "BEGIN; UPDATE items SET n = n + 222222 WHERE id = 1; INSERT INTO history (item, delta, at) VALUES (1, 222222, $epoch);
  CREATE TABLE only_test (x); COMMIT;"
sees() { # sees DB MARK TABLE: 2 if DB holds the history row MARK and the table TABLE
  q "$1" "SELECT (SELECT COUNT(*) FROM history WHERE delta = $2) + (SELECT COUNT(*) FROM sqlite_schema WHERE name = '$3')"
}
own_prod=$(sees "$prod" 111111 only_prod)
own_test=$(sees "$test" 222222 only_test)
seen_prod=$(sees "$prod" 222222 only_test)
seen_test=$(sees "$test" 111111 only_prod)
echo "prod sees its own row and table: $own_prod/2, test's: $seen_prod/2; test sees its own: $own_test/2, prod's: $seen_test/2"
[ "$own_prod" = 2 ] && [ "$own_test" = 2 ] || fail "a side does not see its own writes"
[ "$seen_prod" = 0 ] && [ "$seen_test" = 0 ] || fail "a write on one side shows on the other"
q "$prod" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
q "$test" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
status "after both sides wrote"
unique_prod=$(unique_bytes prod)
unique_test=$(unique_bytes test)
[[ $unique_prod =~ ^[0-9]+$ && $unique_test =~ ^[0-9]+$ ]] || fail "no unique bytes in clonefs status --json"

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. deleting prod (rm -rf $mnt/prod)"
timeout 300 rm -rf "$mnt/prod"
[ ! -e "$mnt/prod" ] || fail "$mnt/prod still exists"
ts=$(now_us)
load "$test" 5
rate_test=$(rate "$test" "$ts" "$(now_us)")
echo "test after prod's deletion: $rate_test rows/s ($writers writers for 5 s)"
checks "$test"
n_after=$(q "$test" "SELECT COUNT(*) FROM ledger")
((n_after == n)) || fail "test's ledger changed from $n to $n_after ids"
sleep 3 # pages freed by the deletion come back at the next commit (every 2 s)
status "after prod's deletion"

say "unmounting, fsck"
timeout 120 "$bin" umount "$mnt" || fail "clonefs umount failed"
timeout 300 "$bin" fsck "$store" >"$dir/fsck.log" 2>&1 || fail "fsck: $(cat "$dir/fsck.log")"
echo "fsck: clean"

say "summary"
cat <<EOF
load (INSERT ... SELECT):      $load_rate rows/s ($load_rows rows in $(ms "$load_us") ms)
prod under $writers writers:         $rate_before rows/s before the clone, $rate_after rows/s after
clone of prod under load:      $(ms "$clone_us") ms (mkdir, measured around the call)
ledger:                        clone holds 1..$hi of $total; all $must committed before the clone are in, none begun after it
unique after both sides wrote: prod $(human "$unique_prod"), test $(human "$unique_test")
test after prod's deletion:    $rate_test rows/s, integrity_check ok
db-sqlite: PASS
EOF
