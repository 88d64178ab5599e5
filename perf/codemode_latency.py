#!/usr/bin/env python3
"""What run_script costs in time: Code Mode scripts against the same tool calls made directly,
through the same Sluice (release build), in one run.

Sluice fronts two real upstreams over stdio: the published server-everything (npm, prefix `ev`)
and the CRM of perf/servers/business_server.py (Python SDK). Two keys: `plain` (tools listed and
called directly) and `code` (Code Mode). One client (HTTP/1.1 keep-alive, MCP 2026-07-28 as
Claude Code speaks it) takes turns, one request at a time, over these measures:

    call, direct          tools/call ev__echo                                   (plain key)
    script, trivial       run_script `result = 1`                               (code key)
    3 calls, direct       tools/call ev__get-sum, ev__echo, crm__get_customer   (plain key, one after another)
    script, 3 calls       run_script making the same 3 calls one after another  (code key)
    script, 3 in parallel run_script making them with parallel()                (code key)

and reports p50/p99 of each and what the script adds: trivial script − one direct call,
3-call script − 3 direct calls. Each measure's answer is checked once before timing. Two
phases: "warm" sleeps after each script so that Code Mode's worker pool has a worker waiting
(as it has between a model's turns); "back to back" does not, so a script may wait for a
worker to start (each worker runs one script).

    python3 perf/codemode_latency.py                 # builds; 2 phases of 300 rounds after 50 of warm-up
    python3 perf/codemode_latency.py --no-build --sluice PATH --iterations 200
    python3 perf/codemode_latency.py --record        # also append to perf/RESULTS.md

Uses perf/token_economy.py's installation of the servers (perf/servers, perf/.venv-servers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import secrets
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import token_economy as te  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

SCRIPT_TRIVIAL = "result = 1"
SCRIPT_3 = (
    "s = ev.get_sum(a=19, b=23)\n"
    "e = ev.echo(message='latency')\n"
    "c = crm.get_customer(customer_id='C-1001')\n"
    "result = [s, e, c['name']]\n"
)
SCRIPT_3_PARALLEL = (
    "s, e, c = parallel(lambda: ev.get_sum(a=19, b=23), lambda: ev.echo(message='latency'),\n"
    "                   lambda: crm.get_customer(customer_id='C-1001'))\n"
    "result = [s, e, c['name']]\n"
)
DIRECT_3 = [("ev__get-sum", {"a": 19, "b": 23}), ("ev__echo", {"message": "latency"}),
            ("crm__get_customer", {"customer_id": "C-1001"})]
EXPECTED_3 = '["The sum of 19 and 23 is 42.", "Echo: latency", "Acme Corp"]'


def text_of(result: dict) -> str:
    return "".join(part.get("text", "") for part in result.get("content") or [] if isinstance(part, dict))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` (reaped children included), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += kids.get(current, [])
    return found


def our_cpu(sluice_pid: int) -> float:
    """CPU seconds of Sluice, its upstreams and workers, and this client."""
    own = os.times()
    return sum(cpu_seconds(p) for p in tree(sluice_pid)) + own.user + own.system


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sluice", help="the sluice binary (default: $CARGO_TARGET_DIR/release/sluice, built first)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--iterations", type=int, default=300,
                   help="timed rounds per phase (each round runs every measure once)")
    p.add_argument("--gap", type=float, default=0.3, help="idle seconds after each script in the warm phase")
    p.add_argument("--warmup", type=int, default=50, help="untimed rounds first")
    p.add_argument("--record", action="store_true", help="append the results to perf/RESULTS.md")
    p.add_argument("--note", action="append", default=[], help="a note recorded with the results")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    te.ensure_servers()
    te.reexec_in_servers_venv()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    build_cmd = te.build(args)
    binary = te.sluice_binary(args)
    if not binary.exists():
        raise te.BenchError(f"{binary} does not exist: build it or pass --sluice")
    work = Path(tempfile.mkdtemp(prefix="sluice-codemode-latency-"))
    print(f"work folder: {work}", flush=True)
    every = te.catalog_servers(work)
    servers = {"everything": every["everything"], "crm": every["crm"]}
    keys = {"plain": secrets.token_urlsafe(24), "code": secrets.token_urlsafe(24)}
    sluice = te.Sluice(binary, work, servers, [
        {"name": "plain", "key": keys["plain"], "tools": ["*"]},
        {"name": "code", "key": keys["code"], "tools": ["*"], "code_mode": True},
    ])
    try:
        sluice.wait_ready(list(servers))
        plain, code = te.Mcp(sluice.url, keys["plain"]), te.Mcp(sluice.url, keys["code"])

        def direct_1() -> str:
            return text_of(plain.call("ev__echo", {"message": "latency"}))

        def direct_3() -> str:
            out = []
            for name, arguments in DIRECT_3:
                result = plain.call(name, arguments)
                if name == "crm__get_customer":
                    out.append((result.get("structuredContent") or json.loads(text_of(result)))["name"])
                else:
                    out.append(text_of(result))
            return json.dumps(out)

        def script(source: str):
            def run() -> str:
                result = code.call("run_script", {"script": source})
                if result.get("isError"):
                    raise te.BenchError(f"run_script failed: {text_of(result)[:500]}")
                return text_of(result)
            return run

        measures = {
            "call, direct (ev__echo)": direct_1,
            "script, trivial (`result = 1`)": script(SCRIPT_TRIVIAL),
            "3 calls, direct, one after another": direct_3,
            "script, the 3 calls one after another": script(SCRIPT_3),
            "script, the 3 calls in parallel()": script(SCRIPT_3_PARALLEL),
        }
        checks = {
            "call, direct (ev__echo)": "Echo: latency",
            "script, trivial (`result = 1`)": "result = 1",
            "3 calls, direct, one after another": EXPECTED_3,
            "script, the 3 calls one after another": f"result = {EXPECTED_3}",
            "script, the 3 calls in parallel()": f"result = {EXPECTED_3}",
        }
        for name, measure in measures.items():
            got = measure()
            if checks[name] not in got:
                raise te.BenchError(f"{name}: expected {checks[name]!r} in {got[:500]!r}")
        for _ in range(args.warmup):
            for measure in measures.values():
                measure()
        phases = {}
        for phase, gap in (("warm", args.gap), ("back-to-back", 0.0)):
            samples: dict[str, list[float]] = {name: [] for name in measures}
            busy0, ours0, t0 = _busy(), our_cpu(sluice.proc.pid), time.monotonic()
            idle = 0.0
            for _ in range(args.iterations):
                for name, measure in measures.items():
                    begin = time.perf_counter()
                    measure()
                    samples[name].append((time.perf_counter() - begin) * 1000)
                    if gap and name.startswith("script"):
                        time.sleep(gap)  # the pool gets its worker back, as between a model's turns
                        idle += gap
            elapsed = time.monotonic() - t0
            other = max(0.0, (_busy() - busy0) - (our_cpu(sluice.proc.pid) - ours0)) / elapsed
            phases[phase] = {"samples": samples, "other_cores": other, "gap": gap}
        plain.close()
        code.close()
    finally:
        sluice.stop()
    names = list(measures)
    added = {
        names[1]: (names[0], "one direct call"),
        names[3]: (names[2], "the 3 direct calls"),
        names[4]: (names[2], "the 3 direct calls"),
    }
    out = [f"run_script against the same calls made directly, through one Sluice ({binary}; Code Mode's "
           f"default pool of 2 workers), {args.iterations} rounds per phase after {args.warmup} of warm-up, one "
           f"request at a time (ms)."]
    for phase, data in phases.items():
        stats = {name: {"p50": percentile(v, 0.50), "p99": percentile(v, 0.99), "mean": sum(v) / len(v), "n": len(v)}
                 for name, v in data["samples"].items()}
        data["stats"] = stats
        if phase == "warm":
            title = (f"Warm pool: {data['gap']:g} s idle after each script (the pool has a worker waiting, as "
                     f"between a model's turns)")
        else:
            title = ("Back to back: scripts follow each other with no pause (a script may wait for a worker to "
                     "start)")
        out += ["", f"{title}; other processes used {data['other_cores']:.2f} cores on average:", "",
                "| measure | p50 | p99 | mean | added p50 | added p99 |", "|---|---|---|---|---|---|"]
        for name in names:
            st = stats[name]
            if name in added:
                ref = stats[added[name][0]]
                extra = f"{st['p50'] - ref['p50']:+.2f} vs {added[name][1]} | {st['p99'] - ref['p99']:+.2f}"
            else:
                extra = "| "
            out.append(f"| {name} | {st['p50']:.2f} | {st['p99']:.2f} | {st['mean']:.2f} | {extra} |")
    out += ["", f"Load average at the start: {', '.join(f'{x:.2f}' for x in load_start)}."]
    text = "\n".join(out)
    print()
    print(text)
    results = {"date": f"{started:%Y-%m-%d %H:%M} UTC", "machine": te.machine(), "commit": te.commit(),
               "sluice": str(binary), "build": build_cmd, "phases": phases,
               "load_average_at_start": load_start}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if args.record:
        lines = [
            f"## Code Mode latency: {results['date']}", "",
            f"- Machine: {results['machine']}",
            f"- Commit: {results['commit']}",
            f"- Run: `{shlex.join(['python3', 'perf/codemode_latency.py', *sys.argv[1:]])}`; build: "
            f"`{shlex.join(build_cmd)}`",
        ] + [f"- Note: {n}" for n in args.note]
        with open(te.RESULTS, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n\n" + text + "\n")
        print(f"\nappended to {te.RESULTS}")
    print(f"\nresults: {work / 'results.json'}")
    return 0


def _busy() -> float:
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except te.BenchError as e:
        print(f"codemode_latency FAILED: {e}", file=sys.stderr)
        sys.exit(1)
