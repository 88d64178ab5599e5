#!/usr/bin/env bash
# Instruction counts of one tools/call through the real /mcp pipeline (McpEndpoint::handle with
# a session, the key's rate limiter, the audit log to a temporary file and metrics, in front of
# an in-process upstream, 500-tool catalog) under callgrind: run the driver at two iteration
# counts and report (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels start-up costs. Threads are
# counted separately: the request thread (McpEndpoint::handle) and the audit writer thread
# (formats and writes the records off the request path); the total is both.
# These counts repeat from run to run on a shared machine; timings do not.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v valgrind >/dev/null || { echo "callgrind.sh: install valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p sluice-benches --bin callgrind_hot_path
bin="$CARGO_TARGET_DIR/release/callgrind_hot_path"
n1=1000 n2=11000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Prints "<request thread Ir> <other threads Ir>" for N iterations.
ir() {
    local out="$work/cg.$1"
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" "$bin" "$1" >/dev/null 2>&1
    local main=0 other=0 f n
    for f in "$out"-*; do
        n=$(awk '/^summary:/ {print $2}' "$f")
        if [[ "$f" == *-01 ]]; then main=$((main + n)); else other=$((other + n)); fi
    done
    echo "$main $other"
}
read -r a_main a_other < <(ir $n1)
read -r b_main b_other < <(ir $n2)
d=$((n2 - n1))
handle=$(( (b_main - a_main) / d ))
audit=$(( (b_other - a_other) / d ))
echo "tools/call through McpEndpoint::handle (500-tool catalog; session, rate limit, audit, metrics; in-process upstream):"
echo "  $((handle + audit)) instructions per call: $handle on the request thread + $audit on the audit writer thread"
echo "  (Ir request thread $a_main at N=$n1, $b_main at N=$n2; other threads $a_other, $b_other)"
