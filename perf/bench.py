#!/usr/bin/env python3
"""Sluice's load benchmark: one run, four paths, same scenarios.

Starts the fast upstream (perf-upstream), the floor (perf-floor, a bare Pingora proxy), nginx (a
reverse proxy with a keep-alive upstream pool) and Sluice in front of it, opens an MCP session on
each path, then drives a fixed request rate with oha (open loop, latency-corrected) to each path
in turn:

    direct  client -> upstream
    floor   client -> perf-floor -> upstream
    nginx   client -> nginx -> upstream
    sluice  client -> sluice -> upstream

For every scenario and path it records p50/p99/p99.9, errors, CPU seconds per 1,000 requests
(utime+stime from /proc/PID/stat), peak RSS (VmHWM, reset before each run) and TCP connections
opened to the upstream (perf-upstream's GET /stats), then searches for the highest fixed rate with
p99 under 10 ms and no errors.

    python3 perf/bench.py --quick      # a few seconds at a low rate; checks the harness only
    python3 perf/bench.py              # the full run; appends a dated block to perf/RESULTS.md

Standard library only. oha is installed with `cargo install` if it is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent
RESULTS = PERF_DIR / "RESULTS.md"
OHA_VERSION = "1.16.0"  # pinned: builds with rustc 1.95; its JSON output is what we parse
PROTOCOL_VERSION = "2025-11-25"
P99_LIMIT_MS = 10.0
BACKGROUND_LIMIT = 0.25  # cores used by other processes above which a run is flagged
UPSTREAM_TOOLS = 500
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATHS = ("direct", "floor", "nginx", "sluice")


@dataclasses.dataclass
class Scenario:
    name: str
    method: str
    tool: str | None  # tools/call target, without Sluice's prefix
    rate: int  # requests per second of the measured run
    duration: int  # seconds of the measured run
    search_rates: list[int]  # fixed rates tried, in order, for the maximum sustainable rate

    def body(self, request_id: int, prefix: str) -> str:
        message: dict = {"jsonrpc": "2.0", "id": request_id, "method": self.method, "params": {}}
        if self.tool == "small":
            message["params"] = {"name": prefix + "small", "arguments": {"text": "hello"}}
        elif self.tool == "large":
            message["params"] = {"name": prefix + "large", "arguments": {}}
        return json.dumps(message, separators=(",", ":"))


SCENARIOS = [
    Scenario("tools/call small", "tools/call", "small", 5000, 60,
             [1000, 2000, 3000, 5000, 7000, 10000, 15000, 20000, 25000, 30000, 40000]),
    Scenario("tools/call 100 KB", "tools/call", "large", 1000, 30,
             [250, 500, 1000, 2000, 3000, 5000, 7000, 10000, 15000]),
    Scenario(f"tools/list {UPSTREAM_TOOLS} tools", "tools/list", None, 200, 30,
             [50, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000]),
]


class BenchError(Exception):
    """A failure that stops the run; the message says what failed and where to look."""


# ---------------------------------------------------------------- processes and /proc


class Service:
    """A server process started for the run, with its log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        """The process and its children (nginx's workers); one process for the others."""
        pids = [self.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.pid:
                pids.append(int(stat.parent.name))
        return pids

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; "
                             f"log {self.log}:\n{tail}")

    def cpu_seconds(self) -> float:
        """utime+stime of every thread of the process (and of its children: nginx's workers)
        so far."""
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM so that the next reading is the peak of one run (Linux >= 4.0, needs
        permission on the process; ours are our children)."""
        try:
            for pid in self.tree():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def peak_rss_mb(self) -> float:
        """VmHWM, summed over the process and its children (nginx's master and workers)."""
        total = 0
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmHWM:")), 0)
        return total / 1024 if total else float("nan")

    def stop(self) -> None:
        # SIGINT: Pingora's fast shutdown (SIGTERM would wait out a grace period).
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent running something since boot (/proc/stat). Interrupt
    time is included: a process's stime includes the interrupt ticks that landed on it."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, service: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {timeout:.0f} s; log {service.log}")


# ---------------------------------------------------------------- HTTP and MCP


def http(method: str, url: str, body: str | None = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """One request; returns (status, lower-cased headers, body) for any status."""
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def json_rpc_message(headers: dict, body: bytes) -> dict:
    """The JSON-RPC answer in a JSON or an SSE (`data:` lines) response body."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        for event in body.decode(errors="replace").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.splitlines()
                             if line.startswith("data:"))
            if data:
                message = json.loads(data)
                if "result" in message or "error" in message:
                    return message
        raise ValueError("no JSON-RPC answer in the event stream")
    return json.loads(body)


@dataclasses.dataclass
class Target:
    """One path to the upstream, with its MCP session once opened."""

    path: str
    url: str
    tool_prefix: str
    bearer_key: str | None = None  # Sluice's virtual key, sent as Authorization: Bearer
    session_id: str | None = None

    def headers(self) -> dict:
        headers = {"Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": PROTOCOL_VERSION}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.bearer_key:
            headers["Authorization"] = f"Bearer {self.bearer_key}"
        return headers

    def post(self, body: str) -> tuple[int, dict, bytes]:
        return http("POST", self.url, body, self.headers())

    def open_session(self) -> None:
        """initialize, then notifications/initialized; every later request carries the id."""
        init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "sluice-bench", "version": "0.1.0"}}})
        headers = self.headers()
        headers.pop("MCP-Protocol-Version")  # not negotiated yet
        status, resp_headers, body = http("POST", self.url, init, headers)
        describe = f"{self.path}: POST {self.url} initialize -> {status} {body[:300]!r}"
        if status != 200:
            raise BenchError(describe)
        try:
            message = json_rpc_message(resp_headers, body)
        except ValueError as e:
            raise BenchError(f"{describe}: {e}") from e
        if "result" not in message:
            raise BenchError(describe)
        self.session_id = resp_headers.get("mcp-session-id")
        if not self.session_id:
            raise BenchError(f"{describe}: no Mcp-Session-Id header")
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        status, _, body = self.post(note)
        if status != 202:
            raise BenchError(f"{self.path}: POST {self.url} notifications/initialized "
                             f"-> {status} (want 202) {body[:300]!r}")

    def check(self, scenario: Scenario) -> str:
        """One request of the scenario, checked for content: oha sees only status codes, so a
        JSON-RPC error inside a 200 would otherwise pass as a success. Returns the content type."""
        request = scenario.body(1, self.tool_prefix)
        status, headers, body = self.post(request)
        describe = (f"{self.path}: POST {self.url} {request} -> {status} "
                    f"{headers.get('content-type')} {body[:300]!r}")
        try:
            result = json_rpc_message(headers, body)["result"]
            if scenario.tool == "small":
                ok = result["content"][0]["text"] == "echo: hello"
            elif scenario.tool == "large":
                ok = len(result["content"][0]["text"]) == 100 * 1024
            else:
                names = [t["name"] for t in result["tools"]]
                ok = (len(names) >= UPSTREAM_TOOLS
                      and f"{self.tool_prefix}small" in names and "nextCursor" not in result)
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        if status != 200 or not ok:
            raise BenchError(f"unexpected answer: {describe}")
        return headers.get("content-type", "")


# ---------------------------------------------------------------- load (oha)


def find_oha(target_dir: Path) -> str:
    for candidate in (shutil.which("oha"), Path.home() / ".cargo/bin/oha"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    print(f"oha not found: installing oha {OHA_VERSION} with cargo install", flush=True)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir / "oha-install"))
    # native-tls (system OpenSSL) builds faster than the default rustls + aws-lc; TLS is unused.
    subprocess.run(["cargo", "install", "--locked", "oha", "--version", OHA_VERSION,
                    "--no-default-features", "--features", "native-tls"], check=True, env=env)
    return str(Path.home() / ".cargo/bin/oha")


@dataclasses.dataclass
class LoadResult:
    rate: int
    requests: int
    achieved_rps: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    errors: int
    error_kinds: dict
    cpu_s: dict  # CPU seconds of each service during the run
    generator_cpu_s: float
    other_cores: float  # CPU used meanwhile by processes that are not ours, in cores
    command: list[str]

    def sustainable(self) -> bool:
        return (self.errors == 0 and self.p99_ms is not None and self.p99_ms < P99_LIMIT_MS
                and self.achieved_rps >= 0.95 * self.rate)


class Load:
    """Runs oha against one target: fixed rate, latency-corrected, keep-alive on."""

    def __init__(self, oha: str, connections: int, work_dir: Path, services: list[Service]):
        self.oha = oha
        self.connections = connections
        self.work_dir = work_dir
        self.services = services  # whose CPU is ours, not background load

    def bodies(self, scenario: Scenario, target: Target) -> Path:
        """Request bodies with distinct JSON-RPC ids; oha picks one line per request."""
        path = self.work_dir / f"bodies-{target.path}-{scenario.tool or 'list'}.jsonl"
        if not path.exists():
            lines = (scenario.body(i, target.tool_prefix) for i in range(1, 10001))
            path.write_text("\n".join(lines) + "\n")
        return path

    def command(self, scenario: Scenario, target: Target, rate: int, seconds: float) -> list[str]:
        argv = [self.oha, target.url, "-m", "POST", "-Z", str(self.bodies(scenario, target)),
                "-q", str(rate), "--latency-correction", "-z", f"{seconds}s", "-w",
                "-c", str(self.connections), "-t", "10s",
                "--no-tui", "--output-format", "json"]
        for name, value in target.headers().items():
            argv += ["-H", f"{name}: {value}"]
        return argv

    def run(self, scenario: Scenario, target: Target, rate: int, seconds: float) -> LoadResult:
        argv = self.command(scenario, target, rate, seconds)
        cpu_before = {s.name: s.cpu_seconds() for s in self.services}
        busy_before, started = machine_busy_seconds(), time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy, elapsed = machine_busy_seconds() - busy_before, time.monotonic() - started
        cpu = {s.name: s.cpu_seconds() - cpu_before[s.name] for s in self.services}
        generator = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if done.returncode != 0:
            raise BenchError(f"oha failed ({done.returncode}): {shlex.join(argv)}\n{done.stderr}")
        report = json.loads(done.stdout)
        statuses = {int(k): v for k, v in report["statusCodeDistribution"].items()}
        kinds = dict(report.get("errorDistribution", {}))
        kinds.update({f"HTTP {k}": v for k, v in statuses.items() if not 200 <= k < 300})
        requests = sum(statuses.values()) + sum(report.get("errorDistribution", {}).values())
        percentiles = report["latencyPercentiles"]

        def ms(key: str) -> float | None:
            value = percentiles.get(key)
            return None if value is None else value * 1000

        return LoadResult(
            rate=rate, requests=requests, achieved_rps=requests / report["summary"]["total"],
            p50_ms=ms("p50"), p99_ms=ms("p99"), p999_ms=ms("p99.9"),
            errors=sum(kinds.values()), error_kinds=kinds, cpu_s=cpu, generator_cpu_s=generator,
            other_cores=max(busy - generator - sum(cpu.values()), 0.0) / elapsed, command=argv)


# ---------------------------------------------------------------- one measured run


@dataclasses.dataclass
class Measurement:
    path: str
    load: LoadResult
    cpu_per_1k: dict  # process name -> CPU seconds per 1,000 requests
    peak_rss_mb: dict  # process name -> VmHWM during the run
    upstream_connections: int  # TCP connections the upstream accepted during the run
    content_type: str


def upstream_stats(url: str) -> dict:
    return json.loads(http("GET", url)[2])


def measure(load: Load, scenario: Scenario, target: Target, services: list[Service],
            stats_url: str, rate: int, seconds: float, warmup: float,
            content_type: str) -> Measurement:
    """Warm up (fills connection pools), then one measured run with /proc and /stats around it."""
    if warmup > 0:
        load.run(scenario, target, rate, warmup)
    for service in services:
        service.reset_peak_rss()
    conns_before = upstream_stats(stats_url)["connections_accepted"]
    result = load.run(scenario, target, rate, seconds)
    # Less one: the /stats request that reads the count is itself a new connection.
    conns = upstream_stats(stats_url)["connections_accepted"] - conns_before - 1
    for service in services:
        service.check_alive()
    kreq = max(result.requests, 1) / 1000
    return Measurement(
        path=target.path, load=result,
        cpu_per_1k={s.name: result.cpu_s[s.name] / kreq for s in services},
        peak_rss_mb={s.name: s.peak_rss_mb() for s in services},
        upstream_connections=conns, content_type=content_type)


def max_sustainable(load: Load, scenario: Scenario, target: Target, seconds: float
                    ) -> tuple[int | None, LoadResult | None]:
    """Highest rate of scenario.search_rates that is sustainable, and the first that is not."""
    best = None
    for rate in scenario.search_rates:
        result = load.run(scenario, target, rate, seconds)
        if not result.sustainable():
            return best, result
        best = rate
    return best, None


# ---------------------------------------------------------------- the run


def build(target_dir: Path, packages: list[str]) -> list[str]:
    argv = ["cargo", "build", "--release"] + [a for p in packages for a in ("-p", p)]
    print("$", shlex.join(argv), flush=True)
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(argv, cwd=REPO, check=True, env=env)
    return argv


def sluice_config(listen: int, admin: int, upstream: int, audit: Path, *, top: str = "",
                  mcp: str = "", keys: str = "") -> str:
    """Sluice as deployed: one virtual key (from the environment) granted every tool, and the
    audit log on, so the measured path includes authentication, policy and audit. `top`, `mcp`
    and `keys` are extra YAML lines (indented as they go) for the harnesses built on this one."""
    return f"""listen: [ {{ address: 127.0.0.1:{listen} }} ]
admin: {{ address: 127.0.0.1:{admin} }}
{top}mcp:
  page_size: 1000
{mcp}  servers:
    - name: fast
      http: {{ url: "http://127.0.0.1:{upstream}/mcp" }}
keys:
  - name: bench
    key: ${{SLUICE_BENCH_KEY}}
    tools: ["*"]
{keys}audit:
  path: {audit}
"""


def start_redis(work: Path) -> tuple["Service", str]:
    """A redis-server on a free port for `--redis` runs, and the YAML lines that make Sluice
    share its counted state through it (the bench key gets a request limit it never reaches,
    so every request is counted in Redis)."""
    port = free_port()
    redis = Service("redis", ["redis-server", "--port", str(port), "--save", "",
                              "--appendonly", "no"], work)
    wait_until("redis-server", lambda: socket.create_connection(("127.0.0.1", port), 1).close()
               or True, redis)
    return redis, f"state: {{ redis: {{ url: \"redis://127.0.0.1:{port}\" }} }}\n"


REDIS_KEY_LINES = "    rate_limit: { requests_per_minute: 1000000000 }\n"


def find_nginx(explicit: Path | None) -> str | None:
    """nginx from --nginx-bin, PATH, or where Debian puts it (/usr/sbin, not on a user's PATH)."""
    candidates = [explicit] if explicit else [shutil.which("nginx"), "/usr/sbin/nginx",
                                              "/usr/local/nginx/sbin/nginx"]
    return next((str(c) for c in candidates if c and os.access(c, os.X_OK)), None)


def nginx_config(prefix: Path, listen: int, upstream: int, workers: int) -> str:
    """nginx as a reviewer would set it up in front of one HTTP/1.1 upstream: a keep-alive pool
    of 64 connections (`keepalive`, HTTP/1.1 and an empty Connection header to the upstream),
    one worker per core like the floor's threads, no access log. Everything it writes (pid,
    error log, temporary files) stays in `prefix`, so it runs without root. Two settings keep
    the comparison like for like with Pingora, which neither caps requests per connection nor
    spools answers to disk: `keepalive_requests` is raised on both sides (default 1000), and
    `proxy_max_temp_file_size 0` makes a large answer wait for the client in memory buffers
    instead of a temporary file."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers otherwise run as nobody
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}
    upstream perf_upstream {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://perf_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def start_services(args, bin_dir: Path, work: Path) -> tuple[dict, dict, str]:
    """Upstream, floor, nginx and Sluice (as asked by --paths); returns services, targets, stats
    URL."""
    up_port, floor_port = free_port(), free_port()
    services: dict[str, Service] = {}
    services["upstream"] = Service("upstream", [
        str(bin_dir / "perf-upstream"), "--listen", f"127.0.0.1:{up_port}",
        "--tools", str(UPSTREAM_TOOLS), "--threads", str(args.threads)], work)
    stats_url = f"http://127.0.0.1:{up_port}/stats"
    wait_until("perf-upstream", lambda: http("GET", stats_url)[0] == 200, services["upstream"])
    targets = {"direct": Target("direct", f"http://127.0.0.1:{up_port}/mcp", "")}
    if "floor" in args.paths:
        services["floor"] = Service("floor", [
            str(bin_dir / "perf-floor"), "--listen", f"127.0.0.1:{floor_port}",
            "--upstream", f"127.0.0.1:{up_port}", "--threads", str(args.threads)], work)
        wait_until("perf-floor", lambda: http("GET", f"http://127.0.0.1:{floor_port}/stats")[0]
                   == 200, services["floor"])
        targets["floor"] = Target("floor", f"http://127.0.0.1:{floor_port}/mcp", "")
    if "nginx" in args.paths:
        port, prefix = free_port(), work / "nginx"
        prefix.mkdir()
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(prefix, port, up_port, args.threads))
        args.nginx_config = config  # recorded in RESULTS.md
        services["nginx"] = Service("nginx", [
            args.nginx_bin, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
            work)
        wait_until("nginx", lambda: http("GET", f"http://127.0.0.1:{port}/stats")[0] == 200,
                   services["nginx"])
        targets["nginx"] = Target("nginx", f"http://127.0.0.1:{port}/mcp", "")
    if "sluice" in args.paths:
        port, admin = free_port(), free_port()
        config = work / "sluice.yaml"
        top = keys = ""
        if args.redis:
            services["redis"], top = start_redis(work)
            keys = REDIS_KEY_LINES
        config.write_text(sluice_config(port, admin, up_port, work / "audit.jsonl", top=top,
                                        keys=keys))
        args.sluice_config = config  # recorded in RESULTS.md
        argv = [str(args.sluice_bin)] + [a.replace("{config}", str(config))
                                         for a in shlex.split(args.sluice_args)]
        key = secrets.token_urlsafe(24)
        env = dict(os.environ, SLUICE_BENCH_KEY=key, SLUICE_SESSION_SECRET=secrets.token_hex(32))
        services["sluice"] = Service("sluice", argv, work, env)
        wait_until("sluice /readyz", lambda: http("GET", f"http://127.0.0.1:{admin}/readyz")[0]
                   == 200, services["sluice"])
        targets["sluice"] = Target("sluice", f"http://127.0.0.1:{port}/mcp", "fast__",
                                   bearer_key=key)
    return services, {p: targets[p] for p in args.paths}, stats_url


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def added(m: Measurement, direct: Measurement, attr: str) -> float | None:
    a, b = getattr(m.load, attr), getattr(direct.load, attr)
    return None if a is None or b is None else a - b


def scenario_table(scenario: Scenario, rounds: list[list[Measurement]], search: dict) -> str:
    """One scenario's table, a row per path and round, and each round's ratios of added
    latency (with their median when there are several rounds)."""
    runs = f", {len(rounds)} rounds" if len(rounds) > 1 else ""
    out = [f"### {scenario.name}: {scenario.rate} RPS for {scenario.duration:g} s{runs}", "",
           "| path | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | errors "
           "| CPU s/1k req: proxy / upstream / oha | peak RSS MB: proxy / upstream "
           "| upstream conns opened | other load (cores) | max rate (p99 < 10 ms) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    background = [m.load.other_cores for rows in rounds for m in rows]
    by_round = [{m.path: m for m in rows} for rows in rounds]
    for number, by_path in enumerate(by_round, 1):
        direct = by_path.get("direct")
        for m in sorted(by_path.values(), key=lambda m: PATHS.index(m.path)):
            proxy = m.path if m.path != "direct" else None
            cpu_proxy = fmt(m.cpu_per_1k.get(proxy), 3) if proxy else "-"
            rss_proxy = fmt(m.peak_rss_mb.get(proxy), 1) if proxy else "-"
            gen_cpu = m.load.generator_cpu_s / (max(m.load.requests, 1) / 1000)
            best, failed = search.get(m.path, (None, None))
            if m.path not in search or number > 1:
                max_rate = "not searched"
            elif failed:
                max_rate = (f"{best or '< ' + str(failed.rate)} (at {failed.rate}: p99 "
                            f"{fmt(failed.p99_ms)} ms, {failed.achieved_rps:.0f} RPS, "
                            f"{failed.errors} errors, other load {failed.other_cores:.2f})")
                background.append(failed.other_cores)
            else:
                max_rate = f"≥ {best} (every step passed)"
            adds = [fmt(added(m, direct, a)) if direct and m is not direct else "-"
                    for a in ("p50_ms", "p99_ms", "p999_ms")]
            errors = str(m.load.errors) + (f" {m.load.error_kinds}" if m.load.errors else "")
            label = f"{m.path} #{number}" if len(rounds) > 1 else m.path
            out.append(
                f"| {label} | {fmt(m.load.p50_ms)} | {fmt(m.load.p99_ms)} "
                f"| {fmt(m.load.p999_ms)} | {' | '.join(adds)} | {errors} "
                f"| {cpu_proxy} / {fmt(m.cpu_per_1k['upstream'], 3)} / {gen_cpu:.3f} "
                f"| {rss_proxy} / {fmt(m.peak_rss_mb['upstream'], 1)} "
                f"| {m.upstream_connections} | {m.load.other_cores:.2f} | {max_rate} |")
    names = {"sluice": "Sluice", "floor": "floor", "nginx": "nginx"}
    ratio_lines = []
    for a, b in (("sluice", "floor"), ("sluice", "nginx"), ("floor", "nginx")):
        parts = []
        for attr, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            ratios = [quotient(added(r[a], r["direct"], attr), added(r[b], r["direct"], attr))
                      for r in by_round if "direct" in r and a in r and b in r]
            if ratios:
                parts.append(f"{label} {listed(ratios)}")
        if parts:
            ratio_lines.append(f"Added latency, {names[a]} ÷ {names[b]}: " + "; ".join(parts)
                               + ".")
    if ratio_lines:
        out += [""] + [line + "  " for line in ratio_lines[:-1]] + ratio_lines[-1:]
    first = rounds[0] if rounds else []
    out += ["", "Answers: " + ", ".join(f"{m.path} `{m.content_type}`" for m in first) + "."]
    if max(background) > BACKGROUND_LIMIT:
        out += ["", f"**Warning:** other processes used up to {max(background):.2f} cores during "
                    "these runs; the numbers are not reliable."]
    return "\n".join(out)


def quotient(x: float | None, y: float | None) -> float | None:
    """x ÷ y; None when the denominator is zero or negative (below run-to-run noise)."""
    return x / y if x is not None and y is not None and y > 0 else None


def median_ratio(ratios: list[float | None]) -> float | None:
    """The median of the rounds that have a ratio; `None` when none has. A round whose
    denominator added nothing measurable has none, and says nothing either way: it may be a
    round where the direct path itself was slowed (both proxies' "added" latency negative) as
    well as one where the floor was free, so it is left out rather than counted as a pass."""
    known = [x for x in ratios if x is not None]
    return statistics.median(known) if known else None


def listed(ratios: list[float | None]) -> str:
    """Rounds' ratios as `1.10×` (`n/a` for a round without one), several with their median."""
    shown = ", ".join(f"{x:.2f}×" if x is not None else "n/a" for x in ratios)
    middle = median_ratio(ratios)
    return f"{shown} (median {middle:.2f}×)" if len(ratios) > 1 and middle is not None else shown


def round_order(paths: list[str], number: int) -> list[str]:
    """The paths of round `number`: direct first, then the others, reversed every other round
    so that no proxy always runs right after another."""
    rest = [p for p in paths if p != "direct"]
    return ["direct"] + (rest if number % 2 == 0 else rest[::-1])


def machine() -> str:
    cpus = [line.split(":", 1)[1].strip() for line in
            Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return (f"nproc {os.cpu_count()}, CPU {cpus[0] if cpus else 'unknown'}, "
            f"{mem_kb / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}")


def commit() -> str:
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""
    head = git("rev-parse", "HEAD") or "no commit yet"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def parse_args() -> argparse.Namespace:
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", "/work/target"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="harness check: tools/call small at a low rate for a few seconds on each "
                        "path; no search, nothing written to RESULTS.md")
    p.add_argument("--paths", default=",".join(PATHS),
                   help="comma-separated subset of direct,floor,nginx,sluice (default: all; "
                        "nginx is left out, with a note, when it is not installed)")
    p.add_argument("--scenarios", default="small,large,list",
                   help="comma-separated subset of small,large,list")
    p.add_argument("--duration", type=float,
                   help="seconds of each measured run (default: 60 small, 30 large and list)")
    p.add_argument("--rate", type=int,
                   help="requests per second of every scenario (default: 5000 small, 1000 large, "
                        "200 list); a low rate shows the latency of a gateway that is mostly idle")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds per scenario: each measures every path, the proxies in "
                        "alternating order, and gives its own ratios (with their median); on a "
                        "shared machine, paths measured in one round met the same neighbours")
    p.add_argument("--connections", type=int, default=64, help="oha connections (-c)")
    p.add_argument("--threads", type=int, default=2,
                   help="worker threads of the upstream and the floor (Sluice's default is 2)")
    p.add_argument("--search-step", type=float, default=5.0,
                   help="seconds of each run of the maximum-rate search")
    p.add_argument("--no-search", action="store_true", help="skip the maximum-rate search")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument("--target-dir", type=Path, default=target_dir,
                   help="cargo target directory (default: $CARGO_TARGET_DIR or /work/target)")
    p.add_argument("--sluice-bin", type=Path, help="default: TARGET_DIR/release/sluice")
    p.add_argument("--nginx-bin", type=Path,
                   help="default: nginx on PATH, else /usr/sbin/nginx (Debian's nginx package)")
    p.add_argument("--sluice-args", default="--config {config}",
                   help="Sluice's arguments; {config} is the generated configuration file")
    p.add_argument("--redis", action="store_true",
                   help="Sluice shares its counted state through a redis-server the harness starts "
                        "(every request counted against a request limit)")
    p.add_argument("--no-record", action="store_true", help="do not append to perf/RESULTS.md")
    args = p.parse_args()
    args.paths = [x for x in args.paths.split(",") if x]
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    if "direct" not in args.paths or any(x not in PATHS for x in args.paths):
        p.error("--paths must include direct (the baseline) and only direct, floor, nginx, "
                "sluice")
    if any(x not in ("small", "large", "list") for x in args.scenarios):
        p.error("--scenarios takes small, large, list")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.sluice_bin = args.sluice_bin or args.target_dir / "release" / "sluice"
    args.notes = []
    if "nginx" in args.paths:
        args.nginx_bin = find_nginx(args.nginx_bin)
        if args.nginx_bin is None:
            args.paths.remove("nginx")
            args.notes.append("nginx is not installed (`apt-get install nginx`, or `make "
                              "system-deps`): the nginx path was left out")
            print(f"note: {args.notes[-1]}", file=sys.stderr, flush=True)
    return args


def main() -> int:
    args = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_average = os.getloadavg()
    packages = ["sluice-perf"] + (["sluice"] if "sluice" in args.paths else [])
    build_cmd = (["(skipped: --no-build)"] if args.no_build else build(args.target_dir, packages))
    oha = find_oha(args.target_dir)
    oha_version = subprocess.run([oha, "--version"], capture_output=True, text=True).stdout.strip()
    if "nginx" in args.paths:
        done = subprocess.run([args.nginx_bin, "-v"], capture_output=True, text=True)
        args.nginx_version = (done.stderr or done.stdout).strip().removeprefix("nginx version: ")
    scenarios = [s for s in SCENARIOS if (s.tool or "list") in args.scenarios]
    if args.quick:
        scenarios = [dataclasses.replace(s, rate=100, duration=3) for s in scenarios
                     if s.tool == "small"]
        args.connections, args.warmup, args.no_search, args.rounds = 8, 0.5, True, 1
    else:
        if args.duration:
            scenarios = [dataclasses.replace(s, duration=args.duration) for s in scenarios]
        if args.rate:
            scenarios = [dataclasses.replace(s, rate=args.rate) for s in scenarios]

    work = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    print(f"logs and request files in {work}", flush=True)
    services: dict[str, Service] = {}
    try:
        services, targets, stats_url = start_services(args, args.target_dir / "release", work)
        for target in targets.values():
            target.open_session()
        load = Load(oha, args.connections, work, list(services.values()))
        tables, failures, commands, measurements = [], [], {}, []
        for scenario in scenarios:
            rounds, search, checked = [], {}, {}
            for path, target in targets.items():
                try:
                    checked[path] = target.check(scenario)
                except BenchError as e:
                    failures.append(f"{scenario.name}: {e}")
                    print(f"FAIL {failures[-1]}", flush=True)
            for number in range(args.rounds):
                rows = []
                for path in round_order([p for p in targets if p in checked], number):
                    target = targets[path]
                    procs = [services["upstream"]] + ([services[path]] if path in services
                                                      else [])
                    m = measure(load, scenario, target, procs, stats_url, scenario.rate,
                                scenario.duration, args.warmup, checked[path])
                    rows.append(m)
                    measurements.append(m)
                    command = shlex.join(m.load.command)
                    if target.bearer_key:  # a fresh random key: recorded as where it came from
                        command = command.replace(
                            f"'Authorization: Bearer {target.bearer_key}'",
                            '"Authorization: Bearer $SLUICE_BENCH_KEY"')
                    commands[f"{scenario.name}, {path}"] = command
                    print(f"{scenario.name:>22} {path:>6} #{number + 1}: {m.load.requests} req "
                          f"({m.load.achieved_rps:.0f}/s) p50 {fmt(m.load.p50_ms)} "
                          f"p99 {fmt(m.load.p99_ms)} p99.9 {fmt(m.load.p999_ms)} ms, "
                          f"{m.load.errors} errors, {m.upstream_connections} upstream conns, "
                          f"other load {m.load.other_cores:.2f} cores",
                          flush=True)
                    if m.load.errors:
                        failures.append(f"{scenario.name}, {path}: {m.load.errors} errors "
                                        f"{m.load.error_kinds}")
                    if not args.no_search and number == 0:
                        search[path] = max_sustainable(load, scenario, target, args.search_step)
                        print(f"{'':>22} {path:>6}: max sustainable rate {search[path][0]}",
                              flush=True)
                if rows:
                    rounds.append(rows)
            if rounds:
                tables.append(scenario_table(scenario, rounds, search))
        for service in services.values():
            service.check_alive()
        report = "\n\n".join(tables)
        print("\n" + report + "\n")
        if args.quick:
            measured = {m.path for m in measurements}
            failures += [f"{p}: not measured" for p in targets if p not in measured]
            failures += [f"{m.path}: latency numbers missing" for m in measurements
                         if None in (m.load.p50_ms, m.load.p99_ms) or not m.load.requests]
            if failures:
                print("bench --quick FAILED:\n  " + "\n  ".join(failures))
                return 1
            print("bench --quick OK: every path answered with latency numbers and no errors"
                  + "".join(f" ({note})" for note in args.notes))
            return 0
        if not args.no_record:
            record(started, load_average, args, build_cmd, oha_version, services, commands,
                   report, failures)
            print(f"appended to {RESULTS}")
        return 1 if failures else 0
    except BenchError as e:
        print(f"bench FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(list(services.values())):
            service.stop()


def record(started, load_average, args, build_cmd, oha_version, services, commands, report,
           failures) -> None:
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine()}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in load_average)}",
        f"- Commit: {commit()}",
        f"- Load generator: {oha_version}, {args.connections} connections, open loop with "
        f"`--latency-correction`, {args.warmup:g} s warm-up before each run, {args.rounds} "
        f"round(s) per scenario, the proxies in alternating order; max rate: "
        f"{args.search_step:g} s per step",
        f"- Run: `{shlex.join(['python3', 'perf/bench.py'] + sys.argv[1:])}`",
        f"- Build: `{shlex.join(build_cmd)}`",
    ]
    if getattr(args, "nginx_version", None):
        lines.append(f"- nginx: {args.nginx_version} (`{args.nginx_bin}`)")
    lines += [f"- {name}: `{shlex.join(s.argv)}`" for name, s in services.items()]
    lines += [f"- oha, {name}: `{cmd}`" for name, cmd in commands.items()]
    config = getattr(args, "sluice_config", None)
    if config:
        lines += ["", "Sluice's configuration (the key and session secret are random per run):",
                  "", "```yaml", config.read_text().rstrip(), "```"]
    config = getattr(args, "nginx_config", None)
    if config:
        lines += ["", "nginx's configuration:", "", "```nginx", config.read_text().rstrip(), "```"]
    if args.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in args.notes]
    if failures:
        lines += ["", "**Failures:**", ""] + [f"- {f}" for f in failures]
    with open(RESULTS, "a") as out:
        out.write("\n" + "\n".join(lines) + "\n\n" + report + "\n")


if __name__ == "__main__":
    sys.exit(main())
