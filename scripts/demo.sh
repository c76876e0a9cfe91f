#!/usr/bin/env bash
# clonefs demo: installs what is missing (fuse3), builds, makes a store with defaults, mounts it,
# writes a cluster, clones it, shows both sides diverging and the status table, then unmounts.
# Usage: scripts/demo.sh [--keep] [DIR]   (DIR: where the store and mount point go; default: a temp dir)
# With --keep the mount stays up, with the API and web console on loopback; the console's URL is shown.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
dir=""
for a in "$@"; do
  case "$a" in
    --keep) keep=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) dir=$a ;;
  esac
done

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
  echo "demo: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "demo: cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }

echo "demo: building (cargo build --release)"
cargo build --release -q
bin=$PWD/target/release/clonefs

made_dir=0
if [ -z "$dir" ]; then
  dir=$(mktemp -d -t clonefs-demo.XXXXXX)
  made_dir=1
fi
mkdir -p "$dir"
store=$dir/demo.clonefs
mnt=$dir/mnt
mkdir -p "$mnt"

cleanup() {
  if [ "$keep" = 0 ] && grep -q " $mnt " /proc/mounts; then
    timeout 60 "$bin" umount "$mnt" || timeout 10 fusermount3 -uz "$mnt" || true
  fi
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; timeout 120 "$@"; }

[ -e "$store" ] || run "$bin" mkfs "$store"
if [ "$keep" = 1 ]; then
  run "$bin" mount "$store" "$mnt" --listen 127.0.0.1:0
else
  run "$bin" mount "$store" "$mnt"
fi
run mkdir "$mnt/prod"
say "echo 'hello from prod' > $mnt/prod/greeting.txt"
echo 'hello from prod' >"$mnt/prod/greeting.txt"
run dd if=/dev/urandom of="$mnt/prod/data.bin" bs=1M count=64 status=none
run mkdir -p "$mnt/prod/app/config"
say "seq 1 1000 > $mnt/prod/app/config/settings"
seq 1 1000 >"$mnt/prod/app/config/settings"
run "$bin" status "$mnt"

say "time mkdir $mnt/prod/.clone/test     # the clone"
start=$(date +%s%N)
timeout 30 mkdir "$mnt/prod/.clone/test"
echo "cloned in $(( ($(date +%s%N) - start) / 1000 )) us"
run ls "$mnt" "$mnt/prod/.clone"
run timeout 60 sha256sum "$mnt/prod/data.bin" "$mnt/test/data.bin"

say "echo 'changed in prod' > $mnt/prod/greeting.txt; echo 'changed in test' > $mnt/test/greeting.txt"
echo 'changed in prod' >"$mnt/prod/greeting.txt"
echo 'changed in test' >"$mnt/test/greeting.txt"
run dd if=/dev/urandom of="$mnt/test/data.bin" bs=1M count=4 conv=notrunc status=none
run cat "$mnt/prod/greeting.txt" "$mnt/test/greeting.txt"
run timeout 60 sha256sum "$mnt/prod/data.bin" "$mnt/test/data.bin"
run "$bin" clone --source-cluster test --cluster test2 "$mnt"
run "$bin" status "$mnt"

if [ "$keep" = 1 ]; then
  echo
  say "$bin console $mnt"
  url=$(timeout 10 "$bin" console "$mnt")
  echo "$url"
  echo
  echo "demo: the mount stays up at $mnt (store $store)."
  echo "      the web console: open $url"
  echo "      the API: curl -H \"Authorization: Bearer \$(cat $store.token)\" ${url%%#*}api/v1/clusters"
  echo "      unmount it with: $bin umount $mnt"
  exit 0
fi
run "$bin" umount "$mnt"
run "$bin" fsck "$store"
if [ "$made_dir" = 1 ]; then
  rm -rf "$dir"
  echo
  echo "demo: done (the temporary store and mount point are removed)."
else
  echo
  echo "demo: done (the store stays at $store)."
fi
