#!/usr/bin/env python3
"""Sluice's soak: a long run of mixed traffic at a fixed rate, with a reload every minute.

Starts the fast upstream (perf-upstream) and Sluice in front of it (as bench.py does), opens an
MCP session, then drives one open-loop oha run (fixed rate, latency-corrected) whose request
bodies are a shuffled mix of

    tools/call small      the upstream echoes a short text (the bulk of the traffic)
    tools/list            Sluice's merged catalog (the upstream's tools)
    unknown tool          tools/call of a tool no server has: an expected JSON-RPC error
    unknown method        a method MCP does not define: an expected JSON-RPC error

While it runs, Sluice's configuration is rewritten with a harmless change (a tool group no key
uses, renamed each time) and Sluice is sent SIGHUP every `--reload-every` seconds; Sluice's RSS
(VmRSS), open file descriptors (/proc/PID/fd), threads and CPU are sampled every
`--sample-every` seconds.

Unexpected errors are oha's connection errors and timeouts, non-2xx statuses, tools/call
answers of the upstream's tool that are not a success (Sluice's
`sluice_tool_calls_total{server="fast"}` by outcome), and refused or missed reloads. The
expected errors are counted apart (`sluice_tool_calls_total{server="-"}` for the unknown tool).

The run fails (exit 1) on any unexpected error, when RSS at the end exceeds RSS after warm-up by
more than `--rss-growth` (20%), when the open file descriptors at the end exceed those after
warm-up by more than `--fd-slack`, or when less than 95% of the rate was achieved.

    python3 perf/soak.py                                # 10 minutes at 5,000 RPS; appends to RESULTS.md
    python3 perf/soak.py --duration 60 --rate 2000 --reload-every 20 --no-record

Standard library only; shares bench.py's process, HTTP and MCP helpers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import sluice_config as bench_sluice_config  # noqa: E402
from bench import (  # noqa: E402  (bench.py sits next to this file)
    CLK_TCK,
    RESULTS,
    BenchError,
    Service,
    Target,
    build,
    commit,
    find_oha,
    fmt,
    free_port,
    http,
    json_rpc_message,
    machine,
    machine_busy_seconds,
    wait_until,
)

# Shares of the traffic, in percent.
MIX = {"call": 85, "list": 5, "unknown_tool": 5, "unknown_method": 5}
UNKNOWN_TOOL = "fast__no_such_tool"
UNKNOWN_METHOD = "sluice/no_such_method"
RELOADED = "configuration reloaded"
REFUSED = "configuration reload refused"


def body(kind: str, request_id: int) -> str:
    message: dict = {"jsonrpc": "2.0", "id": request_id}
    if kind == "call":
        message.update(method="tools/call", params={"name": "fast__small", "arguments": {"text": "hello"}})
    elif kind == "list":
        message.update(method="tools/list", params={})
    elif kind == "unknown_tool":
        message.update(method="tools/call", params={"name": UNKNOWN_TOOL, "arguments": {}})
    else:
        message.update(method=UNKNOWN_METHOD, params={})
    return json.dumps(message, separators=(",", ":"))


def bodies_file(path: Path, lines: int = 10000) -> Path:
    """`lines` request bodies in the proportions of MIX, shuffled, with distinct ids; oha picks
    one at random per request."""
    kinds = [kind for kind, share in MIX.items() for _ in range(lines * share // 100)]
    random.Random(7).shuffle(kinds)
    path.write_text("\n".join(body(kind, i) for i, kind in enumerate(kinds, 1)) + "\n")
    return path


def sluice_config(listen: int, admin: int, upstream: int, audit: Path, generation: int) -> str:
    """Sluice as in bench.py (one virtual key granted every tool, audit log on), plus a tool
    group that no key uses: renamed on every reload, so each reload is a real change that
    alters nothing the traffic depends on."""
    return bench_sluice_config(
        listen, admin, upstream, audit,
        mcp=f'  tool_groups:\n    soak-reload-{generation}: ["fast__small"]\n')


# ---------------------------------------------------------------- /proc and /metrics


def proc_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> int:
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(name + ":"))

    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return {
        "rss_kb": field("VmRSS"),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": field("Threads"),
        "cpu_s": (int(stat[11]) + int(stat[12])) / CLK_TCK,
    }


def established(local_port: int) -> int:
    """TCP connections established to 127.0.0.1:`local_port` (Sluice's clients), from
    /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == local_port:
            count += 1
    return count


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metrics(admin_url: str) -> list[tuple[str, dict, float]]:
    status, _, text = http("GET", f"{admin_url}/metrics")
    if status != 200:
        raise BenchError(f"GET {admin_url}/metrics -> {status}")
    samples = []
    for line in text.decode().splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def tool_calls(samples: list) -> dict[tuple[str, str, str], float]:
    return {(l.get("server"), l.get("tool"), l.get("outcome")): v
            for name, l, v in samples if name == "sluice_tool_calls_total"}


def http_statuses(samples: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "sluice_requests_total":
            out[labels.get("status", "?")] = out.get(labels.get("status", "?"), 0) + value
    return out


# ---------------------------------------------------------------- the run


def check_answers(target: Target) -> None:
    """One request of each kind, checked for content before the load (oha sees statuses only)."""
    for kind in MIX:
        request = body(kind, 1)
        status, headers, raw = target.post(request)
        describe = f"POST {target.url} {request} -> {status} {raw[:300]!r}"
        try:
            message = json_rpc_message(headers, raw)
            if kind == "call":
                ok = message["result"]["content"][0]["text"] == "echo: hello"
            elif kind == "list":
                ok = any(t["name"] == "fast__small" for t in message["result"]["tools"])
            elif kind == "unknown_tool":
                ok = message["error"]["code"] == -32602 and UNKNOWN_TOOL in message["error"]["message"]
            else:
                ok = message["error"]["code"] == -32601
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        if status != 200 or not ok:
            raise BenchError(f"unexpected answer ({kind}): {describe}")


def run(args, work: Path) -> tuple[dict, list[str]]:
    """Start the services, soak, stop them; the numbers and the list of failures."""
    bin_dir = args.target_dir / "release"
    services: dict[str, Service] = {}
    try:
        up_port, port, admin = free_port(), free_port(), free_port()
        services["upstream"] = Service("upstream", [
            str(bin_dir / "perf-upstream"), "--listen", f"127.0.0.1:{up_port}",
            "--tools", str(args.tools), "--threads", str(args.threads)], work)
        stats_url = f"http://127.0.0.1:{up_port}/stats"
        wait_until("perf-upstream", lambda: http("GET", stats_url)[0] == 200, services["upstream"])

        config = work / "sluice.yaml"
        audit = work / "audit.jsonl"
        generation = 0
        config.write_text(sluice_config(port, admin, up_port, audit, generation))
        args.sluice_config = config
        key = secrets.token_urlsafe(24)
        env = dict(os.environ, SLUICE_BENCH_KEY=key, SLUICE_SESSION_SECRET=secrets.token_hex(32))
        sluice = services["sluice"] = Service("sluice", [str(args.sluice_bin), "--config", str(config)],
                                              work, env)
        admin_url = f"http://127.0.0.1:{admin}"
        wait_until("sluice /readyz", lambda: http("GET", f"{admin_url}/readyz")[0] == 200, sluice)
        target = Target("sluice", f"http://127.0.0.1:{port}/mcp", "fast__", bearer_key=key)
        target.open_session()
        check_answers(target)

        argv = [args.oha, target.url, "-m", "POST", "-Z", str(bodies_file(work / "bodies-soak.jsonl")),
                "-q", str(args.rate), "--latency-correction", "-z", f"{args.duration:g}s", "-w",
                "-c", str(args.connections), "-t", "10s", "--no-tui", "--output-format", "json"]
        for name, value in target.headers().items():
            argv += ["-H", f"{name}: {value}"]
        args.oha_command = shlex.join(argv).replace(
            f"'Authorization: Bearer {key}'", '"Authorization: Bearer $SLUICE_BENCH_KEY"')

        def sample_sluice() -> dict:
            """/proc of Sluice, and the connections it holds: from clients (/proc/net/tcp) and to
            the upstream (its /stats, less the connection of that request). Every other open
            file descriptor ("other fds") must stay flat."""
            sample = proc_sample(sluice.pid)
            sample["clients"] = established(port)
            sample["upstream_conns"] = json.loads(http("GET", stats_url)[2])["connections_open"] - 1
            sample["other_fds"] = sample["fds"] - sample["clients"] - sample["upstream_conns"]
            return sample

        before = metrics(admin_url)
        upstream_before = json.loads(http("GET", stats_url)[2])
        idle = sample_sluice()
        samples = [{"t": 0.0, **idle}]
        reloads = {"sent": 0, "done": 0, "refused": 0, "late": []}
        oha_out = work / "oha-soak.json"
        print(f"soak: {args.rate} RPS for {args.duration:g} s, reload every {args.reload_every:g} s, "
              f"Sluice pid {sluice.pid}; idle RSS {idle['rss_kb'] / 1024:.1f} MB, {idle['fds']} fds", flush=True)
        ours_before = sum(s.cpu_seconds() for s in services.values())
        upstream_cpu_before = services["upstream"].cpu_seconds()
        busy_before, children_before = machine_busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(oha_out, "wb") as out, open(work / "oha-soak.err", "wb") as err:
            oha = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        started = time.monotonic()
        # Samples under load: every `sample_every` s, and one just before the load ends.
        sample_at = [k * args.sample_every for k in range(1, int(args.duration // args.sample_every) + 1)
                     if k * args.sample_every < args.duration - 2] + [args.duration - 1]
        next_reload = args.reload_every
        while oha.poll() is None:
            time.sleep(0.2)
            now = time.monotonic() - started
            sluice.check_alive()
            if now >= next_reload and now < args.duration - 5:
                next_reload += args.reload_every
                generation += 1
                config.write_text(sluice_config(port, admin, up_port, audit, generation))
                log_before = sluice.log.read_text(errors="replace")
                done_before, refused_before = log_before.count(RELOADED), log_before.count(REFUSED)
                os.kill(sluice.pid, signal.SIGHUP)
                reloads["sent"] += 1
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    log = sluice.log.read_text(errors="replace")
                    if log.count(RELOADED) > done_before or log.count(REFUSED) > refused_before:
                        break
                    time.sleep(0.05)
                reloads["done"] += log.count(RELOADED) - done_before
                reloads["refused"] += log.count(REFUSED) - refused_before
                if log.count(RELOADED) == done_before and log.count(REFUSED) == refused_before:
                    reloads["late"].append(round(now))
                print(f"  {now:6.0f} s  reload #{reloads['sent']} (SIGHUP)", flush=True)
            if sample_at and now >= sample_at[0]:
                sample_at.pop(0)
                sample = {"t": now, **sample_sluice()}
                previous = samples[-1]
                sample["cores"] = (sample["cpu_s"] - previous["cpu_s"]) / max(now - previous["t"], 1e-9)
                samples.append(sample)
                print(f"  {now:6.0f} s  RSS {sample['rss_kb'] / 1024:6.1f} MB  fds {sample['fds']:4d} "
                      f"(clients {sample['clients']}, upstream {sample['upstream_conns']}, other "
                      f"{sample['other_fds']})  threads {sample['threads']:3d}  CPU {sample['cores']:.2f} cores", flush=True)
        elapsed = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        generator = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
        ours = sum(s.cpu_seconds() for s in services.values()) - ours_before + generator
        other_cores = max(machine_busy_seconds() - busy_before - ours, 0.0) / elapsed
        upstream_cpu_before_end = services["upstream"].cpu_seconds() - upstream_cpu_before
        time.sleep(1)  # the load's connections close
        after_load = sample_sluice()
        if oha.returncode != 0:
            raise BenchError(f"oha failed ({oha.returncode}): {args.oha_command}\n"
                             f"{(work / 'oha-soak.err').read_text(errors='replace')[-2000:]}")
        for service in services.values():
            service.check_alive()
        after = metrics(admin_url)
        upstream_after = json.loads(http("GET", stats_url)[2])
        report = json.loads(oha_out.read_text())
        result, failures = summarize(args, report, before, after, samples, after_load, reloads,
                                     upstream_after["requests"] - upstream_before["requests"], elapsed)
        result["other_cores"] = other_cores
        result["generator_cores"] = generator / elapsed
        result["upstream_cores"] = upstream_cpu_before_end / elapsed
        return result, failures
    finally:
        for service in reversed(list(services.values())):
            service.stop()


def summarize(args, report, before, after, samples, after_load, reloads, upstream_requests, elapsed) -> tuple[dict, list[str]]:
    statuses = {int(k): v for k, v in report["statusCodeDistribution"].items()}
    transport = dict(report.get("errorDistribution", {}))
    requests = sum(statuses.values()) + sum(transport.values())
    non_2xx = {f"HTTP {k}": v for k, v in statuses.items() if not 200 <= k < 300}
    calls_before, calls_after = tool_calls(before), tool_calls(after)
    calls = {k: v - calls_before.get(k, 0) for k, v in calls_after.items() if v - calls_before.get(k, 0)}
    ok_calls = sum(v for (server, _, outcome), v in calls.items() if server == "fast" and outcome == "ok")
    bad_calls = {f"tools/call {tool} {outcome}": v for (server, tool, outcome), v in calls.items()
                 if server == "fast" and outcome != "ok"}
    expected = sum(v for (server, _, _), v in calls.items() if server == "-")
    statuses_sluice = {k: v - http_statuses(before).get(k, 0) for k, v in http_statuses(after).items()}
    unexpected = {**transport, **non_2xx, **bad_calls}
    if reloads["refused"]:
        unexpected["reload refused"] = reloads["refused"]
    if reloads["late"]:
        unexpected["reload not logged within 5 s"] = len(reloads["late"])
    percentiles = report["latencyPercentiles"]

    def ms(key: str) -> float | None:
        value = percentiles.get(key)
        return None if value is None else value * 1000

    warm = min((s for s in samples if s["t"] >= args.warmup), key=lambda s: s["t"], default=samples[-1])
    loaded = [s for s in samples if s["t"] > 0]
    result = {
        "rate": args.rate, "duration": args.duration, "elapsed": elapsed, "requests": requests,
        "achieved_rps": requests / report["summary"]["total"],
        "p50_ms": ms("p50"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "max_ms": (report["summary"].get("slowest") or 0) * 1000,
        "ok_calls": ok_calls, "expected_errors": expected, "unexpected": unexpected,
        "upstream_requests": upstream_requests, "sluice_statuses": statuses_sluice,
        "reloads": reloads, "samples": samples, "warm": warm,
        "rss_idle_mb": samples[0]["rss_kb"] / 1024, "rss_warm_mb": warm["rss_kb"] / 1024,
        "rss_end_mb": samples[-1]["rss_kb"] / 1024, "rss_max_mb": max(s["rss_kb"] for s in loaded) / 1024,
        "fds_idle": samples[0]["fds"], "fds_warm": warm["fds"], "fds_end": samples[-1]["fds"],
        "fds_max": max(s["fds"] for s in loaded),
        "other_fds_idle": samples[0]["other_fds"], "other_fds_warm": warm["other_fds"],
        "other_fds_end": samples[-1]["other_fds"], "other_fds_max": max(s["other_fds"] for s in loaded),
        "other_fds_after": after_load["other_fds"],
        "rss_after_mb": after_load["rss_kb"] / 1024, "fds_after": after_load["fds"],
        "cores": (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / samples[-1]["t"],
    }
    failures = []
    if unexpected:
        failures.append(f"{sum(unexpected.values()):.0f} unexpected errors: {unexpected}")
    if not ok_calls or not expected:
        failures.append(f"the mix did not happen: {ok_calls:.0f} successful calls, {expected:.0f} expected errors")
    if result["rss_end_mb"] > result["rss_warm_mb"] * (1 + args.rss_growth):
        failures.append(f"RSS grew from {result['rss_warm_mb']:.1f} MB after warm-up to "
                        f"{result['rss_end_mb']:.1f} MB at the end (limit +{args.rss_growth:.0%})")
    if result["other_fds_end"] > result["other_fds_warm"] + args.fd_slack:
        failures.append(f"file descriptors other than client and upstream connections grew from "
                        f"{result['other_fds_warm']} after warm-up to {result['other_fds_end']} at the end "
                        f"(limit +{args.fd_slack})")
    if result["fds_max"] > result["fds_idle"] + 2 * args.connections + args.fd_slack:
        failures.append(f"{result['fds_max']} open file descriptors: more than idle ({result['fds_idle']}) "
                        f"+ one per client connection and one upstream connection per request in flight "
                        f"(2 x {args.connections}) + {args.fd_slack}")
    if result["achieved_rps"] < 0.95 * args.rate:
        failures.append(f"only {result['achieved_rps']:.0f} RPS of {args.rate} achieved")
    return result, failures


def table(r: dict, args) -> str:
    unexpected = sum(r["unexpected"].values())
    mix = ", ".join(f"{kind.replace('_', ' ')} {share}%" for kind, share in MIX.items())
    out = [f"### Soak: mixed traffic at {args.rate} RPS for {args.duration:g} s, SIGHUP reload every "
           f"{args.reload_every:g} s", "",
           "| requests | achieved RPS | p50 ms | p99 ms | p99.9 ms | max ms | unexpected errors "
           "| expected errors (unknown tool) | tools/call ok | reloads applied "
           "| RSS MB: idle / after warm-up / end / max / after the load "
           "| fds: idle / after warm-up / end / max / after the load "
           "| other fds (not a client or upstream connection): idle / after warm-up / end / max / after the load "
           "| CPU (cores): Sluice / upstream / oha "
           "| other load (cores) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
           f"| {r['requests']} | {r['achieved_rps']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
           f"| {fmt(r['p999_ms'])} | {fmt(r['max_ms'])} "
           f"| {unexpected:.0f}{' ' + str(r['unexpected']) if unexpected else ''} | {r['expected_errors']:.0f} "
           f"| {r['ok_calls']:.0f} | {r['reloads']['done']} of {r['reloads']['sent']} "
           f"| {r['rss_idle_mb']:.1f} / {r['rss_warm_mb']:.1f} / {r['rss_end_mb']:.1f} / {r['rss_max_mb']:.1f} "
           f"/ {r['rss_after_mb']:.1f} "
           f"| {r['fds_idle']} / {r['fds_warm']} / {r['fds_end']} / {r['fds_max']} / {r['fds_after']} "
           f"| {r['other_fds_idle']} / {r['other_fds_warm']} / {r['other_fds_end']} / {r['other_fds_max']} "
           f"/ {r['other_fds_after']} "
           f"| {r['cores']:.2f} / {r['upstream_cores']:.2f} / {r['generator_cores']:.2f} | {r['other_cores']:.2f} |",
           "",
           f"Mix (share of requests): {mix}; "
           f"the unknown tool and unknown method are the expected errors (the unknown method's, "
           f"-32601 in HTTP 200, are not counted apart). Warm-up (the RSS and fd "
           f"baseline): the first {args.warmup:g} s. Sluice's answers by HTTP status: "
           + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["sluice_statuses"].items()) if v)
           + f"; requests that reached the upstream: {r['upstream_requests']}.",
           "",
           f"Samples of Sluice under load (every {args.sample_every:g} s"
           + ("; shown once a minute and the last" if len(r["samples"]) > 13 else "") + "; 'end' is the "
           "last, 1 s before the load ends; 'after the load' is 1 s after it ended):", "",
           "| t s | RSS MB | fds | client conns | upstream conns | other fds | threads | Sluice CPU (cores) |",
           "|---|---|---|---|---|---|---|---|"]
    shown = r["samples"]
    if len(shown) > 13:
        shown = [s for s in shown[:-1] if round(s["t"]) % 60 == 0] + shown[-1:]
    for s in shown:
        cores = f"{s['cores']:.2f}" if "cores" in s else "idle"
        out.append(f"| {s['t']:.0f} | {s['rss_kb'] / 1024:.1f} | {s['fds']} | {s['clients']} | {s['upstream_conns']} "
                   f"| {s['other_fds']} | {s['threads']} | {cores} |")
    return "\n".join(out)


def record(started, load_average, args, build_cmd, oha_version, report: str, failures: list[str]) -> None:
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC (soak)",
        "",
        f"- Machine: {machine()}; load average at start {', '.join(f'{x:.2f}' for x in load_average)}",
        f"- Commit: {commit()}",
        f"- Load generator: {oha_version}, {args.connections} connections, open loop with "
        f"`--latency-correction`, one run of {args.duration:g} s",
        f"- Run: `{shlex.join(['python3', 'perf/soak.py'] + without_notes(sys.argv[1:]))}`"
        + (" (and `--note`s, below)" if args.note else ""),
        f"- Build: `{shlex.join(build_cmd)}`",
        f"- upstream: `{args.target_dir / 'release' / 'perf-upstream'} --tools {args.tools} --threads {args.threads}`",
        f"- sluice: `{args.sluice_bin} --config {args.sluice_config}`",
        f"- oha: `{args.oha_command}`",
        "",
        "Sluice's configuration (the key and session secret are random per run; each reload renames "
        "the tool group):",
        "",
        "```yaml",
        args.sluice_config.read_text().rstrip(),
        "```",
    ]
    if args.note:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in args.note]
    lines += ["", "Result: " + ("**FAILED**" if failures else "passed (no unexpected error, RSS and fds flat)")]
    if failures:
        lines += [""] + [f"- {f}" for f in failures]
    with open(RESULTS, "a") as out:
        out.write("\n" + "\n".join(lines) + "\n\n" + report + "\n")


def without_notes(argv: list[str]) -> list[str]:
    """The command line less its `--note` options (recorded as notes of their own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def parse_args() -> argparse.Namespace:
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", "/work/target"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--rate", type=int, default=5000, help="requests per second, all kinds (default 5000)")
    p.add_argument("--reload-every", type=float, default=60, help="seconds between SIGHUP reloads (default 60)")
    p.add_argument("--sample-every", type=float, default=10, help="seconds between RSS/fd samples (default 10)")
    p.add_argument("--warmup", type=float,
                   help="seconds after which RSS and fds are the baseline (default: 60, or a quarter "
                        "of a shorter run)")
    p.add_argument("--rss-growth", type=float, default=0.20,
                   help="allowed RSS growth from after warm-up to the end (default 0.20)")
    p.add_argument("--fd-slack", type=int, default=8,
                   help="allowed growth, from after warm-up to the end, of the file descriptors that "
                        "are not client or upstream connections (default 8)")
    p.add_argument("--connections", type=int, default=64, help="oha connections (-c)")
    p.add_argument("--tools", type=int, default=50, help="tools in the upstream's catalog (default 50)")
    p.add_argument("--threads", type=int, default=2, help="worker threads of the upstream")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument("--target-dir", type=Path, default=target_dir,
                   help="cargo target directory (default: $CARGO_TARGET_DIR or /work/target)")
    p.add_argument("--sluice-bin", type=Path, help="default: TARGET_DIR/release/sluice")
    p.add_argument("--no-record", action="store_true", help="do not append to perf/RESULTS.md")
    p.add_argument("--note", action="append", default=[],
                   help="a note recorded with the results (e.g. how the binaries were built); repeatable")
    args = p.parse_args()
    args.sluice_bin = args.sluice_bin or args.target_dir / "release" / "sluice"
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 4)
    return args


def main() -> int:
    args = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_average = os.getloadavg()
    build_cmd = ["(skipped: --no-build)"] if args.no_build else build(args.target_dir, ["sluice-perf", "sluice"])
    args.oha = find_oha(args.target_dir)
    oha_version = subprocess.run([args.oha, "--version"], capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    print(f"logs, audit log and request file in {work}", flush=True)
    try:
        result, failures = run(args, work)
    except BenchError as e:
        print(f"soak FAILED: {e}", file=sys.stderr)
        return 1
    report = table(result, args)
    if result["other_cores"] > 0.25:
        report += (f"\n\n**Warning:** other processes used {result['other_cores']:.2f} cores on average "
                   "during the run; latency and the achievable rate suffered from it.")
    print("\n" + report + "\n")
    if not args.no_record:
        record(started, load_average, args, build_cmd, oha_version, report, failures)
        print(f"appended to {RESULTS}")
    if failures:
        print("soak FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"soak OK: {result['requests']} requests at {result['achieved_rps']:.0f} RPS, no unexpected error, "
          f"RSS {result['rss_warm_mb']:.1f} -> {result['rss_end_mb']:.1f} MB, "
          f"fds {result['fds_warm']} -> {result['fds_end']} (other than connections: "
          f"{result['other_fds_warm']} -> {result['other_fds_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
