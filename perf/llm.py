#!/usr/bin/env python3
"""Sluice's LLM path under load: `POST /v1/messages` against a fast fake Anthropic provider, in
one run with the bare-Pingora floor.

Starts perf-upstream (which also plays the provider: a Message JSON at once, or an event stream
whose message_start comes at once and the rest after --stream-delay-ms), perf-floor (a bare
Pingora proxy) and Sluice (release build; one provider, one route, a key allowed every model,
spend store and audit log on), checks one answer of each kind on each path, then drives each
path in turn at fixed rates with perf-llm-load (open loop, latency measured from the intended
send time, exact percentiles):

    direct  client -> fake provider
    floor   client -> perf-floor -> fake provider
    sluice  client -> sluice -> fake provider

Non-streamed: p50/p99/p99.9 of the whole answer; "added" = path - direct. Streamed: the same of
the time to first byte (the first body byte, i.e. message_start) and of the whole answer. Errors
are counted and printed, not asserted (except in --quick).

On a shared machine the neighbours' load drifts within seconds, and a path measured alone meets
other neighbours than the path measured after it. So each scenario runs in rounds (--rounds,
default 3): every round measures every path, the floor and Sluice in alternating order, and each
round gives its own Sluice ÷ floor ratio, from two runs that met about the same neighbours. The
verdict on a target is the median of those ratios; every round is in the table.

    python3 perf/llm.py --quick      # a few seconds per scenario; fails only on errors or crashes
    python3 perf/llm.py --record     # the full run (~7 min); appends to perf/RESULTS.md

Standard library only; shares bench.py's process, HTTP and machine helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import resource
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402  (bench.py sits next to this file)
    REDIS_KEY_LINES,
    RESULTS,
    BenchError,
    Service,
    build,
    commit,
    fmt,
    free_port,
    http,
    listed,
    machine,
    machine_busy_seconds,
    median_ratio,
    quotient,
    round_order,
    sluice_config,
    start_redis,
    upstream_stats,
    wait_until,
)

PATHS = ("direct", "floor", "sluice")
MODEL = "claude-bench"
CLIENT_KEY = "bench-key-0000000001"  # Sluice's virtual key
PROVIDER_KEY = "sk-fake"  # what the fake provider accepts; Sluice swaps it in
ANTHROPIC_VERSION = "2023-06-01"
TEXT = "Hello from the fake provider."  # perf/src/anthropic.rs
OUTPUT_TOKENS = 6
TARGET_RATIO = 1.2


@dataclasses.dataclass
class Scenario:
    stream: bool
    rate: int  # requests per second
    duration: float  # seconds of the measured run

    @property
    def name(self) -> str:
        return f"{'streamed' if self.stream else 'non-streamed'} at {self.rate} RPS"

    def body(self) -> str:
        body: dict = {"model": MODEL, "max_tokens": 64,
                      "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}
        if self.stream:
            body["stream"] = True
        return json.dumps(body, separators=(",", ":"))


SCENARIOS = [Scenario(False, 500, 10), Scenario(False, 2000, 10),
             Scenario(True, 500, 10), Scenario(True, 2000, 10)]


@dataclasses.dataclass
class Target:
    path: str
    url: str
    api_key: str

    def headers(self) -> dict:
        return {"content-type": "application/json", "x-api-key": self.api_key,
                "anthropic-version": ANTHROPIC_VERSION}

    def check(self, scenario: Scenario) -> None:
        """One request, its answer checked for content: the load generator checks only the
        status and one expected string."""
        status, headers, body = http("POST", self.url, scenario.body(), self.headers())
        describe = (f"{self.path}: POST {self.url} {scenario.body()} -> {status} "
                    f"{headers.get('content-type')} {body[:400]!r}")
        try:
            if scenario.stream:
                events = [json.loads(line[5:]) for line in body.decode().splitlines()
                          if line.startswith("data:")]
                types = [e["type"] for e in events]
                text = "".join(e["delta"]["text"] for e in events
                               if e["type"] == "content_block_delta")
                ok = (headers.get("content-type", "").startswith("text/event-stream")
                      and types[0] == "message_start" and types[-1] == "message_stop"
                      and text == TEXT and any(e.get("usage", {}).get("output_tokens")
                                               == OUTPUT_TOKENS for e in events))
            else:
                message = json.loads(body)
                ok = (message["type"] == "message" and message["content"][0]["text"] == TEXT
                      and message["usage"]["output_tokens"] == OUTPUT_TOKENS)
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        if status != 200 or not ok:
            raise BenchError(f"unexpected answer: {describe}")


@dataclasses.dataclass
class Measurement:
    path: str
    report: dict  # perf-llm-load's JSON
    cpu_per_1k: dict  # service name -> CPU seconds per 1,000 requests
    generator_per_1k: float
    other_cores: float  # CPU used meanwhile by processes that are not ours, in cores
    upstream_connections: int  # TCP connections the provider accepted during the run
    command: list[str]

    def ms(self, kind: str, quantile: str) -> float | None:
        return self.report[kind][quantile]


class Load:
    """Runs perf-llm-load against one target, with /proc and /stats around it."""

    def __init__(self, binary: Path, connections: int, services: dict[str, Service],
                 stats_url: str):
        self.binary = binary
        self.connections = connections
        self.services = services
        self.stats_url = stats_url

    def command(self, scenario: Scenario, target: Target, seconds: float) -> list[str]:
        argv = [str(self.binary), "--url", target.url, "--rate", str(scenario.rate),
                "--duration", f"{seconds:g}", "--connections", str(self.connections),
                "--body", scenario.body(),
                "--expect", "message_stop" if scenario.stream else "end_turn"]
        for name, value in target.headers().items():
            argv += ["-H", f"{name}: {value}"]
        return argv

    def run(self, scenario: Scenario, target: Target, seconds: float) -> Measurement:
        argv = self.command(scenario, target, seconds)
        cpu_before = {n: s.cpu_seconds() for n, s in self.services.items()}
        conns_before = upstream_stats(self.stats_url)["connections_accepted"]
        busy_before, started = machine_busy_seconds(), time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy, elapsed = machine_busy_seconds() - busy_before, time.monotonic() - started
        # Less one: the /stats request that reads the count is itself a new connection.
        conns = upstream_stats(self.stats_url)["connections_accepted"] - conns_before - 1
        cpu = {n: s.cpu_seconds() - cpu_before[n] for n, s in self.services.items()}
        generator = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if done.returncode != 0:
            raise BenchError(f"perf-llm-load failed ({done.returncode}): {shlex.join(argv)}\n"
                             f"{done.stderr}")
        report = json.loads(done.stdout)
        kreq = max(report["requests"], 1) / 1000
        for service in self.services.values():
            service.check_alive()
        return Measurement(
            path=target.path, report=report, cpu_per_1k={n: c / kreq for n, c in cpu.items()},
            generator_per_1k=generator / kreq,
            other_cores=max(busy - generator - sum(cpu.values()), 0.0) / elapsed,
            upstream_connections=conns, command=argv)


def start_services(args, bin_dir: Path, work: Path) -> tuple[dict, dict, str]:
    """The fake provider, the floor and Sluice (as asked by --paths); returns services, targets
    and the provider's /stats URL."""
    up_port = free_port()
    services: dict[str, Service] = {}
    services["upstream"] = Service("upstream", [
        str(bin_dir / "perf-upstream"), "--listen", f"127.0.0.1:{up_port}", "--tools", "2",
        "--threads", str(args.threads), "--api-key", PROVIDER_KEY,
        "--stream-delay-ms", str(args.stream_delay_ms)], work)
    stats_url = f"http://127.0.0.1:{up_port}/stats"
    wait_until("perf-upstream", lambda: http("GET", stats_url)[0] == 200, services["upstream"])
    targets = {"direct": Target("direct", f"http://127.0.0.1:{up_port}/v1/messages",
                                PROVIDER_KEY)}
    if "floor" in args.paths:
        port = free_port()
        services["floor"] = Service("floor", [
            str(bin_dir / "perf-floor"), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{up_port}", "--threads", str(args.threads)], work)
        wait_until("perf-floor", lambda: http("GET", f"http://127.0.0.1:{port}/stats")[0]
                   == 200, services["floor"])
        targets["floor"] = Target("floor", f"http://127.0.0.1:{port}/v1/messages", PROVIDER_KEY)
    if "sluice" in args.paths:
        port, admin = free_port(), free_port()
        config = work / "sluice.yaml"
        top = (f"providers:\n"
               f"  - {{ name: fake, kind: anthropic, base_url: \"http://127.0.0.1:{up_port}\", "
               f"api_key: \"{PROVIDER_KEY}\" }}\n"
               f"routes:\n"
               f"  - {{ models: [\"claude-*\"], targets: [ {{ provider: fake }} ] }}\n"
               f"state: {{ path: {work / 'state.db'} }}\n")
        keys = "    models: [\"*\"]\n"
        if args.redis:
            services["redis"], state = start_redis(work)
            top = top.replace(f"state: {{ path: {work / 'state.db'} }}\n", state)
            keys += REDIS_KEY_LINES
        config.write_text(sluice_config(port, admin, up_port, work / "audit.jsonl", top=top,
                                        keys=keys))
        args.sluice_config = config  # recorded in RESULTS.md
        env = dict(os.environ, SLUICE_BENCH_KEY=CLIENT_KEY,
                   SLUICE_SESSION_SECRET=secrets.token_hex(32))
        services["sluice"] = Service("sluice", [str(args.sluice_bin), "--config", str(config)],
                                     work, env)
        wait_until("sluice /readyz", lambda: http("GET", f"http://127.0.0.1:{admin}/readyz")[0]
                   == 200, services["sluice"])
        targets["sluice"] = Target("sluice", f"http://127.0.0.1:{port}/v1/messages", CLIENT_KEY)
    return services, {p: targets[p] for p in args.paths}, stats_url


# ---------------------------------------------------------------- report


def added(m: Measurement, direct: Measurement | None, kind: str, quantile: str) -> float | None:
    if direct is None or m is direct:
        return None
    a, b = m.ms(kind, quantile), direct.ms(kind, quantile)
    return None if a is None or b is None else a - b


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "n/a (in no round did the floor add a measurable latency)"
    return "met" if ratio <= TARGET_RATIO else "**missed**"


def scenario_table(scenario: Scenario, rounds: list[list[Measurement]]) -> tuple[str, list[str]]:
    """The table of one scenario (a row per path and round), and its lines for the summary of
    targets: each round's Sluice ÷ floor ratio, the verdict on their median."""
    kind = "first_byte_ms" if scenario.stream else "total_ms"
    what = "time to first byte" if scenario.stream else "latency"
    header = (f"| path | {what} p50 ms | p99 | p99.9 | added p50 | added p99 "
              + ("| whole answer p50 ms | p99 " if scenario.stream else "")
              + "| requests (achieved RPS) | errors | CPU s/1k req: proxy / provider / load "
              "| provider conns opened | other load (cores) |")
    runs = f"{len(rounds)} rounds of " if len(rounds) > 1 else ""
    out = [f"### {scenario.name}, {runs}{scenario.duration:g} s per path", "", header,
           "|" + "---|" * (header.count("|") - 1)]
    added_ratios, abs_ratios, p99_ratios = [], [], []
    for number, rows in enumerate(rounds, 1):
        by_path = {m.path: m for m in rows}
        direct = by_path.get("direct")
        for m in sorted(rows, key=lambda m: PATHS.index(m.path)):
            r = m.report
            errors = str(r["errors"]) + (f" {r['error_kinds']}" if r["errors"] else "")
            cpu_proxy = fmt(m.cpu_per_1k.get(m.path), 3) if m.path != "direct" else "-"
            if m.path == "sluice" and "redis" in m.cpu_per_1k:
                # Redis serves only Sluice: its CPU is part of what Sluice costs.
                cpu_proxy += f" + redis {fmt(m.cpu_per_1k['redis'], 3)}"
            label = f"{m.path} #{number}" if len(rounds) > 1 else m.path
            cells = [label, fmt(m.ms(kind, "p50")), fmt(m.ms(kind, "p99")),
                     fmt(m.ms(kind, "p99.9")), fmt(added(m, direct, kind, "p50")) if direct
                     and m is not direct else "-",
                     fmt(added(m, direct, kind, "p99")) if direct and m is not direct else "-"]
            if scenario.stream:
                cells += [fmt(m.ms("total_ms", "p50")), fmt(m.ms("total_ms", "p99"))]
            cells += [f"{r['requests']} ({r['achieved_rps']:.0f})", errors,
                      f"{cpu_proxy} / {fmt(m.cpu_per_1k['upstream'], 3)} / "
                      f"{m.generator_per_1k:.3f}",
                      str(m.upstream_connections), f"{m.other_cores:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
        sluice, floor = by_path.get("sluice"), by_path.get("floor")
        if sluice and floor and direct:
            added_ratios.append(quotient(added(sluice, direct, kind, "p50"),
                                         added(floor, direct, kind, "p50")))
            p99_ratios.append(quotient(added(sluice, direct, kind, "p99"),
                                       added(floor, direct, kind, "p99")))
            abs_ratios.append(quotient(sluice.ms(kind, "p50"), floor.ms(kind, "p50")))
    summary = []
    if added_ratios:
        lines = [f"Added {what} p50, Sluice ÷ floor, per round: {listed(added_ratios)}. "
                 f"Added p99: {listed(p99_ratios)}."]
        if scenario.stream:
            lines.append(f"Time to first byte p50, Sluice ÷ floor, per round: "
                         f"{listed(abs_ratios)}.")
            summary.append(f"{scenario.name}: time to first byte p50 within {TARGET_RATIO}× "
                           f"the floor's: {verdict(median_ratio(abs_ratios))} "
                           f"({listed(abs_ratios)}; added: {listed(added_ratios)})")
        else:
            summary.append(f"{scenario.name}: added p50 within {TARGET_RATIO}× the floor's: "
                           f"{verdict(median_ratio(added_ratios))} ({listed(added_ratios)})")
        out += [""] + [line + "  " for line in lines[:-1]] + lines[-1:]
    sluice_runs = [m for rows in rounds for m in rows if m.path == "sluice"]
    if sluice_runs and not scenario.stream and scenario.rate >= 2000:
        errors = sum(m.report["errors"] for m in sluice_runs)
        requests = sum(m.report["requests"] for m in sluice_runs)
        summary.append(f"{scenario.name}: zero errors through Sluice: "
                       f"{'met' if errors == 0 else '**missed**'} "
                       f"({errors} errors in {requests})")
    background = max(m.other_cores for rows in rounds for m in rows)
    if background > 0.25:
        out += ["", f"**Warning:** other processes used up to {background:.2f} cores during "
                    f"these runs."]
    return "\n".join(out), summary


# ---------------------------------------------------------------- the run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="harness check: both kinds at 100 RPS for 2 s on each path; fails only "
                        "on errors or crashes; nothing written")
    p.add_argument("--paths", default=",".join(PATHS),
                   help="comma-separated subset of direct,floor,sluice (direct is required)")
    p.add_argument("--duration", type=float, help="seconds of each measured run (default 10)")
    p.add_argument("--rates", help="comma-separated rates, for both kinds (default 500,2000)")
    p.add_argument("--kinds", default="non-streamed,streamed",
                   help="comma-separated subset of non-streamed,streamed (default: both)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds per scenario: each measures every path, the floor and Sluice in "
                        "alternating order; the verdict is the median of the rounds' ratios")
    p.add_argument("--connections", type=int, default=64, help="load generator connections")
    p.add_argument("--threads", type=int, default=2,
                   help="worker threads of the provider and the floor (Sluice's default is 2)")
    p.add_argument("--stream-delay-ms", type=int, default=20,
                   help="the fake provider's wait between message_start and the other events")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument("--target-dir", type=Path,
                   default=Path(os.environ.get("CARGO_TARGET_DIR", "/work/target")),
                   help="cargo target directory (default: $CARGO_TARGET_DIR or /work/target)")
    p.add_argument("--sluice-bin", type=Path, help="default: TARGET_DIR/release/sluice")
    p.add_argument("--redis", action="store_true",
                   help="Sluice shares spend and limits through a redis-server the harness starts")
    p.add_argument("--record", action="store_true", help="append the results to perf/RESULTS.md")
    args = p.parse_args()
    args.paths = [x for x in args.paths.split(",") if x]
    if "direct" not in args.paths or any(x not in PATHS for x in args.paths):
        p.error("--paths must include direct (the baseline) and only direct, floor, sluice")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.sluice_bin = args.sluice_bin or args.target_dir / "release" / "sluice"
    return args


def scenarios(args) -> list[Scenario]:
    if args.quick:
        args.connections, args.warmup, args.rounds = 8, 0.5, 1
        return [Scenario(False, 100, 2), Scenario(True, 100, 2)]
    chosen = SCENARIOS
    if args.rates:
        rates = [int(r) for r in args.rates.split(",")]
        chosen = [Scenario(stream, rate, 10) for stream in (False, True) for rate in rates]
    if args.duration:
        chosen = [dataclasses.replace(s, duration=args.duration) for s in chosen]
    kinds = set(args.kinds.split(","))
    return [s for s in chosen if ("streamed" if s.stream else "non-streamed") in kinds]


def main() -> int:
    args = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_average = os.getloadavg()
    packages = ["sluice-perf"] + (["sluice"] if "sluice" in args.paths else [])
    build_cmd = ["(skipped: --no-build)"] if args.no_build else build(args.target_dir, packages)
    chosen = scenarios(args)
    work = Path(tempfile.mkdtemp(prefix="sluice-llm-bench-"))
    print(f"logs in {work}", flush=True)
    services: dict[str, Service] = {}
    try:
        bin_dir = args.target_dir / "release"
        services, targets, stats_url = start_services(args, bin_dir, work)
        load = Load(bin_dir / "perf-llm-load", args.connections, services, stats_url)
        tables, summary, failures, commands = [], [], [], {}
        for scenario in chosen:
            for target in targets.values():
                target.check(scenario)
            rounds = []
            for number in range(args.rounds):
                rows = []
                for path in round_order(list(targets), number):
                    target = targets[path]
                    if args.warmup > 0:
                        load.run(scenario, target, args.warmup)
                    m = load.run(scenario, target, scenario.duration)
                    rows.append(m)
                    commands[f"{scenario.name}, {path}"] = shlex.join(m.command)
                    r = m.report
                    print(f"{scenario.name:>26} {path:>6} #{number + 1}: {r['requests']} req "
                          f"({r['achieved_rps']:.0f}/s) first byte p50 "
                          f"{fmt(m.ms('first_byte_ms', 'p50'))} p99 "
                          f"{fmt(m.ms('first_byte_ms', 'p99'))}, whole p50 "
                          f"{fmt(m.ms('total_ms', 'p50'))} p99 {fmt(m.ms('total_ms', 'p99'))} "
                          f"ms, {r['errors']} errors, {m.upstream_connections} provider conns, "
                          f"other load {m.other_cores:.2f} cores", flush=True)
                    if r["errors"]:
                        failures.append(f"{scenario.name}, {path}: {r['errors']} errors "
                                        f"{r['error_kinds']}")
                    if r["ok"] == 0 or m.ms("total_ms", "p50") is None:
                        failures.append(f"{scenario.name}, {path}: no successful request")
                rounds.append(rows)
            table, lines = scenario_table(scenario, rounds)
            tables.append(table)
            summary += lines
        report = "\n\n".join(tables)
        if summary and not args.quick:  # the targets are for the full rates
            report += "\n\nTargets:\n\n" + "\n".join(f"- {line}" for line in summary)
        print("\n" + report + "\n")
        if failures and "sluice" in services:
            print(f"Sluice's log ({services['sluice'].log}), last warnings and errors:")
            print(log_problems(services["sluice"].log) or "  (none)")
        if args.record and not args.quick:
            record(started, load_average, args, build_cmd, services, commands, report, failures)
            print(f"appended to {RESULTS}")
        if args.quick:
            if failures:
                print("llm --quick FAILED:\n  " + "\n  ".join(failures))
                return 1
            print("llm --quick OK: every path answered both kinds with no errors")
        elif failures:
            print("errors (reported, not asserted):\n  " + "\n  ".join(failures))
        return 0
    except BenchError as e:
        print(f"llm bench FAILED: {e}", file=sys.stderr)
        if "sluice" in services:
            print(log_problems(services["sluice"].log), file=sys.stderr)
        return 1
    finally:
        for service in reversed(list(services.values())):
            service.stop()


def log_problems(log: Path, most: int = 20) -> str:
    """The last WARN and ERROR lines of a log, for a report that says what went wrong."""
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if " WARN " in line or " ERROR " in line]
    return "\n".join("  " + line for line in lines[-most:])


def record(started, load_average, args, build_cmd, services, commands, report,
           failures) -> None:
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC: LLM path (`POST /v1/messages`)",
        "",
        f"- Machine: {machine()}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in load_average)}",
        f"- Commit: {commit()}",
        f"- Load generator: perf-llm-load, {args.connections} connections, open loop from the "
        f"intended send time, exact percentiles; {args.warmup:g} s warm-up before each run; "
        f"{args.rounds} round(s) per scenario, the floor and Sluice in alternating order",
        f"- Fake provider: message_start at once, the rest after {args.stream_delay_ms} ms",
        f"- Run: `{shlex.join(['python3', 'perf/llm.py'] + sys.argv[1:])}`",
        f"- Build: `{shlex.join(build_cmd)}` (`CARGO_TARGET_DIR={args.target_dir}`)",
    ]
    lines += [f"- {name}: `{shlex.join(s.argv)}`" for name, s in services.items()]
    if "sluice" in services:
        lines[-1] += f" with `SLUICE_BENCH_KEY={CLIENT_KEY}`"
    lines += [f"- load, {name}: `{cmd}`" for name, cmd in commands.items()]
    config = getattr(args, "sluice_config", None)
    if config:
        lines += ["", "Sluice's configuration (the session secret is random per run):", "",
                  "```yaml", config.read_text().rstrip(), "```"]
    if failures:
        lines += ["", "**Errors:**", ""] + [f"- {f}" for f in failures]
    with open(RESULTS, "a") as out:
        out.write("\n" + "\n".join(lines) + "\n\n" + report + "\n")


if __name__ == "__main__":
    sys.exit(main())
