#!/usr/bin/env bash
# Instructions per request of the whole proxy process, Sluice and the bare-Pingora floor, under
# callgrind: small `tools/call` through /mcp (one session) and non-streamed `POST /v1/messages`
# (one provider, audit and spend on). Every thread counts (request threads, the audit writer,
# timers); the kernel does not. The counters are zeroed after a warm-up, then 2,000 requests
# are sent at 200 RPS on 4 connections, and the total is divided by 2,000. Unlike timings,
# these counts repeat on a shared machine (about ±1%), so they show what a change saves.
#
#     perf/callgrind_paths.sh                 # both paths, both proxies (~2 min)
#     SLUICE_BIN=/tmp/old/sluice perf/callgrind_paths.sh mcp   # another build, one path
#     KEEP=/tmp/cg perf/callgrind_paths.sh llm   # keep the profiles (callgrind_annotate them)
#
# Needs valgrind and release builds of sluice and sluice-perf (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v valgrind >/dev/null || { echo "callgrind_paths.sh: install valgrind" >&2; exit 1; }
bin="$CARGO_TARGET_DIR/release"
[[ -x "$bin/sluice" && -x "$bin/perf-floor" ]] || cargo build --release -q -p sluice -p sluice-perf
sluice_bin="${SLUICE_BIN:-$bin/sluice}"
paths=("${@:-mcp llm}")
read -r -a paths <<<"${paths[*]}"
requests=2000
key=bench-key-0000000001
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

up=$(free_port)
"$bin/perf-upstream" --listen "127.0.0.1:$up" --tools 2 --threads 2 --api-key sk-fake \
    >"$work/upstream.log" 2>&1 &
pids+=($!)

# Start `proxy` (sluice|floor) under callgrind on a free port; sets $port and $proxy_pid.
start() {
    local proxy=$1 out=$2
    port=$(free_port)
    if [[ $proxy == sluice ]]; then
        local admin
        admin=$(free_port)
        cat >"$work/sluice.yaml" <<YAML
listen: [ { address: 127.0.0.1:$port } ]
admin: { address: 127.0.0.1:$admin }
providers:
  - { name: fake, kind: anthropic, base_url: "http://127.0.0.1:$up", api_key: "sk-fake" }
routes:
  - { models: ["claude-*"], targets: [ { provider: fake } ] }
state: { path: $work/state.db }
mcp:
  servers:
    - name: fast
      http: { url: "http://127.0.0.1:$up/mcp" }
keys:
  - name: bench
    key: \${SLUICE_BENCH_KEY}
    tools: ["*"]
    models: ["*"]
audit:
  path: $work/audit.jsonl
YAML
        SLUICE_BENCH_KEY=$key SLUICE_SESSION_SECRET=callgrind-paths-secret-0123456789 \
            valgrind --tool=callgrind --callgrind-out-file="$out" "$sluice_bin" \
            --config "$work/sluice.yaml" >"$work/$proxy.log" 2>&1 &
    else
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/perf-floor" \
            --listen "127.0.0.1:$port" --upstream "127.0.0.1:$up" --threads 2 \
            >"$work/$proxy.log" 2>&1 &
    fi
    proxy_pid=$!
    pids+=("$proxy_pid")
}

# Open an MCP session through 127.0.0.1:$1 and print its id (waits for the proxy to answer).
mcp_session() {
    python3 - "$1" "$key" <<'PY'
import http.client, json, sys, time
port, key = int(sys.argv[1]), sys.argv[2]
headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "Authorization": f"Bearer {key}"}
init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "callgrind", "version": "0"}}})
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/mcp", init, headers)
        r = c.getresponse()
        r.read()
        if r.status == 200:
            break
    except OSError:
        pass
    time.sleep(0.2)
else:
    sys.exit("the proxy did not answer initialize")
headers["Mcp-Session-Id"] = r.getheader("mcp-session-id")
headers["MCP-Protocol-Version"] = "2025-11-25"
c.request("POST", "/mcp", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
          headers)
c.getresponse().read()
print(headers["Mcp-Session-Id"])
PY
}

# Wait until POST /v1/messages through 127.0.0.1:$1 answers 200.
llm_ready() {
    for _ in $(seq 600); do
        if curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $2" -H 'anthropic-version: 2023-06-01' \
            -d '{"model":"claude-bench","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}' \
            "http://127.0.0.1:$1/v1/messages" 2>/dev/null | grep -q 200; then return; fi
        sleep 0.2
    done
    echo "the proxy did not answer /v1/messages" >&2
    exit 1
}

# Instructions per request of `proxy` on `path`, into $result.
measure() {
    local path=$1 proxy=$2 out="$work/$1-$2.cg"
    start "$proxy" "$out"
    local load=("$bin/perf-llm-load" --connections 4)
    if [[ $path == mcp ]]; then
        local session prefix=""
        session=$(mcp_session "$port")
        [[ $proxy == sluice ]] && prefix=fast__
        load+=(--url "http://127.0.0.1:$port/mcp" --expect "echo: hello"
            --body "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"${prefix}small\",\"arguments\":{\"text\":\"hello\"}}}"
            -H content-type:application/json -H "accept:application/json, text/event-stream"
            -H "authorization:Bearer $key" -H "mcp-session-id:$session" -H mcp-protocol-version:2025-11-25)
    else
        local client_key=sk-fake
        [[ $proxy == sluice ]] && client_key=$key
        llm_ready "$port" "$client_key"
        load+=(--url "http://127.0.0.1:$port/v1/messages" --expect end_turn
            --body '{"model":"claude-bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
            -H content-type:application/json -H "x-api-key:$client_key" -H anthropic-version:2023-06-01)
    fi
    "${load[@]}" --rate 100 --duration 3 >/dev/null
    callgrind_control -z "$proxy_pid" >/dev/null 2>&1
    "${load[@]}" --rate $((requests / 10)) --duration 10 >"$work/load.json"
    callgrind_control -d "$proxy_pid" >/dev/null 2>&1
    kill -9 "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    python3 - "$work/load.json" "$requests" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["requests"] != int(sys.argv[2]) or r["errors"]:
    sys.exit(f"load: {r['requests']} requests, {r['errors']} errors {r.get('error_kinds')}")
PY
    local dump total
    dump=$(ls "$out".* | sort | tail -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    [[ -n ${KEEP:-} ]] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/$path-$proxy.cg"
    result=$((total / requests))
}

for path in "${paths[@]}"; do
    measure "$path" floor
    floor=$result
    measure "$path" sluice
    sluice=$result
    ratio=$(python3 -c "print(f'{$sluice / $floor:.2f}')")
    case $path in
        mcp) what="small tools/call" ;;
        *) what="non-streamed POST /v1/messages" ;;
    esac
    echo "$what: Sluice $sluice, floor $floor instructions per request (Sluice ÷ floor: ${ratio}×)"
done
