#!/usr/bin/env bash
# Runs every clonefs test: installs what is missing (fuse3, the tools the tests drive, and
# chromium with chromium-driver for the console's browser test, Ceph's ceph-mon, ceph-osd,
# ceph-common (with librados2) for the RADOS store), builds, then runs the unit, model,
# crash, power-cut, real-mount, browser and Ceph tests (tests/ceph.rs starts its own
# cluster on loopback). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v rsync >/dev/null || need+=(rsync)
command -v python3 >/dev/null || need+=(python3)
command -v tar >/dev/null || need+=(tar)
command -v curl >/dev/null || need+=(curl)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v ceph-mon >/dev/null || need+=(ceph-mon)
command -v ceph-osd >/dev/null || need+=(ceph-osd)
command -v rados >/dev/null || need+=(ceph-common)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "test.sh: /dev/fuse is missing: the mount tests cannot run" >&2; exit 1; }

echo "test.sh: building"
cargo build --release --all-targets
echo "test.sh: running every test"
log=$(mktemp -t clonefs-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests -- --test-threads 2 2>&1 | tee "$log" || status=$?
# One closing line for the whole run: the sum of every test binary's result line.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
