# shellcheck shell=bash
# What scripts/db-postgres.sh, db-mariadb.sh and db-sqlite.sh share; each sources it from the checkout's root, after
# `set -euo pipefail`. Scripts with servers define stop_server PID and, for start_server, launch_server, server_ready,
# server_socket and port_taken. Every message starts with the script's name ($me).

me=$(basename "$0" .sh) # db-postgres, db-mariadb or db-sqlite
root=$PWD
servers=()     # PIDs of the servers we started; cleanup stops each with the script's stop_server
clients=()     # PIDs of background clients (the write load, the ledger loop); cleanup sends each SIGTERM
more_mounts=() # further mounts of the store (single-cluster mounts); cleanup unmounts each before $mnt
client_grace=0 # half-seconds cleanup then waits for each client to exit (0: it does not wait)
store_addr=    # rados://POOL/STORE (store_options: --store or DB_STORE), or empty: a store file in the scratch dir
store_opts=()  # what mkfs, mount and fsck of the store take besides its address (--ceph-conf FILE for RADOS)
store_daemon=  # the PID of the RADOS store's clonefs daemon once mounted (from its .clonefs-status)
made_store=0   # 1 once this run's mkfs made the RADOS store: its objects are removed at the end, and only then

# say TEXT / fail TEXT: a section heading on stdout / a failure on stderr, then exit 1.
# now_us: the time in microseconds since the epoch; ms US: microseconds as milliseconds, 3 decimals.
say() { printf '\n== %s: %s\n' "$me" "$*"; }
fail() { echo "$me: FAIL: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { echo "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; }

# store_options ARG...: the script's command line: [--store rados://POOL/STORE [--ceph-conf FILE]] puts the store in a
# Ceph pool instead of a file in the scratch dir (DB_STORE and DB_CEPH_CONF or CEPH_CONF do the same); the store must
# not exist: the script makes it and removes its objects at the end. Sets store_addr, ceph_conf and store_opts.
store_options() {
  local usage="usage: scripts/$me.sh [--store rados://POOL/STORE [--ceph-conf FILE]]"
  store_addr=${DB_STORE:-}
  ceph_conf=${DB_CEPH_CONF:-${CEPH_CONF:-/etc/ceph/ceph.conf}}
  while (($#)); do
    case $1 in
      --store) (($# > 1)) || fail "$usage"; store_addr=$2; shift 2 ;;
      --store=*) store_addr=${1#*=}; shift ;;
      --ceph-conf) (($# > 1)) || fail "$usage"; ceph_conf=$2; shift 2 ;;
      --ceph-conf=*) ceph_conf=${1#*=}; shift ;;
      -h | --help) echo "$usage"; exit 0 ;;
      *) fail "unknown argument '$1'; $usage" ;;
    esac
  done
  [ -n "$store_addr" ] || return 0
  [[ $store_addr =~ ^rados://[^/]+/[^/]+$ ]] || fail "--store takes rados://POOL/STORE, not '$store_addr'"
  [ -r "$ceph_conf" ] || fail "no Ceph configuration at $ceph_conf (--ceph-conf FILE)"
  ceph_conf=$(realpath "$ceph_conf") # the script cd's into its scratch dir
  store_opts=(--ceph-conf "$ceph_conf")
}

# install_pkgs PKG...: apt-get install, with an update first only if that fails
# (Debian and Ubuntu; each apt-get call has its own time limit).
install_pkgs() {
  export DEBIAN_FRONTEND=noninteractive
  echo "$me: installing $*"
  timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "$@" >/dev/null; }
}

# require_tools [CMD=PKG...]: installs in one call the packages of the missing commands among CMD..., jq,
# fusermount3 (fuse3) and, for a RADOS store, rados (ceph-common, which brings librados), then fails if /dev/fuse is missing.
require_tools() {
  local need=() c
  [ -z "$store_addr" ] || set -- "$@" rados=ceph-common
  for c in "$@" jq=jq fusermount3=fuse3; do
    command -v "${c%%=*}" >/dev/null || need+=("${c#*=}")
  done
  ((${#need[@]} == 0)) || install_pkgs "${need[@]}"
  [ -e /dev/fuse ] || fail "/dev/fuse is missing"
}

# build_clonefs: cargo build --release in the checkout ($root), unless DB_CLONEFS names the clonefs binary to use
# (tests/ceph.rs passes the one cargo built for it). Sets bin, the clonefs binary.
build_clonefs() {
  if [ -n "${DB_CLONEFS:-}" ]; then
    bin=$DB_CLONEFS
    [ -x "$bin" ] || fail "DB_CLONEFS=$bin is not an executable"
    return 0
  fi
  say "building clonefs (cargo build --release)"
  timeout 900 cargo build --release -q
  bin=$root/target/release/clonefs
  [ -x "$bin" ] || fail "no $bin after the build"
}

# make_scratch: a temp dir ($dir) holding the mount point ($mnt), the store ($store, unless it is $store_addr on
# RADOS: then the daemon's anchor, lock and socket, unless CLONEFS_RUN_DIR says where) and every log; sets $stop,
# the file whose existence ends the client loops; installs the cleanup traps and cd's into $dir.
make_scratch() {
  dir=$(mktemp -d -t "clonefs-$me.XXXXXX")
  mnt=$dir/mnt
  store=${store_addr:-$dir/store.clonefs}
  [ -z "$store_addr" ] || export CLONEFS_RUN_DIR=${CLONEFS_RUN_DIR:-$dir/run}
  stop=$dir/stop
  mkdir -p "$mnt"
  trap cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  cd "$dir" # the servers' users cannot read the checkout
}

# cleanup (the EXIT trap): ends the clients and stops the servers we started (by PID), unmounts (clonefs umount,
# then fusermount3 -uz), removes the RADOS store this run made (unless DB_KEEP=1), shows each log's tail on failure,
# and removes $dir unless still mounted or DB_KEEP=1.
cleanup() {
  local rc=$? p i f
  set +e
  trap - EXIT TERM INT
  touch "$stop"
  for p in "${clients[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${clients[@]}"; do
    for ((i = 0; i < client_grace; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  done
  for p in "${servers[@]}"; do stop_server "$p"; done
  for f in "${more_mounts[@]}"; do
    grep -q " $f " /proc/mounts && { timeout 120 "$bin" umount "$f" || timeout 20 fusermount3 -uz "$f"; }
  done
  if grep -q " $mnt " /proc/mounts; then
    timeout 120 "$bin" umount "$mnt" || timeout 20 fusermount3 -uz "$mnt"
  fi
  if ((made_store)); then
    if [ "${DB_KEEP:-0}" = 1 ]; then
      echo "$me: DB_KEEP=1: leaving the store $store_addr" >&2
    else
      remove_rados_store || echo "$me: could not remove the store $store_addr; see above" >&2
    fi
  fi
  if [ "$rc" != 0 ]; then
    echo "$me: failed (exit $rc); the last lines of each log:" >&2
    for f in "$dir"/*.log; do
      [ -f "$f" ] && { echo "---- $f" >&2; tail -n 25 "$f" >&2; }
    done
  fi
  if grep -q " $mnt " /proc/mounts; then
    echo "$me: $mnt is still mounted; leaving $dir" >&2
  elif [ "${DB_KEEP:-0}" = 1 ]; then
    echo "$me: DB_KEEP=1: leaving $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}

# mount_store: makes an 8 GiB store (a file, or $store_addr on RADOS: see mkfs_rados), mounts it on $mnt (logging
# to $dir/clonefs.log), and makes cluster prod.
mount_store() {
  say "store $store, mount $mnt"
  if [ -n "$store_addr" ]; then
    mkfs_rados
  else
    timeout 60 "$bin" mkfs "$store" --size 8G
  fi
  timeout 120 "$bin" mount "$store" "$mnt" "${store_opts[@]}" --allow-other --log "$dir/clonefs.log"
  grep -q " $mnt " /proc/mounts || fail "clonefs mount returned but $mnt is not mounted"
  if [ -n "$store_addr" ]; then
    store_daemon=$(timeout 30 jq -r .pid "$mnt/.clonefs-status")
    [[ $store_daemon =~ ^[0-9]+$ ]] || fail "no daemon pid in $mnt/.clonefs-status"
  fi
  timeout 30 mkdir "$mnt/prod"
}

# mkfs_rados: clonefs mkfs of $store_addr; refused if a store of that name exists, since this run removes at its end
# the store it made and must never remove one it did not make. Sets made_store.
mkfs_rados() {
  local out
  if ! out=$(timeout 120 "$bin" mkfs "$store" "${store_opts[@]}" --size 8G 2>&1); then
    [[ $out == *"exists already"* ]] || fail "clonefs mkfs $store failed: $out"
    fail "$store exists already; this script makes its own store and removes it at its end, so it takes a name" \
      "no store has (--store rados://$(rados_pool)/OTHER-NAME), or delete that store first:" \
      "clonefs delete-store $store ${store_opts[*]} --yes"
  fi
  made_store=1
  echo "$out"
}

# rados_pool, rados_name: the POOL and the STORE of $store_addr (rados://POOL/STORE).
rados_pool() { local a=${store_addr#rados://}; echo "${a%%/*}"; }
rados_name() { echo "${store_addr##*/}"; }

# rados_objects: the names of the objects of $store_addr in its pool (STORE. and 16 hex digits), one a line.
rados_objects() {
  local name
  name=$(rados_name)
  timeout 120 rados -c "$ceph_conf" -p "$(rados_pool)" ls |
    awk -v p="$name." 'index($0, p) == 1 && substr($0, length(p) + 1) ~ /^[0-9a-f]{16}$/'
}

# remove_rados_store: once the store's daemon (which unmounting ends) is gone, removes every object of the RADOS store
# this run made, then checks that none is left; a daemon still serving it after 30 s gets SIGKILL first (it is ours:
# its command line names the store and our ceph.conf). Returns 1, leaving the store, if it is still mounted.
remove_rados_store() {
  local i objs left
  ((made_store)) || return 0
  if grep -q " $mnt " /proc/mounts; then
    echo "$me: $mnt is still mounted; leaving the store $store_addr" >&2
    return 1
  fi
  if [ -n "$store_daemon" ]; then
    for ((i = 0; i < 60; i++)); do kill -0 "$store_daemon" 2>/dev/null || break; sleep 0.5; done
    if { tr '\0' ' ' <"/proc/$store_daemon/cmdline"; } 2>/dev/null | grep -qF -- "$store_addr $mnt --ceph-conf $ceph_conf"; then
      echo "$me: the daemon of $store_addr (pid $store_daemon) is still running after its unmount; killing it" >&2
      kill -KILL "$store_daemon" 2>/dev/null
      for ((i = 0; i < 20; i++)); do kill -0 "$store_daemon" 2>/dev/null || break; sleep 0.5; done
    fi
  fi
  objs=$(rados_objects) || return 1
  if [ -n "$objs" ]; then
    xargs -r timeout 300 rados -c "$ceph_conf" -p "$(rados_pool)" rm <<<"$objs" || return 1
  fi
  left=$(rados_objects) || return 1
  [ -z "$left" ] || { echo "$me: objects of $store_addr left in its pool: $left" >&2; return 1; }
  echo "removed the store $store_addr: its $(grep -c . <<<"$objs") objects are gone from pool $(rados_pool)"
  made_store=0
}

# unmount_and_fsck: clonefs umount (after the script stopped its servers), then clonefs fsck of the
# store, which must be clean; a RADOS store is then removed (remove_rados_store).
unmount_and_fsck() {
  timeout 120 "$bin" umount "$mnt" || fail "clonefs umount failed"
  timeout 300 "$bin" fsck "$store" "${store_opts[@]}" >"$dir/fsck.log" 2>&1 || fail "fsck: $(cat "$dir/fsck.log")"
  echo "fsck: clean"
  [ -z "$store_addr" ] || remove_rados_store || fail "could not remove the store $store_addr"
}

# status WHEN: clonefs status of the mount under a heading; unique_bytes CLUSTER: its unique bytes
# (from status --json); human BYTES: as KiB, MiB, GiB...
status() {
  say "clonefs status $mnt ($1)"
  timeout 60 "$bin" status "$mnt"
}
unique_bytes() { timeout 60 "$bin" status "$mnt" --json | jq -r --arg c "$1" '.clusters[] | select(.name == $c) | .unique'; }
human() { numfmt --to=iec-i --suffix=B "$1"; }

# space_after_writes: clonefs status once both sides wrote; sets unique_prod and unique_test, which
# must be numbers.
space_after_writes() {
  status "after both sides wrote"
  unique_prod=$(unique_bytes prod)
  unique_test=$(unique_bytes test)
  [[ $unique_prod =~ ^[0-9]+$ && $unique_test =~ ^[0-9]+$ ]] || fail "no unique bytes in clonefs status --json"
}

# stop_pid PID TRIES SIG...: sends each SIG in turn (the last should be KILL) until PID is gone,
# waiting up to TRIES half-seconds after each; use only on PIDs we started.
stop_pid() {
  local pid=$1 tries=$2 sig i
  shift 2
  for sig in "$@"; do
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < tries; i++)); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.5
    done
  done
}

# free_port N: the first port from N up on which nothing listens on 127.0.0.1 (another run may
# still take it before our server binds: start_server retries).
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

# start_server NAME DATADIR PORT: the script's launch_server NAME DATADIR PORT (in the background; PID $!) at the first free port
# from PORT until server_ready NAME PORT, the next port if its log matches $port_taken; sets port_NAME, pid_NAME.
start_server() {
  local name=$1 data=$2 port=$3 try i pid
  for ((try = 0; try < 10; try++)); do
    port=$(free_port "$port")
    launch_server "$name" "$data" "$port"
    pid=$!
    servers+=("$pid")
    for ((i = 0; i < 240; i++)); do
      if server_ready "$name" "$port"; then
        eval "pid_$name=$pid port_$name=$port"
        echo "$name server: pid $pid, 127.0.0.1:$port, socket $(server_socket "$name")"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    ! kill -0 "$pid" 2>/dev/null || fail "the $name server is not ready after 120 s"
    grep -q "$port_taken" "$dir/server-$name.log" ||
      fail "the $name server exited during startup (see server-$name.log)"
    echo "$me: port $port was taken while the $name server started; trying the next one"
    port=$((port + 1))
  done
  fail "no free port for the $name server"
}

# ledger CMD...: inserts ids 1, 2, 3... one transaction each (CMD... "INSERT INTO ledger (id) VALUES (ID)"), and
# appends "id start_us end_us" to $dir/ledger.txt once its COMMIT has returned; ends when $stop exists; exit 1 on a failed insert.
ledger() {
  local i=0 s
  while [ ! -e "$stop" ]; do
    i=$((i + 1))
    s=$(now_us)
    "$@" "INSERT INTO ledger (id) VALUES ($i)" >/dev/null || { echo "ledger: insert $i failed" >&2; exit 1; }
    echo "$i $s $(now_us)" >>"$dir/ledger.txt"
  done
}

# start_ledger CMD...: the ledger loop in the background, on prod through CMD...
# Sets ledger_pid.
start_ledger() {
  ledger "$@" &
  ledger_pid=$!
  clients+=("$ledger_pid")
}

# stop_ledger: ends the ledger loop (the write load is over: the script has waited for it) and fails
# if the loop did.
stop_ledger() {
  touch "$stop"
  wait "$ledger_pid" || fail "the ledger loop failed"
  clients=()
}

# clone_under_load: $load_secs/2 s into the write load, with the ledger still running, mkdir prod/.clone/test;
# sets t0 and t1 (microseconds just before and after the mkdir) and clone_us.
clone_under_load() {
  sleep $((load_secs / 2))
  kill -0 "$ledger_pid" 2>/dev/null || fail "the ledger stopped before the clone"
  t0=$(now_us)
  timeout 60 mkdir "$mnt/prod/.clone/test"
  t1=$(now_us)
  clone_us=$((t1 - t0))
  echo "clone: mkdir $mnt/prod/.clone/test took $(ms "$clone_us") ms (under load)"
}

# check_ledger CLONE PROD: CLONE is the clone's "count min max" of ledger ids (separated by |, tab or space), PROD prod's
# count. The clone must hold exactly ids 1..N, all committed before t0, none begun after t1. Sets n lo hi must mustnot total.
check_ledger() {
  IFS=$'|\t ' read -r n lo hi <<<"$1"
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
  local n_prod=$2
  ((n_prod == total)) || fail "prod holds $n_prod ledger ids but $total commits returned"
}

# check_sides OWN_PROD OWN_TEST SEEN_PROD SEEN_TEST: each side's count of its own marker row and table (must be 2)
# and of the other side's (must be 0).
check_sides() {
  echo "prod sees its own row and table: $1/2, test's: $3/2; test sees its own: $2/2, prod's: $4/2"
  [ "$1" = 2 ] && [ "$2" = 2 ] || fail "a side does not see its own writes"
  [ "$3" = 0 ] && [ "$4" = 0 ] || fail "a write on one side shows on the other"
}

# delete_prod: rm -rf of cluster prod (its server, if any, stopped first), which must then be gone;
# its clone test stays (the script checks it next).
delete_prod() {
  timeout 300 rm -rf "$mnt/prod"
  [ ! -e "$mnt/prod" ] || fail "$mnt/prod still exists"
}

# test_kept N_AFTER: test's ledger still holds the clone's $n ids after prod's deletion; then status,
# once the commit that frees prod's pages has run.
test_kept() {
  local n_after=$1
  ((n_after == n)) || fail "test's ledger changed from $n to $n_after ids"
  sleep 3 # pages freed by the deletion come back at the next commit (every 2 s)
  status "after prod's deletion"
}

# summary LOAD PROD TEST: the summary: a RADOS store's address, the script's lines on the load, on prod under write
# load and on test after prod's deletion, around the shared lines on the clone, the ledger and the space; then PASS.
summary() {
  say "summary"
  [ -z "$store_addr" ] || echo "store:                         $store_addr on Ceph ($ceph_conf), removed after fsck"
  cat <<EOF
$1
$2
clone of prod under load:      $(ms "$clone_us") ms (mkdir, measured around the call)
ledger:                        clone holds 1..$hi of $total; all $must committed before the clone are in, none begun after it
unique after both sides wrote: prod $(human "$unique_prod"), test $(human "$unique_test")
$3
$me: PASS
EOF
}

# postgres_on_mount: make_scratch, a socket dir ($sock) the servers (user postgres) can use, the mount, and a
# PostgreSQL data directory initialised on cluster prod ($mnt/prod/pgdata); start_server serves it. On a RADOS store
# initdb skips its final fsync of each of its ~1,000 files (over a minute on a loopback Ceph cluster): the store
# commits every 2 s anyway, a clone holds every completed write, synced or not, and nothing here crashes the host.
postgres_on_mount() {
  local t no_sync=()
  [ -z "$store_addr" ] || no_sync=(--no-sync)
  make_scratch
  chmod 755 "$dir" # the servers run as postgres and must reach the mount below it
  sock=$dir/sock
  mkdir -p "$sock"
  chown postgres: "$sock"
  mount_store
  timeout 30 mkdir "$mnt/prod/pgdata"
  timeout 30 chown postgres: "$mnt/prod/pgdata"
  timeout 30 chmod 700 "$mnt/prod/pgdata"
  say "initdb ${no_sync[*]:+${no_sync[*]} }on the mount"
  t=$(now_us)
  timeout 600 setpriv --reuid=postgres --regid=postgres --init-groups -- \
    initdb -D "$mnt/prod/pgdata" -U postgres --auth=trust -E UTF8 --no-instructions "${no_sync[@]}" \
    >"$dir/initdb.log" 2>&1 || fail "initdb failed: $(tail -n 5 "$dir/initdb.log")"
  echo "initdb: $(ms $(($(now_us) - t))) ms"
}

# Installs PostgreSQL (server, pgbench, pg_amcheck) if missing, puts its binaries first
# on PATH (pgbin), checks the other tools and builds clonefs. Needs root.
setup_postgres() {
  [ "$(id -u)" = 0 ] || fail "run as root (the servers run as user postgres)"
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$pgbin" ] || [ ! -x "$pgbin/pg_amcheck" ] || [ ! -x "$pgbin/pgbench" ]; then
    install_pkgs postgresql
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  [ -x "$pgbin/pg_amcheck" ] || install_pkgs postgresql-contrib
  id postgres >/dev/null || fail "no user postgres after installing postgresql"
  require_tools
  export PATH=$pgbin:$PATH
  build_clonefs
}
