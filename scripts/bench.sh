#!/usr/bin/env bash
# clonefs against native and peers: fio (native dir, bindfs, clonefs), pgbench, clone time, lineage reads beside a qcow2 chain,
# space, file tools (tar, du, grep, cp, rm on a doc tree; big-file cp, dd), engine, restore points, scale (status, fdatasync, mount,
# RSS, fsck at up to 10,000 clusters and 8 GiB); installs what is missing, prints one table (ratios to native, PASS/MISS).
# Usage: scripts/bench.sh [--quick] [DIR]; BENCH_ONLY=scale scripts/bench.sh [--quick] [DIR] runs the scale section alone;
# scripts/bench.sh --ceph [--quick] [DIR] runs the Ceph section alone (its own throwaway cluster: a store on RADOS, RBD as peer).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=0
ceph=0
dir=/var/tmp # the native directory: stores, mounts, the qcow2 chain and the native side all live on its disk
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --ceph) ceph=1 ;;
    -h | --help) sed -n '2,6p' "$0"; exit 0 ;;
    *) dir=$a ;;
  esac
done
# Only the scale section can run alone: sections 1-6 are top-level code that shares state (the native dir, fio's options,
# the PostgreSQL server helpers), so they run together.
only=${BENCH_ONLY:-}
case "$only" in
  "" | scale) ;;
  *) echo "bench: BENCH_ONLY=$only: only 'scale' runs alone" >&2; exit 2 ;;
esac
[ -z "$only" ] || ((!ceph)) || { echo "bench: --ceph runs the Ceph section alone; not with BENCH_ONLY=$only" >&2; exit 2; }
if ((quick)); then
  fio_size=256M fio_rt=1 pg_secs=10 clone_sizes=(64 256 1024) many=1000 lin_mib=64
  ft_big=256M ft_exclude=(--exclude=core/arch) # file tools: the core docs without core/arch (17k files)
  scale_clusters=(1 1000) scale_gib=(1)
else
  fio_size=1G fio_rt=4 pg_secs=30 clone_sizes=(64 1024 8192) many=10000 lin_mib=256
  ft_big=2G ft_exclude=() # file tools: the toolchain's core docs (41,874 files)
  scale_clusters=(1 1000 10000) scale_gib=(1 8)
fi
# the Ceph section: fio file size, run time (s), pgbench seconds and scale, clone sizes (MiB)
if ((quick)); then
  ceph_fio_size=128M ceph_rt=3 ceph_pg_secs=10 ceph_clone_sizes=(64 1024)
else
  ceph_fio_size=512M ceph_rt=10 ceph_pg_secs=20 ceph_clone_sizes=(64 1024)
fi
ceph_pg_scale=5
depths=(1 16 64 256)
pg_scale=10
started=$SECONDS

say() { printf '== bench [%3ds]: %s\n' $((SECONDS - started)) "$*" >&2; }
fail() { echo "bench: FAIL: $*" >&2; exit 1; }

# ---- tools --------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root (drops the page cache, mounts, runs PostgreSQL as user postgres)"
install_pkgs() { # apt-get install, with an update first only if that fails
  export DEBIAN_FRONTEND=noninteractive
  say "installing $*"
  timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq "$@" >/dev/null; }
}
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true; }
need=()
command -v fio >/dev/null || need+=(fio)
command -v bindfs >/dev/null || need+=(bindfs)
{ command -v qemu-img && command -v qemu-io; } >/dev/null || need+=(qemu-utils)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v python3 >/dev/null || need+=(python3)
((ceph)) && ! command -v rbd >/dev/null && need+=(ceph-common) # rbd; scripts/ceph-up.sh installs the daemons
pgbin=$(pg_bin)
for t in initdb postgres pgbench pg_isready psql; do [ -n "$pgbin" ] && [ -x "$pgbin/$t" ] || need+=(postgresql); done
((${#need[@]} == 0)) || install_pkgs $(printf '%s\n' "${need[@]}" | sort -u)
pgbin=$(pg_bin)
[ -n "$pgbin" ] && [ -x "$pgbin/pgbench" ] || fail "no PostgreSQL server binaries after installing postgresql"
id postgres >/dev/null || fail "no user postgres after installing postgresql"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"
export PATH=$pgbin:$PATH
can_drop=1
[ -w /proc/sys/vm/drop_caches ] || { can_drop=0; say "WARNING: cannot write /proc/sys/vm/drop_caches: 'cold' reads may come from the page cache"; }

say "building (cargo build --release)"
timeout 1200 cargo build --release -q --bin clonefs --example engine_bench
bin=$root/target/release/clonefs

# ---- scratch dir, cleanup -------------------------------------------------------------
mkdir -p "$dir"
work=$(mktemp -d "$(realpath "$dir")/clonefs-bench.XXXXXX")
chmod 755 "$work" # the PostgreSQL servers run as postgres and must reach below it
rows=$work/rows.tsv
: >"$rows"
export BENCH_ROWS=$rows BENCH_CLONEFS=$bin
py=$work/bench.py
mounts=()  # "clonefs MNT" or "bindfs MNT": everything this run mounted
servers=() # PIDs of the postmasters this run started
bg_pids=() # PIDs of other background commands this run started (the scale section's writer)
ceph_dir=  # the Ceph section's cluster (scripts/ceph-up.sh DIR), stopped by cleanup
ceph_store= # its store, rados://clonefs/NAME
stop_server() { # PID: fast shutdown, then immediate, then SIGKILL; only PIDs this run started
  local pid=$1 sig i
  for sig in INT QUIT KILL; do
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.5
    done
  done
}
cleanup() {
  local rc=$? m kind p
  set +e
  trap - EXIT TERM INT
  for p in "${servers[@]}"; do stop_server "$p"; done
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null && wait "$p"; done
  for m in "${mounts[@]}"; do
    kind=${m%% *} m=${m#* }
    grep -q " $m " /proc/mounts || continue
    if [ "$kind" = clonefs ]; then
      timeout 120 "$bin" umount "$m" >/dev/null || timeout 20 fusermount3 -uz "$m"
    else
      timeout 20 fusermount3 -u "$m" || timeout 20 fusermount3 -uz "$m"
    fi
  done
  if [ -n "$ceph_dir" ]; then
    # a daemon of the RADOS store still up (its mount detached): ours if its command line names this cluster's config
    for p in $(ceph_daemons); do kill -KILL "$p" 2>/dev/null; done
    timeout 120 "$root/scripts/ceph-down.sh" "$ceph_dir" || echo "bench: scripts/ceph-down.sh $ceph_dir failed" >&2
  fi
  if [ "$rc" != 0 ]; then
    echo "bench: failed (exit $rc); the last lines of each log:" >&2
    for f in "$work"/*.log "$work"/*.err; do [ -s "$f" ] && { echo "---- $f" >&2; tail -n 15 "$f" >&2; }; done
    if [ -s "$rows" ] && [ -f "$py" ]; then
      echo "bench: the figures measured before the failure:" >&2
      timeout 30 python3 "$py" table "$rows" >&2
    fi
  fi
  if grep -q " $work/" /proc/mounts; then
    echo "bench: something under $work is still mounted; leaving it" >&2
  else
    timeout 600 rm -rf "$work"
  fi
  exit "$rc"
}
# ceph_daemons: PIDs of clonefs daemons serving $ceph_store with this run's ceph.conf (none if no Ceph section ran)
ceph_daemons() {
  local p a
  [ -n "$ceph_store" ] || return 0
  for p in /proc/[0-9]*; do
    mapfile -d '' -t a 2>/dev/null <"$p/cmdline" || continue
    [ "${a[1]:-}" = mount ] && [ "${a[2]:-}" = "$ceph_store" ] && [[ " ${a[*]} " == *" $ceph_dir/ceph.conf "* ]] && echo "${p#/proc/}"
  done
  return 0
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---- helpers (python3: timing in-process, fio JSON, the table) ----------------------------
cat >"$py" <<'PYEOF'
import json, os, shutil, socket, statistics, sys, time

MIB = 1 << 20

def row(kind, rid, label, native="", peer_name="", peer="", clonefs="", target="", spec=""):
    with open(os.environ["BENCH_ROWS"], "a") as f:
        f.write("\t".join(str(x) for x in (kind, rid, label, native, peer_name, peer, clonefs, target, spec)) + "\n")

def used_mib(mnt):
    v = os.statvfs(mnt)  # what `stat -f` shows: used = blocks - free
    return (v.f_blocks - v.f_bfree) * v.f_frsize / MIB

def settle(path):
    """fsync commits; the second and third let reference drops of the first land."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(3):
            os.fsync(fd)
    finally:
        os.close(fd)

def timed_mkdir(path):
    t = time.perf_counter()
    os.mkdir(path)
    return (time.perf_counter() - t) * 1e3

def write_file(path, mib):
    chunk = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(mib):
            os.write(fd, chunk[i % 251:] + chunk[:i % 251])  # every MiB differs
        os.fsync(fd)
    finally:
        os.close(fd)

def cmd_fio(path, kind):
    text = open(path).read()
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0][kind]
    print(f'{job["bw_bytes"] / MIB:.3f} {job["iops"]:.3f}')

def cmd_port(start):
    for p in range(int(start), int(start) + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                print(p)
                return
            except OSError:
                pass
    sys.exit("no free port")

def cmd_readrate(path):
    fd = os.open(path, os.O_RDONLY)
    n = 0
    t = time.perf_counter()
    while True:
        b = os.read(fd, MIB)
        if not b:
            break
        n += len(b)
    secs = time.perf_counter() - t
    os.close(fd)
    print(f"{n / MIB / secs:.3f}")

def cmd_qemurate():
    # qemu-io: "256 MiB, 1 ops; 00.27 sec (938.156 MiB/sec and 3.6 ops/sec)": its own timing of the read
    import re
    text = sys.stdin.read()
    m = re.search(r"\(([\d.]+) (bytes|KiB|MiB|GiB|TiB)/sec", text)
    if not m:
        sys.exit("no rate in the qemu-io output: " + text[-300:])
    scale = {"bytes": 1 / MIB, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "TiB": 1024 * 1024}[m.group(2)]
    print(f"{float(m.group(1)) * scale:.3f}")

def cmd_median(*xs):
    print(f"{statistics.median(float(x) for x in xs):.6g}")

def cmd_used(mnt):
    print(f"{used_mib(mnt):.3f}")

def logical_mib(mnt):
    """Sum of every cluster's logical bytes (clonefs status --json): what full copies take natively."""
    import subprocess
    doc = subprocess.run([os.environ["BENCH_CLONEFS"], "status", mnt, "--json"], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return sum(c["logical"] for c in json.loads(doc)["clusters"]) / MIB

def cmd_clones(mnt, native_dir, many, *sizes):
    """Clone time against data size (median of 11), space around the largest's first 5 clones, the many-th clone."""
    many = int(many)
    sizes = [int(s) for s in sizes]
    nat = statistics.median(timed_mkdir(os.path.join(native_dir, f"mkdir{i}")) for i in range(11))
    first = f"d{sizes[0]}"
    big = sizes[-1]
    clones, space = [], []
    for s in sizes:
        src = f"d{s}"
        os.mkdir(os.path.join(mnt, src))
        data = os.path.join(mnt, src, "data")
        t = time.perf_counter()
        write_file(data, s)
        print(f"wrote {s} MiB into cluster {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if s == big:
            settle(data)
            space.append(("before cloning it", logical_mib(mnt), used_mib(mnt)))
        # Right after a GiB is written and synced, the host is still busy with it:
        # every mkdir through FUSE took twice as long for that (the same clones
        # 3 s later did not), whatever the cluster's size.
        settle(data)
        time.sleep(3)
        times = []
        for k in range(1, 12):
            settle(data)
            times.append(timed_mkdir(os.path.join(mnt, src, ".clone", f"{src}c{k}")))
            if s == big and k <= 5:
                settle(data)
                space.append((f"after clone {k}", logical_mib(mnt), used_mib(mnt)))
        spec = "lt=10"
        target = "< 10 ms"
        if s != sizes[0]:
            spec += f"&le_row=clone{sizes[0]}*2"
            target += f"; <= 2x the {sizes[0]} MiB clone"
        clones.append((f"clone{s}", f"clone of a {s:,} MiB cluster, ms, median of 11", f"{nat:.6f}", "", "",
                       f"{statistics.median(times):.6f}", target, spec))
    src = f"d{big}"
    clone = os.path.join(mnt, f"{src}c1", "data")
    pages = big * MIB // 4096
    chunk = os.urandom(4096)
    fd = os.open(clone, os.O_WRONLY)
    for k in range(pages // 100):
        os.pwrite(fd, chunk, ((k * 100 + 37) % pages) * 4096)
    os.fsync(fd)
    os.close(fd)
    settle(clone)
    space.append(("after rewriting 1% of clone 1's pages", logical_mib(mnt), used_mib(mnt)))
    shutil.rmtree(os.path.join(mnt, src))
    settle(clone)
    space.append(("after deleting the source (its clones stay)", logical_mib(mnt), used_mib(mnt)))
    # The many-th clone of the same (first, smallest) cluster against its first (median of clones 1-11).
    data = os.path.join(mnt, first, "data")
    t = time.perf_counter()
    times = []
    for k in range(12, many + 1):
        path = os.path.join(mnt, first, ".clone", f"{first}c{k}")
        if k > many - 11:
            settle(data)
            times.append(timed_mkdir(path))
        else:
            os.mkdir(path)
    print(f"made {many} clones of {first} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    clones.append(("clone_many", f"clone #{many:,} of the {sizes[0]} MiB cluster, ms, median of #{many - 10:,}-#{many:,}",
                   f"{nat:.6f}", "", "", f"{statistics.median(times):.6f}", f"<= 2x clone #1 (median of #1-#11)",
                   f"le_row=clone{sizes[0]}*2"))
    row("S", "", "clone time: os.mkdir of CLUSTER/.clone/NAME timed in-process; native = a plain os.mkdir in the native dir (median of 11)")
    for r in clones:
        row("R", *r)
    row("S", "", f"store space, MiB: used from statvfs of the mount (stat -f); native = every cluster a full copy "
        f"(sum of logical bytes, clonefs status --json); the {big:,} MiB cluster's clones")
    for k, (what, logical, used) in enumerate(space):
        target, spec = "", ""
        if what.startswith("after clone"):
            target, spec = "+ < 1 MiB per clone", f"delta_lt=space{k - 1}:1"
        elif "rewriting" in what:
            target, spec = "+ 1% to 1.5% of the data", f"delta_in=space{k - 1}:{big * 0.01:.3f}:{big * 0.015:.3f}"
        row("R", f"space{k}", f"store used {what}", f"{logical:.3f}", "", "", f"{used:.3f}", target, spec)

def cmd_ceph_clones(local_mnt, ceph_mnt, *sizes):
    """The Ceph section's clone rows: per size, a cluster holding that much on each store, then 11 clones of it
    (os.mkdir of CLUSTER/.clone/NAME timed in-process, the data synced before each); native = the local store."""
    sizes = [int(s) for s in sizes]
    med = {}
    for s in sizes:
        for where, mnt in (("local", local_mnt), ("ceph", ceph_mnt)):
            src = f"cd{s}"
            os.mkdir(os.path.join(mnt, src))
            data = os.path.join(mnt, src, "data")
            t = time.perf_counter()
            write_file(data, s)
            settle(data)
            secs = time.perf_counter() - t
            print(f"wrote {s} MiB into cluster {src} on the {where} store in {secs:.1f} s ({s / secs:.1f} MiB/s)",
                  file=sys.stderr)
            time.sleep(3)  # as in cmd_clones: let the host settle after the write
            times = []
            for k in range(1, 12):
                settle(data)
                times.append(timed_mkdir(os.path.join(mnt, src, ".clone", f"{src}c{k}")))
            print(f"clones of {src} on the {where} store, ms: " + " ".join(f"{x:.2f}" for x in times), file=sys.stderr)
            med[where, s] = statistics.median(times)
    for s in sizes:
        spec, target = "lt=10", "< 10 ms"
        if s != sizes[0]:
            spec += f"&le_row=cclone{sizes[0]}*2"
            target += f"; <= 2x the {sizes[0]} MiB clone"
        row("R", f"cclone{s}", f"clone of a {s:,} MiB cluster, ms, median of 11", f"{med['local', s]:.6f}", "", "",
            f"{med['ceph', s]:.6f}", target, spec)

def cmd_lineage(mnt, mib, depth):
    """Cluster l0 holds a file; l(i) is a clone of l(i-1) that rewrote one page."""
    mib, depth = int(mib), int(depth)
    os.mkdir(os.path.join(mnt, "l0"))
    write_file(os.path.join(mnt, "l0", "data"), mib)
    pages = mib * MIB // 4096
    for i in range(1, depth + 1):
        os.mkdir(os.path.join(mnt, f"l{i - 1}", ".clone", f"l{i}"))
        fd = os.open(os.path.join(mnt, f"l{i}", "data"), os.O_WRONLY)
        os.pwrite(fd, os.urandom(4096), (i * 7919 % pages) * 4096)
        os.close(fd)
    settle(os.path.join(mnt, f"l{depth}", "data"))

def cmd_engine(path):
    """The engine benchmark's rows: label, figure, target (PASS/MISS (target) or -)."""
    import re
    for line in open(path).read().splitlines()[1:]:
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) < 3:
            continue
        label, fig, tgt = parts[0], parts[1], "  ".join(parts[2:])
        m = re.match(r"(PASS|MISS) \((.*)\)$", tgt)
        verdict, tgt = (m.group(1), m.group(2)) if m else ("", tgt)
        row("E", "", "engine: " + label, "", "", "", fig, tgt, verdict)

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def fmt(x):
    if x is None:
        return "-"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"

def ratio(x, n):
    if x is None or not n:
        return "-"
    r = x / n
    return f"{r:.2f}x" if r >= 0.01 else f"{r:.2g}x"

def verdict(spec, c, n, p, vals):
    if not spec:
        return ""
    if c is None:
        return "MISS (no figure)"
    ok, notes = True, []
    for s in spec.split("&"):
        op, arg = s.split("=", 1)
        if op == "ratio_ge":
            if not n:
                return "MISS (no native figure)"
            ok &= c / n >= float(arg)
        elif op == "ratio_le":
            if not n:
                return "MISS (no native figure)"
            ok &= c / n <= float(arg)
        elif op == "ge_peer":
            if p is None:
                return "MISS (no peer figure)"
            ok &= c >= p
            notes.append(f"{c / p:.2f}x bindfs")
        elif op == "lt":
            ok &= c < float(arg)
        elif op == "le":
            ok &= c <= float(arg)
        elif op in ("le_row", "ge_row"):
            rid, k = arg.split("*")
            ref = num(vals[rid][6])
            ok &= c <= float(k) * ref if op == "le_row" else c >= float(k) * ref
            notes.append(f"{c / ref:.2f}x")
        elif op == "delta_lt":
            rid, k = arg.split(":")
            d = c - num(vals[rid][6])
            ok &= d < float(k)
            notes.append(f"{d:+.3f} MiB")
        elif op == "delta_in":
            rid, a, b = arg.split(":")
            d = c - num(vals[rid][6])
            ok &= float(a) <= d <= float(b)
            notes.append(f"{d:+.1f} MiB")
    return ("PASS" if ok else "MISS") + (f" ({', '.join(notes)})" if notes else "")

def cmd_table(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    vals = {r[1]: r for r in rows if r[0] == "R"}
    head = ["measurement", "native", "peer", "peer/nat", "clonefs", "clonefs/nat", "target", "result"]
    out = []
    for r in rows:
        kind, rid, label, native, peer_name, peer, cf, target, spec = (r + [""] * 9)[:9]
        if kind == "S":
            out.append(label)
            continue
        if kind == "E":
            out.append([label, "-", "-", "-", cf, "-", target or "-", spec])
            continue
        n, p, c = num(native), num(peer), num(cf)
        out.append([label, fmt(n), f"{peer_name} {fmt(p)}" if peer_name else "-", ratio(p, n) if peer_name else "-",
                    fmt(c), ratio(c, n), target or "-", verdict(spec, c, n, p, vals)])
    w = [max(len(x[i]) for x in [head] + [o for o in out if isinstance(o, list)]) for i in range(len(head))]
    right = {1, 2, 3, 4, 5}
    def line(cols):
        return "  ".join(c.rjust(w[i]) if i in right else c.ljust(w[i]) for i, c in enumerate(cols)).rstrip()
    print(line(head))
    print("-" * len(line(head)))
    for o in out:
        print(o if isinstance(o, str) else line(o))
    n_pass = sum(1 for o in out if isinstance(o, list) and o[7].startswith("PASS"))
    n_miss = sum(1 for o in out if isinstance(o, list) and o[7].startswith("MISS"))
    print(f"\n{n_pass} PASS, {n_miss} MISS")

if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PYEOF
pyrun() { timeout "${PYTIMEOUT:-900}" python3 "$py" "$@"; } # the only way the helper runs: with a timeout
section() { printf 'S\t\t%s\n' "$*" >>"$rows"; }
row() { local IFS=$'\t'; printf '%s\n' "R	$*" >>"$rows"; } # ID LABEL NATIVE PEER_NAME PEER CLONEFS TARGET SPEC

mount_clonefs() { # STORE MNT [MOUNT-OPTION...]
  mkdir -p "$2"
  mounts+=("clonefs $2")
  timeout 120 "$bin" mount "$1" "$2" --allow-other --log "$1.log" "${@:3}" >/dev/null
  grep -q " $2 " /proc/mounts || fail "clonefs mount returned but $2 is not mounted"
}
umount_clonefs() { timeout 120 "$bin" umount "$1" >/dev/null || timeout 20 fusermount3 -uz "$1"; }
drop_caches() {
  timeout 300 sync
  ((can_drop)) && echo 3 >/proc/sys/vm/drop_caches
  return 0
}
# cold KIND MNT [STORE [MOUNT-OPTION...]]: before a cold read. The clonefs daemon reads its store through
# a shared mapping, and drop_caches never evicts mapped pages, so a clonefs mount is remounted first.
cold() {
  if [ "$1" = clonefs ]; then
    umount_clonefs "$2"
    mount_clonefs "$3" "$2" "${@:4}"
  fi
  drop_caches
}

# PostgreSQL servers (sections 2, 6 and ceph): $sock, their socket dir, is set by the section that starts them
pg_pid=
start_server() { # NAME DATADIR PORT: a postmaster as user postgres on 127.0.0.1:PORT, socket in $sock
  local name=$1 data=$2 port=$3 i
  (cd / && exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    postgres -D "$data" -p "$port" -k "$sock" -c listen_addresses=127.0.0.1 >"$work/server-$name.log" 2>&1) &
  pg_pid=$!
  servers+=("$pg_pid")
  for ((i = 0; i < 240; i++)); do
    timeout 10 pg_isready -q -h 127.0.0.1 -p "$port" && return 0
    kill -0 "$pg_pid" 2>/dev/null || fail "the $name server exited during startup (see server-$name.log)"
    sleep 0.5
  done
  fail "the $name server is not ready after 120 s"
}
stop_started() { stop_server "$pg_pid"; servers=(); }
# pg_seed NAME DIR SCALE: a new data directory DIR (initdb as postgres) holding pgbench's tables at
# SCALE, checkpointed and its server stopped, for a section to copy or start; on $port, logs NAME-*.log
pg_seed() {
  local name=$1 dir=$2 scale=$3
  mkdir -p "$dir"
  chown postgres: "$dir"
  chmod 700 "$dir"
  timeout 300 setpriv --reuid=postgres --regid=postgres --init-groups -- \
    initdb -D "$dir" -U postgres --auth=trust -E UTF8 --no-instructions >"$work/$name-initdb.log" 2>&1 ||
    fail "initdb failed: $(tail -n 5 "$work/$name-initdb.log")"
  start_server "$name-init" "$dir" "$port"
  timeout 900 pgbench -i -s "$scale" -q -h 127.0.0.1 -p "$port" -U postgres postgres >"$work/$name-pgbench-init.log" 2>&1 ||
    fail "pgbench -i failed: $(tail -n 5 "$work/$name-pgbench-init.log")"
  timeout 300 psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c CHECKPOINT
  stop_started
}

# the table: printed at the end (by a BENCH_ONLY=scale run, after its section)
print_table() {
  local mode=full
  ((quick)) && mode=quick
  echo
  echo "clonefs benchmarks ($mode run, $(date '+%Y-%m-%d %H:%M'), $(nproc) cores, native dir: $dir on $(findmnt -no FSTYPE -T "$dir"))"
  echo "peer/nat and clonefs/nat: each figure over the native figure of the same row, measured in this run"
  echo
  pyrun table "$rows"
  echo
  echo "bench: took $((SECONDS - started)) s"
}

# ---- 7. scale (issue 15): status, a writer's fdatasync, cold mount, RSS, fsck against clusters and data ------------------
# Defined here, above section 1, so that BENCH_ONLY=scale can run it alone; a full run runs it last. Each configuration is
# built and measured as checks/scale does it, then its store is removed.
scale_py=$work/scale.py
cat >"$scale_py" <<'PYEOF'
import os, sys, time

def cmd_small_files(d, n):
    for i in range(int(n)):
        with open(os.path.join(d, str(i)), "w") as f:
            f.write("x" * 100)

def cmd_clones(mnt, n):
    """Clusters prod and n-1 clones of it, prod/.clone/cK; every 100th clone rewrites one 4 KiB page of one file."""
    for k in range(int(n) - 1):
        os.mkdir(os.path.join(mnt, "prod", ".clone", f"c{k}"))
        if k % 100 == 0:
            with open(os.path.join(mnt, f"c{k}", f"f{1 + k % 64}"), "r+b") as f:
                f.seek(4096 * (k % 1000))
                f.write(b"y" * 4096)

def cmd_worst(path, secs):
    """The worst 4 KiB pwrite + fdatasync at offset 0 of path over secs seconds, ms."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    worst, t0, buf = 0.0, time.time(), b"z" * 4096
    while time.time() - t0 < float(secs):
        t = time.perf_counter()
        os.pwrite(fd, buf, 0)
        os.fdatasync(fd)
        worst = max(worst, time.perf_counter() - t)
    os.close(fd)
    print(f"{worst * 1e3:.3f}")

if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PYEOF

# ms CMD...: runs CMD (its stderr to scale.err), prints its wall time in ms; fails as CMD does
ms() {
  local s=${EPOCHREALTIME/[.,]/} e rc=0
  "$@" >/dev/null 2>>"$work/scale.err" || rc=$?
  e=${EPOCHREALTIME/[.,]/}
  ((rc == 0)) || return "$rc"
  printf '%d.%03d\n' $(((e - s) / 1000)) $(((e - s) % 1000))
}
commas() { sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<<"$1"; } # 10000 -> 10,000, whatever the locale
# rss_mib STORE: VmRSS of the daemon serving STORE (the process whose command line is clonefs mount STORE ...), MiB
rss_mib() {
  local p a
  for p in /proc/[0-9]*; do
    mapfile -d '' -t a 2>/dev/null <"$p/cmdline" || continue
    if [ "${a[1]:-}" = mount ] && [ "${a[2]:-}" = "$1" ]; then
      awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "$p/status"
      return 0
    fi
  done
  fail "no clonefs daemon for $1"
}

bench_scale() {
  local gib n i id what store mnt base during limit stmed mt rss fk rc sz w
  local -a st
  local -A empty=()
  say "scale: daemon RSS of an empty 1 GiB and an empty 1 TiB store"
  for sz in 1G 1T; do
    store=$work/scale-empty$sz.clonefs mnt=$work/scale-empty$sz-mnt
    timeout 60 "$bin" mkfs "$store" --size "$sz" >/dev/null
    mount_clonefs "$store" "$mnt"
    sleep 1
    empty[$sz]=$(rss_mib "$store")
    umount_clonefs "$mnt"
    timeout 60 rm -f "$store"
  done
  section "scale (issue 15), as checks/scale: a 128G store; cluster prod with the data in 64 files (dd from /dev/urandom) and 20,000 files of 100 B in prod/many; N-1 clones (mkdir prod/.clone/cK, every 100th rewrites a 4 KiB page); no native counterpart: figures in the clonefs column"
  row scale_rss "daemon RSS, empty 1 TiB store, MiB (native column: an empty 1 GiB store)" "${empty[1G]}" "" "" "${empty[1T]}" \
    "1T <= 1.5x 1G" ratio_le=1.5
  for gib in "${scale_gib[@]}"; do
    for n in "${scale_clusters[@]}"; do
      id=scale${gib}g$n what="$gib GiB, $(commas "$n") cluster$([ "$n" = 1 ] || echo s)"
      store=$work/scale-${gib}g$n.clonefs mnt=$work/scale-mnt
      say "scale, $what: writing prod"
      timeout 60 "$bin" mkfs "$store" --size 128G >/dev/null
      mount_clonefs "$store" "$mnt"
      timeout 30 mkdir "$mnt/prod" "$mnt/prod/many"
      for ((i = 1; i <= 64; i++)); do
        timeout 120 dd if=/dev/urandom of="$mnt/prod/f$i" bs=1M count=$((gib * 16)) status=none
      done
      timeout 600 python3 "$scale_py" small_files "$mnt/prod/many" 20000
      timeout 600 sync
      say "scale, $what: $(commas $((n - 1))) clones"
      timeout 3600 python3 "$scale_py" clones "$mnt" "$n"
      timeout 600 sync
      say "scale, $what: a writer's worst fdatasync, alone (5 s) and during 5 statuses (8 s)"
      base=$(timeout 60 python3 "$scale_py" worst "$mnt/prod/w" 5)
      timeout 60 python3 "$scale_py" worst "$mnt/prod/w" 8 >"$work/scale-writer.out" &
      w=$!
      bg_pids=("$w")
      sleep 1
      st=()
      for ((i = 0; i < 5; i++)); do
        st+=("$(ms timeout 60 "$bin" status "$mnt")") || fail "scale, $what: clonefs status failed (see scale.err)"
      done
      wait "$w" || fail "scale, $what: the writer during the statuses failed"
      bg_pids=()
      during=$(<"$work/scale-writer.out")
      stmed=$(pyrun median "${st[@]}")
      limit=$(python3 -c "print(f'{2 * max($base, 5):.3f}')")
      say "scale, $what: statuses ${st[*]} ms; writer worst $base ms alone, $during ms during"
      # rows as they are measured, so that a failure further on still shows them
      section "scale: $what (prod and $(commas $((n - 1))) clones)"
      row "${id}st" "clonefs status, ms, median of 5 (those run during the 8 s writer)" "" "" "" "$stmed" "< 50 ms" lt=50
      row "${id}wa" "writer in prod: worst 4 KiB pwrite + fdatasync, 5 s alone, ms" "" "" "" "$base" "" ""
      row "${id}wd" "writer: the same, 8 s, 5 statuses from 1 s in, ms" "" "" "" "$during" \
        "<= 2x max(alone, 5 ms) = $limit ms" "le=$limit"
      timeout 120 "$bin" umount "$mnt" >/dev/null || fail "scale, $what: clonefs umount failed"
      drop_caches
      mounts+=("clonefs $mnt")
      mt=$(ms timeout 300 "$bin" mount "$store" "$mnt" --allow-other --log "$store.log") ||
        fail "scale, $what: the cold mount failed (see scale.err)"
      sleep 1
      rss=$(rss_mib "$store")
      row "${id}mt" "cold mount (clean umount, caches dropped), ms" "" "" "" "$mt" "< 1,000 ms" lt=1000
      row "${id}rss" "daemon RSS 1 s after that mount, MiB" "" "" "" "$rss" "" ""
      timeout 120 "$bin" umount "$mnt" >/dev/null || fail "scale, $what: clonefs umount failed"
      say "scale, $what: fsck"
      if fk=$(ms timeout 600 "$bin" fsck "$store"); then
        row "${id}fk" "clonefs fsck of the unmounted store, ms" "" "" "" "$fk" "< 30,000 ms" lt=30000
      else
        rc=$? # a timeout is a MISS of this row; any other failure, a fault
        ((rc == 124)) || fail "scale, $what: clonefs fsck failed (exit $rc; see scale.err)"
        row "${id}fk" "clonefs fsck of the unmounted store, ms" "" "" "" "" "< 30,000 ms; timed out at 600 s" lt=30000
      fi
      timeout 60 rm -f "$store"
    done
  done
}
if [ "$only" = scale ]; then
  bench_scale
  print_table
  exit 0
fi

# ---- ceph (issue 19): a store on Ceph RADOS beside a local store file, RBD as the peer ---------------------------------
# Runs alone (scripts/bench.sh --ceph [--quick]): its own throwaway cluster (scripts/ceph-up.sh: 1 mon, 3 OSDs on loopback,
# pool clonefs of size 3), stopped by cleanup (scripts/ceph-down.sh) whatever happens. Columns: native = clonefs on a
# local store file in $dir, peer = Ceph's own block device (an RBD image in the same pool, through librbd), clonefs =
# clonefs on the RADOS store; each label ends with the clonefs/rbd ratio where the row has both.
bench_ceph() {
  local conf lstore=$work/ceph-local.clonefs lmnt=$work/ceph-local-mnt cmnt=$work/ceph-mnt t
  local rbd_mode=fio
  ceph_dir=$work/ceph
  ceph_store=rados://clonefs/bench
  export CLONEFS_RUN_DIR=$work/ceph-run # the RADOS store's anchor, lock, socket: in this run's dir, not /run/clonefs
  say "ceph: starting a throwaway cluster in $ceph_dir (scripts/ceph-up.sh)"
  timeout 600 "$root/scripts/ceph-up.sh" "$ceph_dir" >"$work/ceph-up.out" 2>"$work/ceph-up.err" ||
    fail "scripts/ceph-up.sh failed: $(tail -n 5 "$work/ceph-up.err")"
  conf=$(sed -n 's/^CEPH_CONF=//p' "$work/ceph-up.out" | tail -1)
  [ -f "$conf" ] || fail "scripts/ceph-up.sh printed no CEPH_CONF"
  export CEPH_CONF=$conf # for ceph, rbd and fio's rbd engine (librados reads it)
  say "ceph: $(tail -n 1 "$work/ceph-up.err")"
  if ! fio --enghelp 2>/dev/null | grep -qw rbd; then
    rbd_mode=bench
    say "ceph: this fio has no rbd engine; the peer figures come from rbd bench"
  fi
  timeout 60 ceph osd pool application enable clonefs rbd --yes-i-really-mean-it >/dev/null 2>&1 || true
  timeout 120 rbd create clonefs/fio --size "$ceph_fio_size" || fail "rbd create clonefs/fio failed"

  timeout 60 "$bin" mkfs "$lstore" --size 16G >/dev/null
  timeout 120 "$bin" mkfs "$ceph_store" --ceph-conf "$conf" --size 16G >/dev/null || fail "clonefs mkfs $ceph_store failed"
  mount_clonefs "$lstore" "$lmnt"
  mount_ceph() {
    mkdir -p "$cmnt"
    mounts+=("clonefs $cmnt")
    timeout 120 "$bin" mount "$ceph_store" "$cmnt" --ceph-conf "$conf" --allow-other --log "$work/ceph-store.log" >/dev/null ||
      fail "clonefs mount $ceph_store failed"
    grep -q " $cmnt " /proc/mounts || fail "clonefs mount returned but $cmnt is not mounted"
  }
  mount_ceph
  # cold_place PLACE: before a cold read (the clonefs mounts remounted, the page cache dropped)
  cold_place() {
    case "$1" in
      local) cold clonefs "$lmnt" "$lstore" ;;
      ceph) umount_clonefs "$cmnt"; mount_ceph; drop_caches ;;
      rbd) drop_caches ;;
    esac
  }
  timeout 30 mkdir "$lmnt/fio" "$cmnt/fio"
  local cfio=(--name=bench --ioengine=psync --direct=0 --fallocate=none --group_reporting --size="$ceph_fio_size"
    --numjobs=1 --output-format=json)
  local rbdio=(--ioengine=rbd --clientname=admin --pool=clonefs --rbdname=fio)
  say "ceph: laying out $ceph_fio_size for fio on the local store, the Ceph store and the RBD image"
  timeout 1200 fio "${cfio[@]}" --directory="$lmnt/fio" --rw=read --bs=1M --create_only=1 --output="$work/fio.json" 2>>"$work/fio.err"
  timeout 1200 fio "${cfio[@]}" --directory="$cmnt/fio" --rw=read --bs=1M --create_only=1 --output="$work/fio.json" 2>>"$work/fio.err"
  if [ "$rbd_mode" = fio ]; then
    timeout 1200 fio "${cfio[@]}" "${rbdio[@]}" --rw=write --bs=1M --output="$work/fio.json" 2>>"$work/fio.err" ||
      fail "fio on the RBD image failed (see fio.err)"
  else
    timeout 1200 rbd bench --io-type write --io-size 1M --io-threads 1 --io-pattern seq --io-total "$ceph_fio_size" \
      clonefs/fio >"$work/rbd-bench.out" 2>&1 || fail "rbd bench failed: $(tail -n 3 "$work/rbd-bench.out")"
  fi

  section "ceph (issue 19): a throwaway cluster on loopback (scripts/ceph-up.sh: 1 mon, 3 OSDs on files in $dir, pool clonefs of size 3); fio psync, buffered, a $ceph_fio_size file, ${ceph_rt} s runs, 1 job; native = clonefs on a local store file in $dir, peer = rbd: fio's rbd engine on an RBD image in the same pool (iodepth 1; its sync is a flush: --fsync), clonefs = clonefs on rados://clonefs/bench; reads after a remount and a dropped page cache"
  local cturn=0
  # ceph_fio ID LABEL KIND(read|write) FIELD(mib|iops) SYNC(0|1) RBD-BENCH-ARGS FIO-ARGS...: one row, the places in turn first
  ceph_fio() {
    local id=$1 label=$2 kind=$3 field=$4 sync=$5 rbdb=$6 t mib iops out r peer=rbd
    shift 6
    local -A got=()
    local places=(local rbd ceph local rbd ceph) args
    places=("${places[@]:$((cturn++ % 3)):3}")
    for t in "${places[@]}"; do
      if [ "$kind" = read ]; then cold_place "$t"; else timeout 300 sync; fi
      say "$label on $t"
      if [ "$t" = rbd ] && [ "$rbd_mode" = bench ]; then
        # shellcheck disable=SC2086 # the rbd bench options are space-separated words
        timeout $((ceph_rt * 10 + 300)) rbd bench $rbdb --io-threads 1 --io-total "$ceph_fio_size" clonefs/fio \
          >"$work/rbd-bench.out" 2>&1 || fail "rbd bench failed: $(tail -n 3 "$work/rbd-bench.out")"
        # its last line: elapsed: S ops: N ops/sec: X bytes/sec: ...; the MiB/s rows do 1 MiB operations
        got[$t]=$(awk '/^ *elapsed:/ { x = $6 } END { print x }' "$work/rbd-bench.out")
        continue
      fi
      case "$t" in
        local) args=(--directory="$lmnt/fio") ;;
        ceph) args=(--directory="$cmnt/fio") ;;
        rbd) args=("${rbdio[@]}") ;;
      esac
      if ((sync)); then
        if [ "$t" = rbd ]; then args+=(--fsync=1); else args+=(--fdatasync=1); fi
      fi
      timeout $((ceph_rt * 10 + 300)) fio "${cfio[@]}" "${args[@]}" "$@" --output="$work/fio.json" 2>>"$work/fio.err" ||
        fail "fio ($label) on $t failed (see fio.err)"
      out=$(pyrun fio "$work/fio.json" "$kind")
      read -r mib iops <<<"$out"
      if [ "$field" = mib ]; then got[$t]=$mib; else got[$t]=$iops; fi
    done
    r=$(python3 -c "print(f'{${got[ceph]} / max(${got[rbd]}, 1e-9):.2f}x')")
    [ "$rbd_mode" = bench ] && peer="rbd bench"
    row "$id" "$label (clonefs/$peer $r)" "${got[local]}" "$peer" "${got[rbd]}" "${got[ceph]}" "" ""
  }
  local tbc=(--time_based --runtime="$ceph_rt")
  ceph_fio crs "ceph: fio rand write 4 KiB + fdatasync (rbd: a flush), 1 job, IOPS" write iops 1 \
    "--io-type write --io-size 4K --io-pattern rand" --rw=randwrite --bs=4k "${tbc[@]}"
  ceph_fio csw "ceph: fio seq write 1 MiB, 1 job, MiB/s" write mib 0 \
    "--io-type write --io-size 1M --io-pattern seq" --rw=write --bs=1M "${tbc[@]}"
  # one pass over the file (capped at the run time), from the OSDs, not from a cache of the client's
  ceph_fio csr "ceph: fio seq read 1 MiB, 1 job, MiB/s" read mib 0 \
    "--io-type read --io-size 1M --io-pattern seq" --rw=read --bs=1M --runtime="$ceph_rt"
  timeout 120 rm -rf "$lmnt/fio" "$cmnt/fio"
  timeout 120 rbd rm clonefs/fio >/dev/null 2>&1 || say "ceph: rbd rm clonefs/fio failed (the cluster goes anyway)"

  say "ceph: pgbench scale $ceph_pg_scale, 4 clients, $ceph_pg_secs s, on the local store and on the Ceph store"
  sock=$work/sock
  mkdir -p "$sock"
  chown postgres: "$sock"
  port=$(pyrun port 55480)
  local src=$work/ceph-pg-src
  pg_seed ceph "$src" "$ceph_pg_scale"
  local -A ctps=() pgmnt=([local]=$lmnt [ceph]=$cmnt)
  for t in local ceph; do
    timeout 30 mkdir "${pgmnt[$t]}/pg"
    timeout 900 cp -a "$src" "${pgmnt[$t]}/pg/data"
  done
  timeout 600 rm -rf "$src"
  for t in local ceph; do
    cold_place "$t"
    start_server "ceph-$t" "${pgmnt[$t]}/pg/data" "$port"
    say "ceph: pgbench -c 4 -j 2 -T $ceph_pg_secs on the $t store"
    timeout $((ceph_pg_secs + 300)) pgbench -c 4 -j 2 -T "$ceph_pg_secs" -h 127.0.0.1 -p "$port" -U postgres postgres \
      >"$work/ceph-pgbench-$t.log" 2>&1 || fail "pgbench on the $t store failed: $(tail -n 5 "$work/ceph-pgbench-$t.log")"
    ctps[$t]=$(awk '/^tps/ { print $3; exit }' "$work/ceph-pgbench-$t.log")
    stop_started
    say "ceph: pgbench on the $t store: ${ctps[$t]} tps"
  done
  section "ceph: pgbench (PostgreSQL $(basename "$(dirname "$pgbin")"), scale $ceph_pg_scale, 4 clients, $ceph_pg_secs s, the server started after a remount); native = the data directory on the local store, clonefs = on the Ceph store (a copy of the same files); no peer"
  row cpg "ceph: pgbench -c 4 -j 2, tps" "${ctps[local]}" "" "" "${ctps[ceph]}" "" ""
  timeout 600 rm -rf "$lmnt/pg" "$cmnt/pg"

  say "ceph: clones of ${ceph_clone_sizes[*]} MiB clusters, 11 each, on both stores"
  section "ceph: clone time, os.mkdir of CLUSTER/.clone/NAME timed in-process (the data synced before each), median of 11; native = the local store, clonefs = the Ceph store"
  PYTIMEOUT=1800 pyrun ceph_clones "$lmnt" "$cmnt" "${ceph_clone_sizes[@]}"
  umount_clonefs "$cmnt"
  umount_clonefs "$lmnt"
  [ -z "$(ceph_daemons)" ] || fail "the daemon of $ceph_store is still up after its umount"
  say "ceph: stopping the cluster (scripts/ceph-down.sh)"
  timeout 120 "$root/scripts/ceph-down.sh" "$ceph_dir" || fail "scripts/ceph-down.sh $ceph_dir failed"
  ceph_dir=
  timeout 600 rm -f "$lstore"
}
if ((ceph)); then
  bench_ceph
  print_table
  exit 0
fi

# ---- 1. fio: native directory, bindfs of it, clonefs cluster -------------------------------
say "fio: ${fio_size} per job, ${fio_rt} s per run, on a native dir, a bindfs of another and a clonefs cluster"
native=$work/native
bsrc=$work/bindfs-src # bindfs gets its own native files: reading the native side's would find them freshly cached below the VM
mkdir -p "$native/fio" "$bsrc/fio"
bmnt=$work/bindfs-mnt
mkdir -p "$bmnt"
mounts+=("bindfs $bmnt")
timeout 60 bindfs --multithreaded "$bsrc" "$bmnt"
grep -q " $bmnt " /proc/mounts || fail "bindfs returned but $bmnt is not mounted"
fstore=$work/fio.clonefs
fmnt=$work/fio-mnt
timeout 60 "$bin" mkfs "$fstore" --size 64G >/dev/null
mount_clonefs "$fstore" "$fmnt"
timeout 30 mkdir "$fmnt/fio"
declare -A fdir=([native]=$native/fio [bindfs]=$bmnt/fio [clonefs]=$fmnt/fio)
fio_common=(--name=bench --ioengine=psync --direct=0 --fallocate=none --group_reporting --size="$fio_size" --output-format=json)
# Lay out four files per place (one per job; numjobs 1 uses the first); bindfs's directly below it.
for d in "$native/fio" "$bsrc/fio" "$fmnt/fio"; do
  say "fio: laying out 4 x $fio_size in $d"
  timeout 1200 fio "${fio_common[@]}" --directory="$d" --rw=read --bs=1M --numjobs=4 --create_only=1 \
    --output="$work/fio.json" 2>>"$work/fio.err"
done
section "fio (psync, buffered, ${fio_size} file per job, ${fio_rt} s runs, reads from a dropped page cache); native = a directory in $dir, peer = bindfs --multithreaded of another, clonefs = a cluster on a store there"
fio_places=(native bindfs clonefs) # what fio_job measures
declare -A bindfs_fig=()           # each row's bindfs figure, for the rows that do not measure it again
# fio_job ID LABEL KIND(read|write) FIELD(mib|iops) TARGET SPEC FIO-ARGS...
fio_job() {
  local id=$1 label=$2 kind=$3 field=$4 target=$5 spec=$6 t mib iops out n=${#fio_places[@]}
  shift 6
  declare -A got=()
  # the places take turns going first, so that none always follows the same one
  local targets=("${fio_places[@]}" "${fio_places[@]}")
  targets=("${targets[@]:$((fio_turn++ % n)):n}")
  for t in "${targets[@]}"; do
    if [ "$kind" = read ]; then cold "$t" "$fmnt" "$fstore"; else timeout 300 sync; fi
    say "fio: $label on $t"
    timeout $((fio_rt * 10 + 300)) fio "${fio_common[@]}" --directory="${fdir[$t]}" "$@" \
      --output="$work/fio.json" 2>>"$work/fio.err"
    out=$(pyrun fio "$work/fio.json" "$kind")
    read -r mib iops <<<"$out"
    if [ "$field" = mib ]; then got[$t]=$mib; else got[$t]=$iops; fi
  done
  local base=${id#wb}
  base=${base#dev}
  bindfs_fig[$id]=${got[bindfs]:-${bindfs_fig[$base]:-}}
  row "$id" "$label" "${got[native]}" bindfs "${bindfs_fig[$id]}" "${got[clonefs]}" "$target" "$spec"
}
tb=(--time_based --runtime="$fio_rt")
# write_rows PREFIX NJ: the write rows with NJ jobs, their ids and labels prefixed
write_rows() {
  local p=$1 nj=$2 jobs="$2 job$([ "$2" = 1 ] || echo s)" l=${1:+$1: }
  fio_job "${p}sw$nj" "${l}fio seq write 1 MiB, $jobs, MiB/s" write mib ">= 0.8x native" ratio_ge=0.8 \
    --rw=write --bs=1M --numjobs="$nj" "${tb[@]}"
  fio_job "${p}rw$nj" "${l}fio rand write 4 KiB, $jobs, IOPS" write iops ">= bindfs" ge_peer=1 \
    --rw=randwrite --bs=4k --numjobs="$nj" "${tb[@]}"
  fio_job "${p}rs$nj" "${l}fio rand write 4 KiB + fdatasync, $jobs, IOPS" write iops ">= 0.7x native" ratio_ge=0.7 \
    --rw=randwrite --bs=4k --fdatasync=1 --numjobs="$nj" "${tb[@]}"
}
fio_turn=0
for nj in 1 4; do
  jobs="$nj job$([ "$nj" = 1 ] || echo s)"
  write_rows "" "$nj"
  # one pass over each file (capped at the run time), so the reads come from the disk, not from a wrapped-around cache
  fio_job "sr$nj" "fio seq read 1 MiB, $jobs, MiB/s" read mib ">= 0.8x native" ratio_ge=0.8 \
    --rw=read --bs=1M --numjobs="$nj" --runtime="$fio_rt"
  fio_job "rr$nj" "fio rand read 4 KiB, $jobs, IOPS" read iops ">= bindfs" ge_peer=1 \
    --rw=randread --bs=4k --numjobs="$nj" "${tb[@]}"
done
timeout 60 fusermount3 -u "$bmnt"
# The writes again with the kernel's writeback cache (an option of the mount, off by default).
umount_clonefs "$fmnt"
mount_clonefs "$fstore" "$fmnt" --writeback-cache
section "fio writes again, clonefs remounted with --writeback-cache (the kernel caches writes; a clone has open files written back first); bindfs: its figure above"
fio_places=(native clonefs)
for nj in 1 4; do write_rows wb "$nj"; done
umount_clonefs "$fmnt"
# And over the previous default transport: /dev/fuse alone, as before FUSE over io_uring.
mount_clonefs "$fstore" "$fmnt" --no-io-uring
section "fio writes again, clonefs remounted with --no-io-uring (requests through /dev/fuse alone, the previous default); bindfs: its figure above"
for nj in 1 4; do write_rows dev "$nj"; done
umount_clonefs "$fmnt"
timeout 600 rm -rf "$native/fio" "$bsrc" "$fstore"

# ---- 2. pgbench: data directory native vs on a clonefs cluster --------------------------------
say "pgbench: scale $pg_scale, 4 clients, $pg_secs s, native vs clonefs"
sock=$work/sock
mkdir -p "$sock"
chown postgres: "$sock"
port=$(pyrun port 55480)
pgn=$work/pg-native
say "initdb and pgbench -i -s $pg_scale (native; the clonefs side gets a copy of the same files)"
pg_seed native "$pgn" "$pg_scale"
pstore=$work/pg.clonefs
pmnt=$work/pg-mnt
timeout 60 "$bin" mkfs "$pstore" --size 16G >/dev/null
mount_clonefs "$pstore" "$pmnt"
timeout 30 mkdir "$pmnt/pg"
timeout 600 cp -a "$pgn" "$pmnt/pg/data"
declare -A tps=()
# clonefs twice: over io_uring (the default), and through /dev/fuse alone (--no-io-uring, the previous default)
for t in native clonefs dev; do
  if [ "$t" = native ]; then data=$pgn; else data=$pmnt/pg/data; fi
  if [ "$t" = dev ]; then cold clonefs "$pmnt" "$pstore" --no-io-uring; else cold "$t" "$pmnt" "$pstore"; fi
  start_server "$t" "$data" "$port"
  say "pgbench -c 4 -j 2 -T $pg_secs on $t"
  timeout $((pg_secs + 300)) pgbench -c 4 -j 2 -T "$pg_secs" -h 127.0.0.1 -p "$port" -U postgres postgres \
    >"$work/pgbench-$t.log" 2>&1 || fail "pgbench on $t failed: $(tail -n 5 "$work/pgbench-$t.log")"
  tps[$t]=$(awk '/^tps/ { print $3; exit }' "$work/pgbench-$t.log")
  stop_started
done
section "pgbench (PostgreSQL $(basename "$(dirname "$pgbin")"), scale $pg_scale, 4 clients, $pg_secs s); native = data directory in $dir, clonefs = on a cluster (a copy of the same files)"
row pg "pgbench -c 4 -j 2, tps" "${tps[native]}" "" "" "${tps[clonefs]}" ">= 0.7x native" ratio_ge=0.7
row pgdev "pgbench -c 4 -j 2, tps, --no-io-uring (previous default)" "${tps[native]}" "" "" "${tps[dev]}" "" ""
umount_clonefs "$pmnt"
timeout 600 rm -rf "$pgn" "$pstore"

# ---- 3. clone time against size, space around a clone, the many-th clone ---------------------------
say "clones: ${clone_sizes[*]} MiB clusters, 11 clones each, then clone #$many of the first"
cstore=$work/clone.clonefs
cmnt=$work/clone-mnt
timeout 60 "$bin" mkfs "$cstore" --size 64G >/dev/null
mount_clonefs "$cstore" "$cmnt"
mkdir -p "$native/mkdir"
PYTIMEOUT=1800 pyrun clones "$cmnt" "$native/mkdir" "$many" "${clone_sizes[@]}"
umount_clonefs "$cmnt"
timeout 600 rm -rf "$cstore" "$native/mkdir"

# ---- 4. lineage: reads through clone depth, beside a qcow2 backing chain --------------------------
maxd=${depths[-1]}
say "lineage: $lin_mib MiB file through clone depths ${depths[*]} and a qcow2 chain as deep"
lstore=$work/lineage.clonefs
lmnt=$work/lineage-mnt
timeout 60 "$bin" mkfs "$lstore" --size 16G >/dev/null
mount_clonefs "$lstore" "$lmnt"
pyrun lineage "$lmnt" "$lin_mib" "$maxd"
qdir=$work/qcow2
mkdir -p "$qdir"
nfile=$native/lineage.dat
timeout 300 head -c "${lin_mib}M" /dev/urandom >"$nfile"
timeout 300 qemu-img convert -f raw -O qcow2 "$nfile" "$qdir/L0.qcow2"
# Each overlay rewrites one 4 KiB page too. The write runs with the backing file detached, so no
# layer opens the whole chain below it (the rest of that 64 KiB qcow2 cluster reads as zeros).
for ((i = 1; i <= maxd; i++)); do
  timeout 60 qemu-img create -q -f qcow2 -u -b "L$((i - 1)).qcow2" -F qcow2 "$qdir/L$i.qcow2" "${lin_mib}M"
  timeout 60 qemu-io -c "write -q -P $((i % 255 + 1)) $(((i * 7919 % (lin_mib * 256)) * 4096)) 4k" \
    "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$qdir/L$i.qcow2\"},\"backing\":null}" >/dev/null
done
[ "$(timeout 120 qemu-img info --backing-chain "$qdir/L$maxd.qcow2" | grep -c '^image:')" = $((maxd + 1)) ] ||
  fail "the qcow2 chain is not $maxd overlays deep"
declare -A lr=() qr=()
nr=()
for rep in 1 2 3; do
  drop_caches
  nr+=("$(pyrun readrate "$nfile")")
  for d in "${depths[@]}"; do
    cold clonefs "$lmnt" "$lstore"
    lr[$d]+=" $(pyrun readrate "$lmnt/l$d/data")"
    drop_caches
    qr[$d]+=" $(timeout 600 qemu-io -f qcow2 -r -c "read 0 ${lin_mib}M" "$qdir/L$d.qcow2" | pyrun qemurate)"
  done
done
section "lineage: read a $lin_mib MiB file, page cache dropped, MiB/s, median of 3; native = the file in $dir, peer = qemu-io read through a qcow2 chain as deep"
nmed=$(pyrun median "${nr[@]}")
for d in "${depths[@]}"; do
  target="" spec=""
  [ "$d" = "$maxd" ] && target="within 10% of depth ${depths[0]}" spec="ge_row=lin${depths[0]}*0.9"
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  row "lin$d" "read at clone depth $d" "$nmed" qcow2 "$(pyrun median ${qr[$d]})" \
    "$(pyrun median ${lr[$d]})" "$target" "$spec"
done
umount_clonefs "$lmnt"
timeout 600 rm -rf "$lstore" "$qdir" "$nfile"

# ---- 5. file tools: a doc tree through tar, find, du, grep, cp -a, rm; big files through cp, dd, head ------
# The tree of issue 18: the toolchain's core docs. Each place gets a fresh copy; reads start cold (the
# clonefs mount remounted, as in `cold`). Requests per file come from the kernel's FUSE tracepoint.
ft_src=$(rustc --print sysroot 2>/dev/null)/share/doc/rust/html
if [ ! -d "$ft_src/core" ]; then
  say "file tools: skipped, no $ft_src/core (rustup's rust-docs component)"
else
  say "file tools: the core docs tree on a native dir, a bindfs of another and a clonefs cluster"
  ft_tar=$work/ft-tree.tar
  timeout 300 tar cf "$ft_tar" -C "$ft_src" "${ft_exclude[@]}" core
  ft_files=$(tar tf "$ft_tar" | wc -l)
  ftstore=$work/ft.clonefs
  ftmnt=$work/ft-mnt
  ftbsrc=$work/ft-bindfs-src
  ftbmnt=$work/ft-bindfs-mnt
  mkdir -p "$work/ft-native" "$ftbsrc" "$ftbmnt"
  mounts+=("bindfs $ftbmnt")
  timeout 60 bindfs --multithreaded "$ftbsrc" "$ftbmnt"
  grep -q " $ftbmnt " /proc/mounts || fail "bindfs returned but $ftbmnt is not mounted"
  timeout 60 "$bin" mkfs "$ftstore" --size 64G >/dev/null
  mount_clonefs "$ftstore" "$ftmnt"
  timeout 30 mkdir "$ftmnt/c"
  # dev: clonefs through /dev/fuse alone (--no-io-uring), the transport before FUSE over io_uring
  ftdstore=$work/ft-dev.clonefs
  ftdmnt=$work/ft-dev-mnt
  timeout 60 "$bin" mkfs "$ftdstore" --size 64G >/dev/null
  mount_clonefs "$ftdstore" "$ftdmnt" --no-io-uring
  timeout 30 mkdir "$ftdmnt/c"
  declare -A ftdir=([native]=$work/ft-native [bindfs]=$ftbmnt [clonefs]=$ftmnt/c [dev]=$ftdmnt/c)
  declare -A ftmount=([bindfs]=$ftbmnt [clonefs]=$ftmnt [dev]=$ftdmnt)
  ft_perf=0
  command -v perf >/dev/null && timeout 30 perf stat -e fuse:fuse_request_send -- true >/dev/null 2>&1 && ft_perf=1
  # ft_time PLACE CMD...: runs CMD with sh -c; sets ft_ms to its milliseconds and ft_req to the FUSE
  # requests it sent to PLACE's mount (if perf can count them)
  ft_time() {
    local place=$1 s e minor
    shift
    ft_req=
    s=$(date +%s%N)
    if ((ft_perf)) && [ -n "${ftmount[$place]:-}" ]; then
      minor=$(awk -v m="${ftmount[$place]}" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -1)
      timeout 1800 perf stat -x, -o "$work/ft-perf.txt" -e fuse:fuse_request_send --filter "connection == $minor" -a \
        -- sh -c "$*" >/dev/null 2>>"$work/ft.err" || fail "file tools: '$*' on $place failed"
      ft_req=$(awk -F, '/fuse_request_send/ { print $1 }' "$work/ft-perf.txt")
    else
      timeout 1800 sh -c "$*" >/dev/null 2>>"$work/ft.err" || fail "file tools: '$*' on $place failed"
    fi
    e=$(date +%s%N)
    ft_ms=$(((e - s) / 1000000))
  }
  ft_cold() {
    case $1 in
      clonefs) cold clonefs "$ftmnt" "$ftstore" ;;
      dev) cold clonefs "$ftdmnt" "$ftdstore" --no-io-uring ;;
      *) drop_caches ;;
    esac
  }
  declare -A ft=()
  for t in native bindfs clonefs dev; do
    d=${ftdir[$t]}
    say "file tools: tree on $t"
    drop_caches
    ft_time "$t" "tar xf '$ft_tar' -C '$d'; sync"
    ft[x_$t]=$ft_ms ft[xreq_$t]=$ft_req
    ft_cold "$t"
    ft_time "$t" "find '$d' -name zzqq_none"
    ft[find_$t]=$ft_ms
    ft_cold "$t"
    ft_time "$t" "du -s '$d'"
    ft[du_$t]=$ft_ms
    ft_cold "$t"
    ft_time "$t" "grep -r -l zzqq_none '$d'; true"
    ft[grep_$t]=$ft_ms ft[greq_$t]=$ft_req
    ft_cold "$t"
    ft_time "$t" "tar cf - -C '$d' core | cat >/dev/null"
    ft[tarc_$t]=$ft_ms
    ft_time "$t" "cp -a '$d/core' '$d/core2'; sync"
    ft[cpa_$t]=$ft_ms
    ft_time "$t" "rm -rf '$d/core' '$d/core2'; sync"
    ft[rm_$t]=$ft_ms
    [ "$t" = bindfs ] && continue
    # the extract again with tar held to one CPU: what the round trips cost when no wake crosses CPUs
    drop_caches
    ft_time "$t" "taskset -c 0 tar xf '$ft_tar' -C '$d'; sync"
    ft[x1_$t]=$ft_ms
    ft_time "$t" "rm -rf '$d/core'; sync"
  done
  # this machine's floor under every row: a round trip between two processes through a pipe (perf bench sched pipe),
  # on one CPU and free to cross CPUs, in microseconds
  pipe_us() { { timeout 120 "$@" perf bench sched pipe -l 50000 2>/dev/null || true; } | awk '/usecs\/op/ { printf "%.1f", $1 }'; }
  ft_rt1=$(pipe_us taskset -c 0) ft_rt2=$(pipe_us env)
  timeout 60 fusermount3 -u "$ftbmnt"
  big=$work/ft-big
  timeout 600 head -c "$ft_big" /dev/urandom >"$big"
  big_mib=$(($(stat -c %s "$big") >> 20))
  mibs() { python3 -c "print(f'{$big_mib / max($1, 1) * 1000:.0f}')"; }
  for t in native clonefs dev; do
    d=${ftdir[$t]}
    say "file tools: $ft_big files on $t"
    drop_caches
    ft_time "$t" "cp '$big' '$d/big'; sync"
    ft[cp_$t]=$(mibs "$ft_ms")
    ft_time "$t" "dd if='$big' of='$d/dd' bs=1M conv=fdatasync status=none"
    ft[dd_$t]=$(mibs "$ft_ms")
    ft_time "$t" "head -c $ft_big /dev/zero >'$d/head'; sync"
    ft[head_$t]=$(mibs "$ft_ms")
    timeout 300 rm -f "$d/big" "$d/dd" "$d/head"
  done
  section "file tools (issue 18): a tree of $ft_files files (the toolchain's core docs), ms; native = a directory in $dir, peer = bindfs --multithreaded of another, clonefs = a cluster; reads from a dropped page cache; a process round trip through a pipe here takes ${ft_rt1:-?} us on one CPU, ${ft_rt2:-?} us free to cross CPUs"
  ft_row() { # ID LABEL KEY TARGET SPEC [PEER]: the row (beside PEER's figure), then the same through /dev/fuse alone
    local peer=${6:-} pv=
    [ -n "$peer" ] && pv=${ft[${3}_$peer]}
    row "$1" "$2" "${ft[${3}_native]}" "$peer" "$pv" "${ft[${3}_clonefs]}" "$4" "$5"
    row "${1}dev" "  the same, --no-io-uring (previous default)" "${ft[${3}_native]}" "$peer" "$pv" "${ft[${3}_dev]}" "" ""
  }
  ft_row ftx "tar x + sync, ms" x "<= 2.5x native" ratio_le=2.5 bindfs
  ft_row ftx1 "  tar x + sync, tar held to one CPU (taskset -c 0), ms" x1 "" ""
  ft_row ftfind "find, ms" find "" "" bindfs
  ft_row ftdu "du -s, ms" du "<= 2x native" ratio_le=2 bindfs
  ft_row ftgrep "grep -r, ms" grep "<= 1.3x native" ratio_le=1.3 bindfs
  ft_row fttarc "tar c, ms" tarc "" "" bindfs
  ft_row ftcpa "cp -a on the same mount + sync, ms" cpa "" "" bindfs
  ft_row ftrm "rm -rf + sync, ms" rm "" "" bindfs
  if ((ft_perf)); then
    per() { [ -n "$1" ] && python3 -c "print(f'{$1 / $ft_files:.2f}')"; }
    row ftxreq "tar x: FUSE requests per file" "" bindfs "$(per "${ft[xreq_bindfs]}")" "$(per "${ft[xreq_clonefs]}")" "" ""
    row ftgreq "grep -r: FUSE requests per file" "" bindfs "$(per "${ft[greq_bindfs]}")" "$(per "${ft[greq_clonefs]}")" "" ""
    row ftxreqdev "  tar x, --no-io-uring: FUSE requests per file" "" bindfs "$(per "${ft[xreq_bindfs]}")" "$(per "${ft[xreq_dev]}")" "" ""
  fi
  section "file tools: one $ft_big file, MiB/s; native = a directory in $dir, clonefs = a cluster"
  ft_row ftcp "cp (from $dir) + sync, MiB/s" cp ">= 0.9x native" ratio_ge=0.9
  ft_row ftdd "dd bs=1M conv=fdatasync, MiB/s" dd ">= 0.9x native" ratio_ge=0.9
  ft_row fthead "head -c (8 KiB writes) + sync, MiB/s" head ">= 0.8x native" ratio_ge=0.8
  umount_clonefs "$ftmnt"
  umount_clonefs "$ftdmnt"
  timeout 600 rm -rf "$work/ft-native" "$ftbsrc" "$ftstore" "$ftdstore" "$big" "$ft_tar"
fi

# ---- 6. engine (in-process, no mount) -------------------------------------------------------------
say "engine benchmark (examples/engine_bench.rs)"
eng_args=()
((quick)) && eng_args=(--quick)
timeout 1200 target/release/examples/engine_bench "${eng_args[@]}" "$work" >"$work/engine.out"
section "engine (in-process, no mount: no native counterpart)"
pyrun engine "$work/engine.out"

# ---- 6. restore points: what keeping them costs, and restore time (pitr) ---------------------------
# A section of its own (bench_pitr and pitr.py, which imports bench.py's helpers): fio and pgbench with restore points on
# (the default) against off (retention 0), alternating, and restore-to-point-in-time timed in-process over STORE.sock.
pitr_py=$work/pitr.py
cat >"$pitr_py" <<'PYEOF'
import http.client, json, os, socket, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # row(), write_file(), settle(), MIB

class UnixHTTP(http.client.HTTPConnection):
    """HTTP over the store's unix socket (the API's only listener)."""
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)

def api(sock, method, path, body=None):
    c = UnixHTTP(sock)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    if r.status >= 300:
        sys.exit(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data) if data else None

def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

def cmd_restore_times(mnt, sock, n, *sizes):
    """Per size: a cluster holding that much, its restore point taken, then n restores to a time after that point,
    each timed from connect to reply (the reply comes once the new cluster is durable)."""
    n = int(n)
    sizes = [int(s) for s in sizes]
    for s in sizes:
        src = f"pitr{s}"
        os.mkdir(os.path.join(mnt, src))
        data = os.path.join(mnt, src, "data")
        t = time.perf_counter()
        bench.write_file(data, s)
        bench.settle(data)
        print(f"wrote {s} MiB into cluster {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        time.sleep(3)  # the commit timer takes the point holding all of it (points: at most one a second)
        at = rfc3339(time.time())
        times, images = [], set()
        for k in range(n):
            t = time.perf_counter()
            made = api(sock, "POST", f"/api/v1/clusters/{src}/clones", {"name": f"{src}r{k}", "restore_to_time": at})
            times.append((time.perf_counter() - t) * 1e3)
            images.add(made["image_time"])
        logical = api(sock, "GET", f"/api/v1/clusters/{src}r0")["logical"]
        if len(images) != 1 or logical < s * bench.MIB:
            sys.exit(f"restores of {src} to {at}: restore points {sorted(images)}, {logical} bytes (want one, >= {s} MiB)")
        print(f"restored {src} {n} times to {at}: its restore point at {images.pop()}; ms: "
              + " ".join(f"{x:.2f}" for x in times), file=sys.stderr)
        # The same restore through the mount: durable at the next commit, so no sync in it.
        mk = [bench.timed_mkdir(os.path.join(mnt, src, ".clone", f"{src}m{k}@{at}")) for k in range(n)]
        if not all(os.path.isdir(os.path.join(mnt, f"{src}m{k}")) for k in range(n)):
            sys.exit(f"a mkdir {src}/.clone/NAME@{at} returned but made no cluster NAME")
        for rid, what, xs in (("api", "API, durable", times), ("mkdir", "mkdir .clone/NAME@TIME", mk)):
            target, spec = "< 10 ms", "lt=10"
            if s != sizes[0]:
                target += f"; <= 2x the {sizes[0]} MiB one"
                spec += f"&le_row=pitr_{rid}{sizes[0]}*2"
            bench.row("R", f"pitr_{rid}{s}", f"restore of a {s:,} MiB cluster ({what}), ms, median of {n}",
                      "", "", "", f"{statistics.median(xs):.6f}", target, spec)

if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
PYEOF

# bench_pitr: the section's rows. The "native" column holds the figure with restore points off, the clonefs column
# the figure with them on (clonefs/nat = on/off); runs alternate which goes first, and each figure is their median.
bench_pitr() {
  local rt=$((fio_rt < 3 ? 3 : fio_rt)) reps=$((quick ? 2 : 3)) pg_reps=$((quick ? 1 : 2)) secs=$((quick ? 10 : 15))
  local k m order iops
  local -A pm=([on]=$work/pitr-on-mnt [off]=$work/pitr-off-mnt) ps=([on]=$work/pitr-on.clonefs [off]=$work/pitr-off.clonefs)
  local -A fig=()
  say "restore points: fio rand write 4 KiB + fdatasync, ${rt} s runs, $reps each on two stores: default and --retention 0"
  timeout 60 "$bin" mkfs "${ps[on]}" --size 64G >/dev/null
  timeout 60 "$bin" mkfs "${ps[off]}" --size 64G --retention 0 >/dev/null
  for m in on off; do
    mount_clonefs "${ps[$m]}" "${pm[$m]}"
    timeout 30 mkdir "${pm[$m]}/fio"
    timeout 1200 fio "${fio_common[@]}" --directory="${pm[$m]}/fio" --rw=read --bs=1M --numjobs=1 --create_only=1 \
      --output="$work/fio.json" 2>>"$work/fio.err"
  done
  for ((k = 0; k < reps; k++)); do
    order="off on"
    ((k % 2)) && order="on off"
    for m in $order; do
      timeout 300 sync
      timeout $((rt * 10 + 300)) fio "${fio_common[@]}" --directory="${pm[$m]}/fio" --rw=randwrite --bs=4k --fdatasync=1 \
        --numjobs=1 --time_based --runtime="$rt" --output="$work/fio.json" 2>>"$work/fio.err"
      read -r _ iops <<<"$(pyrun fio "$work/fio.json" write)"
      fig[fio_$m]+=" $iops"
      say "restore points $m: $iops IOPS"
    done
  done
  timeout 30 "$bin" restorable --cluster fio "${pm[on]}" >&2
  for m in on off; do umount_clonefs "${pm[$m]}"; done
  timeout 600 rm -rf "${ps[on]}" "${ps[off]}"

  say "restore points: pgbench -c 4 -j 2, ${secs} s runs, $pg_reps each on cluster pgon (default) and pgoff (modify --retention 0)"
  local src=$work/pitr-pg-src store=$work/pitr-pg.clonefs mnt=$work/pitr-pg-mnt
  pg_seed pitr "$src" "$pg_scale"
  timeout 60 "$bin" mkfs "$store" --size 16G >/dev/null
  mount_clonefs "$store" "$mnt"
  for m in on off; do
    timeout 30 mkdir "$mnt/pg$m"
    timeout 600 cp -a "$src" "$mnt/pg$m/data"
  done
  timeout 30 "$bin" modify --cluster pgoff --retention 0 "$mnt" >&2
  timeout 600 rm -rf "$src"
  for ((k = 0; k < pg_reps; k++)); do
    order="off on"
    ((k % 2)) && order="on off"
    for m in $order; do
      cold clonefs "$mnt" "$store"
      start_server "pitr-$m" "$mnt/pg$m/data" "$port"
      timeout $((secs + 300)) pgbench -c 4 -j 2 -T "$secs" -h 127.0.0.1 -p "$port" -U postgres postgres \
        >"$work/pitr-pgbench-$m.log" 2>&1 || fail "pgbench with restore points $m failed: $(tail -n 5 "$work/pitr-pgbench-$m.log")"
      fig[pg_$m]+=" $(awk '/^tps/ { print $3; exit }' "$work/pitr-pgbench-$m.log")"
      stop_started
      say "restore points $m: pgbench $(awk '/^tps/ { print $3; exit }' "$work/pitr-pgbench-$m.log") tps"
    done
  done
  timeout 30 "$bin" restorable --cluster pgon "$mnt" >&2
  umount_clonefs "$mnt"
  timeout 600 rm -rf "$store"

  say "restore time: clusters of 64 and 1,024 MiB, 11 restores each through the API"
  local rstore=$work/pitr-rt.clonefs rmnt=$work/pitr-rt-mnt
  timeout 60 "$bin" mkfs "$rstore" --size 16G >/dev/null
  mount_clonefs "$rstore" "$rmnt"
  section "restore points, on (the default) against off (retention 0): native = off, clonefs = on, clonefs/nat = on/off; fio ${rt} s runs (median of $reps), pgbench scale $pg_scale ${secs} s runs (median of $pg_reps), alternating"
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  row pitr_fio "fio rand write 4 KiB + fdatasync, 1 job, IOPS" "$(pyrun median ${fig[fio_off]})" "" "" \
    "$(pyrun median ${fig[fio_on]})" "on within 10% of off" ratio_ge=0.9
  # shellcheck disable=SC2086
  row pitr_pg "pgbench -c 4 -j 2, tps" "$(pyrun median ${fig[pg_off]})" "" "" \
    "$(pyrun median ${fig[pg_on]})" "on within 10% of off" ratio_ge=0.9
  section "restore to a point in time, timed in-process: POST /api/v1/clusters/SRC/clones with restore_to_time over STORE.sock, from connect to the reply (the new cluster durable: a commit, two syncs of the store); os.mkdir of SRC/.clone/NAME@TIME (durable at the next commit)"
  timeout 1800 python3 "$pitr_py" restore_times "$rmnt" "$rstore.sock" 11 64 1024
  umount_clonefs "$rmnt"
  timeout 600 rm -rf "$rstore"
}
bench_pitr
# ---- end of section 6 (pitr) --------------------------------------------------------------------------

bench_scale # section 7, defined above section 1

print_table
