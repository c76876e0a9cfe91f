#!/usr/bin/env bash
# clonefs benchmarks: builds in release mode and prints a table of figures measured in this run,
# each beside its target. Usage: scripts/bench.sh [--quick] [DIR]  (DIR: where stores go; default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
dir=/var/tmp
for a in "$@"; do
  case "$a" in
    --quick) quick=(--quick) ;;
    -h | --help) sed -n '2,3p' "$0"; exit 0 ;;
    *) dir=$a ;;
  esac
done
cargo build --release -q --example engine_bench
echo "== engine: clone time, lineage reads, space (no mount) =="
timeout 1200 target/release/examples/engine_bench "${quick[@]}" "$dir"
