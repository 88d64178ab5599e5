#!/usr/bin/env bash
# Instruction counts of the tools/call hot path under callgrind: run the driver at two
# iteration counts and report (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels start-up costs.
# These counts repeat from run to run on a shared machine; timings do not.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v valgrind >/dev/null || { echo "callgrind.sh: install valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p sluice-benches --bin callgrind_hot_path
bin="$CARGO_TARGET_DIR/release/callgrind_hot_path"
n1=1000 n2=11000
ir() {
    local out; out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$1" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$out"
    rm -f "$out"
}
a=$(ir $n1); b=$(ir $n2)
echo "tools/call hot path (500-tool catalog): $(( (b - a) / (n2 - n1) )) instructions per call (Ir $a at N=$n1, $b at N=$n2)"
