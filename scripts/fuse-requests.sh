#!/usr/bin/env bash
# FUSE requests per opcode (perf tracepoint fuse:fuse_request_send, this mount's
# connection only) for a tar extract onto a fresh store and a cold grep -r of it.
# usage: scripts/fuse-requests.sh [--stacks] [BINARY [TARBALL]]   (as root)
# --stacks also groups the extract's requests by the kernel path that sent them.
set -euo pipefail
STACKS=0
if [[ ${1:-} == --stacks ]]; then STACKS=1; shift; fi
BIN=$(realpath "${1:-target/release/clonefs}")
TAR=${2:-/var/tmp/ft-core.tar}
if [[ ! -f $TAR ]]; then
  tar cf "$TAR" -C "$(rustc --print sysroot)/share/doc/rust/html" core
fi
W=$(mktemp -d /var/tmp/fuse-requests.XXXXXX)
S=$W/store.clonefs M=$W/mnt
mkdir -p "$M"
cleanup() {
  if mountpoint -q "$M"; then timeout 120 "$BIN" umount "$M" || umount -l "$M"; fi
  rm -rf "$W"
}
trap cleanup EXIT

# Per opcode, the requests in perf data $1 on connection $2 (the mount's minor).
tally() {
  perf script -i "$1" -F trace 2>/dev/null | awk -v c="$2" '
    $2 == c { n[$7]++; t++ }
    END { for (k in n) printf "  %-22s %8d\n", k, n[k]; printf "  %-22s %8d\n", "TOTAL", t }' |
    sort -k2 -nr
}

# The same, grouped by the first kernel frames above the request.
paths() {
  perf script -i "$1" -F trace,ip,sym 2>/dev/null | awk -v c="$2" 'BEGIN { RS = "" }
    { split($0, l, "\n"); split(l[1], h, " "); if (h[2] != c) next
      p = ""; for (i = 4; i <= 9 && i <= length(l); i++) { split(l[i], f, " "); p = p " " f[2] }
      n[h[7] " <-" p]++ }
    END { for (k in n) printf "  %8d %s\n", n[k], k }' | sort -k2,2 -k1,1nr
}

"$BIN" mkfs "$S" --size 32G >/dev/null
timeout 60 "$BIN" mount "$S" "$M" >/dev/null
conn=$(mountpoint -d "$M" | cut -d: -f2)
timeout 60 mkdir "$M/prod"
g=()
if ((STACKS)); then g=(-g); fi
perf record -q "${g[@]}" -o "$W/extract.data" -e fuse:fuse_request_send -a -- \
  timeout 600 tar xf "$TAR" -C "$M/prod"
files=$(timeout 300 find "$M/prod" -type f | wc -l)
echo "tar xf $(basename "$TAR"): $files files"
tally "$W/extract.data" "$conn"
if ((STACKS)); then paths "$W/extract.data" "$conn"; fi
timeout 300 sync
timeout 120 "$BIN" umount "$M" >/dev/null

timeout 60 "$BIN" mount "$S" "$M" >/dev/null
conn=$(mountpoint -d "$M" | cut -d: -f2)
perf record -q -o "$W/grep.data" -e fuse:fuse_request_send -a -- \
  timeout 600 grep -rc no-such-text "$M/prod" >/dev/null || true
echo "grep -r, just mounted:"
tally "$W/grep.data" "$conn"
