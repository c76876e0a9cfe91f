#!/usr/bin/env bash
# SQLite (WAL mode) on clonefs: a database on cluster "prod", a load, clone prod to "test" under concurrent writers,
# then PRAGMA integrity_check on the clone, a point-in-time ledger check, divergence, and test outliving prod. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/db-common.sh

rows=${SQLITE_ROWS:-300000}   # items loaded; the history table gets 2/3 as many
load_secs=${DB_LOAD_SECS:-20} # write load; the clone happens halfway through
writers=2                     # concurrent writer processes (SQLite serializes them on its write lock)
per_tx=50                     # each write transaction: $per_tx history inserts and the matching item updates

# ---- engine and tools -----------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (mounting needs it)"
require_tools sqlite3=sqlite3
build_clonefs

# ---- scratch dir, store, mount ---------------------------------------------------
client_grace=60 # cleanup waits up to 30 s for each client (writers, ledger) to end after its SIGTERM
make_scratch
mount_store
prod=$mnt/prod/app.db
test=$mnt/test/app.db
sqlite3 --version

# ---- clients ---------------------------------------------------------------------
q() { # q DB SQL: one sqlite3 call that waits up to 30 s for the write lock and stops at the first error
  timeout 300 sqlite3 -batch -bail -cmd ".timeout 30000" "$@"
}
epoch="((julianday('now') - 2440587.5) * 86400.0)" # unix seconds, to the millisecond
# One write transaction: $per_tx history rows for random items, and those items' counters raised to match.
tx="BEGIN IMMEDIATE;
INSERT INTO history (item, delta, at)
  WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < $per_tx)
  SELECT abs(random()) % $rows + 1, 1, $epoch FROM r;
UPDATE items SET n = n + (SELECT COUNT(*) FROM history h WHERE h.id > (SELECT MAX(id) FROM history) - $per_tx AND h.item = items.id)
  WHERE id IN (SELECT item FROM history WHERE id > (SELECT MAX(id) FROM history) - $per_tx);
COMMIT;"
# writer DB: batches of 20 write transactions, one sqlite3 process each, until $stop exists.
writer() {
  local db=$1 batch k
  batch=$(for ((k = 0; k < 20; k++)); do echo "$tx"; done)
  while [ ! -e "$stop" ]; do
    q "$db" <<<"$batch" >/dev/null || { echo "writer: a transaction on $db failed" >&2; exit 1; }
  done
}
# load DB SECONDS: $writers writers at once for SECONDS; fails if one of them did.
load() {
  local pids=() i p
  rm -f "$stop"
  for ((i = 0; i < writers; i++)); do
    writer "$1" &
    pids+=("$!")
  done
  clients+=("${pids[@]}")
  sleep "$2"
  touch "$stop"
  for p in "${pids[@]}"; do wait "$p" || fail "a writer on $1 failed"; done
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
start_ledger q "$prod"
clone_under_load
wait "$load_pid" || fail "the write load failed"
we=$(now_us)
stop_ledger
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
n_prod=$(q "$prod" "SELECT COUNT(*) FROM ledger")
check_ledger "$r" "$n_prod"

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
check_sides "$own_prod" "$own_test" "$seen_prod" "$seen_test"
q "$prod" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
q "$test" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
space_after_writes

# ---- 6. prod goes, test stays ----------------------------------------------------------
say "6. deleting prod (rm -rf $mnt/prod)"
delete_prod
ts=$(now_us)
load "$test" 5
rate_test=$(rate "$test" "$ts" "$(now_us)")
echo "test after prod's deletion: $rate_test rows/s ($writers writers for 5 s)"
checks "$test"
n_after=$(q "$test" "SELECT COUNT(*) FROM ledger")
test_kept "$n_after"

say "unmounting, fsck"
unmount_and_fsck

summary "load (INSERT ... SELECT):      $load_rate rows/s ($load_rows rows in $(ms "$load_us") ms)" \
  "prod under $writers writers:         $rate_before rows/s before the clone, $rate_after rows/s after" \
  "test after prod's deletion:    $rate_test rows/s, integrity_check ok"
