#!/usr/bin/env python3
"""Sluice under load through SIGHUP reloads and a graceful binary upgrade.

Starts the fast upstream (perf-upstream) and Sluice in front of it (as bench.py does, plus
`upgrade_sock` and `grace_period`), opens one MCP session, then drives `tools/call` of the
upstream's `small` tool at a fixed rate (open loop) over `--connections` kept-alive HTTP/1.1
connections, each closed by the client (`Connection: close`) after about `--per-conn` requests so
that new connections keep arriving while the listening socket changes hands. While the load
runs:

    t = 5 s    SIGHUP (configuration rewritten: one more virtual key, `reload-1`)
    t = 10 s   SIGHUP (`reload-2`)
    t = 15 s   binary upgrade: a second Sluice starts with `--upgrade` on the same configuration
               file and session secret; once it waits on `upgrade_sock`, `--probes` slow requests
               are opened, then the first Sluice gets SIGQUIT: it hands its listening sockets
               over, keeps serving for Pingora's 5 s, then stops accepting (closing its idle
               kept-alive connections), drains for `grace_period` and exits. The slow requests'
               bodies are completed half-way through that grace period: the old process must
               still answer them.
    later      SIGHUP to the new process (`reload-3`), once the old one has exited

Each reload is checked through the API: the new key is refused before and accepted after.

The load generator is written here (asyncio, raw HTTP/1.1) rather than oha, because oha sees
status codes only and cannot tell a kept-alive connection the server closed before reading the
request from a request that failed. Every request is counted:

- **ok**: status 200, a JSON-RPC result with the request's own id and the echo of the request's
  own text.
- **failed**: any other answer (a non-200 status, a JSON-RPC error, a wrong or unreadable body),
  a connect error, a timeout (`--timeout`), a connection that broke after any byte of the answer
  came, or a connection opened for this request that broke before the answer.
- **retried**: a request sent on a kept-alive connection that the server closed (EOF or reset)
  before a single byte of an answer came back. That is the ordinary keep-alive race (the server
  closed an idle connection as the request was being written); the request is sent again, once,
  on a new connection, with the same JSON-RPC id, and counted by the outcome of that second
  attempt. Every such event is listed. Had the server processed the first attempt, the audit
  log would hold its id twice, and the run fails.

At the end: failed must be 0; every request scheduled must have been answered; the audit log
(shared by both processes) must be valid JSON lines holding each successful request's id
exactly once and no other id; the old process must have exited with 0 after logging "listener
sockets sent"; the new one must still answer, then stop with 0 (its audit drained). Which
process answered each connection is read from /proc (the server end of the TCP connection is a
descriptor of one of the two processes), so the summary shows how many requests each process
answered, and the exact audit match covers both processes' records.

    python3 perf/upgrade.py                       # 1,500 RPS for 40 s
    python3 perf/upgrade.py --rate 2000 --duration 45 --no-build

Standard library only; shares bench.py's process, HTTP and MCP helpers. Prints a summary (a
RESULTS.md section) and writes nothing in the repository. Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import hashlib
import json
import os
import random
import secrets
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import sluice_config as bench_sluice_config  # noqa: E402
from bench import (  # noqa: E402  (bench.py sits next to this file)
    PROTOCOL_VERSION,
    UPSTREAM_TOOLS,
    BenchError,
    Service,
    Target,
    build,
    commit,
    free_port,
    http,
    json_rpc_message,
    machine,
    wait_until,
)

LOAD_ID_BASE = 1_000_000  # JSON-RPC ids of the load; checks made by the script use small ids
PROBE_ID_BASE = 900_000  # JSON-RPC ids of the requests in flight across the old one's shutdown
MARKERS = {  # ends of log lines whose times make the handover's timeline
    "SIGQUIT received, sending socks and gracefully exiting": "old: SIGQUIT received",
    "listener sockets sent": "old: listener sockets sent",
    "Graceful shutdown started!": "old: stops accepting (shutdown broadcast, idle "
                                  "kept-alive connections closed)",
    "Graceful shutdown: grace period ends": "old: grace period ends",
    " stopped": "old: stopped (audit drained)",
}


# ---------------------------------------------------------------- configuration


def sluice_config(listen: int, admin: int, upstream: int, audit: Path, sock: Path,
                  grace: int, reload_keys: list[str]) -> str:
    """bench.py's Sluice (one key granted every tool, audit on) plus the upgrade socket and the
    grace period; each reload adds a key (`reload-N`, by hash), the change a reload is checked
    by."""
    extra = "".join(
        f"  - name: reload-{n}\n"
        f"    key_sha256: {hashlib.sha256(key.encode()).hexdigest()}\n"
        f"    tools: [\"fast__small\"]\n"
        for n, key in enumerate(reload_keys, 1))
    return bench_sluice_config(listen, admin, upstream, audit,
                               top=f"grace_period: {grace}s\nupgrade_sock: {sock}\n", keys=extra)


def call_body(rid: int) -> str:
    """tools/call of the upstream's `small` tool; it answers `echo: u<rid>`."""
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {
        "name": "fast__small", "arguments": {"text": f"u{rid}"}}}, separators=(",", ":"))


def answer_problem(rid: int, status: int, headers: dict, body: bytes) -> str | None:
    """None if the answer is request `rid`'s own success, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        message = json_rpc_message(headers, body)
    except ValueError as e:
        return f"unreadable body ({e}): {body[:300]!r}"
    if "error" in message:
        return f"JSON-RPC error: {json.dumps(message['error'])[:300]}"
    try:
        text = message["result"]["content"][0]["text"]
    except (KeyError, IndexError, TypeError):
        return f"unexpected result: {body[:300]!r}"
    if message.get("id") != rid or text != f"echo: u{rid}" or message["result"].get("isError"):
        return f"not this request's answer (id {message.get('id')}, text {text!r})"
    return None


def key_accepted(url: str, key: str) -> bool:
    """Whether Sluice takes `key`: an initialize with it answers 200 (401 before the reload)."""
    init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
        "clientInfo": {"name": "sluice-upgrade", "version": "0.1.0"}}})
    status, _, _ = http("POST", url, init, {
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {key}"}, timeout=5)
    return status == 200


# ---------------------------------------------------------------- which process holds a socket


def server_process(server_port: int, client_port: int, pids: dict[str, int]) -> str:
    """The name in `pids` of the process holding the server end of the loopback connection
    from `client_port`, or "unknown" (already closed, or not found)."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == local and fields[2] == remote:
                    inode = fields[9]
                    break
    except OSError:
        return "unknown"
    if not inode or inode == "0":
        return "unknown"
    target = f"socket:[{inode}]"
    for name, pid in pids.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return name
            except OSError:
                continue
    return "unknown"


# ---------------------------------------------------------------- the load generator


class Stale(Exception):
    """A kept-alive connection was closed before any byte of the answer came."""


class Failed(Exception):
    """The request failed; the message says how."""


class Conn:
    """One client connection, with what came back on it so far."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, serial: int):
        self.reader, self.writer, self.serial = reader, writer, serial
        self.buf = bytearray()
        self.port = writer.get_extra_info("sockname")[1]
        self.served = 0  # answers received on this connection
        self.server = None  # "old", "new" or "unknown", once the first answer came
        self.received = 0  # bytes of the current answer
        self.opened = 0.0  # UNIX time
        self.limit = 0  # requests before the client closes it

    async def fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.received += len(data)
        self.buf += data

    async def need(self, n: int) -> None:
        while len(self.buf) < n:
            await self.fill()

    async def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            await self.fill()
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    async def response(self) -> tuple[int, dict, bytes]:
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            await self.fill()
        head = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
        del self.buf[:i + 4]
        status = int(head[0].split()[1])
        headers = {}
        for h in head[1:]:
            name, _, value = h.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            await self.need(n)
            body = bytes(self.buf[:n])
            del self.buf[:n]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int((await self.line()).split(b";")[0], 16)
                if size == 0:
                    while await self.line():  # trailers, then the empty line
                        pass
                    break
                await self.need(size + 2)
                chunks.append(bytes(self.buf[:size]))
                del self.buf[:size + 2]
            body = b"".join(chunks)
        else:  # delimited by the end of the connection
            try:
                while True:
                    await self.fill()
            except EOFError:
                pass
            body, headers["connection"] = bytes(self.buf), "close"
            self.buf.clear()
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


class Load:
    """tools/call small at a fixed rate over kept-alive connections; every request accounted."""

    def __init__(self, port: int, target: Target, rate: float, duration: float,
                 connections: int, per_conn: int, timeout: float, pids: dict[str, int]):
        self.port, self.rate, self.duration, self.per_conn = port, rate, duration, per_conn
        self.connections, self.timeout, self.pids = connections, timeout, pids
        self.total = int(rate * duration)
        headers = target.headers()
        headers["Host"] = f"127.0.0.1:{port}"
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.t0 = 0.0  # loop time of the first scheduled request
        self.t0_wall = 0.0
        self.ok_ids: list[int] = []
        self.ok_by_server: collections.Counter = collections.Counter()
        self.latencies: list[tuple[float, float]] = []  # (scheduled offset s, latency ms)
        self.failures: list[dict] = []
        self.stale: list[dict] = []
        self.closes_asked: collections.Counter = collections.Counter()  # by server
        self.server_closes: collections.Counter = collections.Counter()  # unasked, by server
        self.conns_opened: collections.Counter = collections.Counter()  # by server
        self.conn_log: list[tuple[float, str]] = []  # (UNIX time opened, server)
        self.serial = 0
        self.random = random.Random(0)
        self.started = 0  # requests taken by a worker
        self.max_queue = 0

    def request(self, rid: int, close: bool = False) -> bytes:
        body = call_body(rid)
        close_header = "Connection: close\r\n" if close else ""
        return (f"POST /mcp HTTP/1.1\r\n{self.head}{close_header}Content-Length: {len(body)}"
                f"\r\n\r\n{body}").encode()

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def connect(self) -> Conn:
        opened = time.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.serial += 1
        conn = Conn(reader, writer, self.serial)
        conn.opened = opened
        # Spread around per_conn, so that the connections do not all end at once.
        conn.limit = self.random.randint(max(2, self.per_conn // 2), self.per_conn * 3 // 2)
        return conn

    async def attempt(self, conn: Conn, rid: int, fresh: bool, close: bool
                      ) -> tuple[int, dict, bytes]:
        conn.received = 0
        try:
            conn.writer.write(self.request(rid, close))
            await conn.writer.drain()
            return await conn.response()
        except (EOFError, ConnectionError) as e:
            if not fresh and conn.received == 0:
                raise Stale(f"{type(e).__name__}: {e}") from e
            raise Failed(f"{type(e).__name__} after {conn.received} bytes of the answer"
                         f"{' on a new connection' if fresh else ''}: {e}") from e
        except (ValueError, IndexError) as e:
            raise Failed(f"unreadable HTTP answer: {e}") from e

    async def one(self, conn: Conn | None, rid: int, scheduled: float) -> Conn | None:
        """Send request `rid`; returns the connection to keep for the next one."""
        retried = None
        while True:
            fresh = conn is None
            if fresh:
                try:
                    conn = await asyncio.wait_for(self.connect(), self.timeout)
                except (OSError, asyncio.TimeoutError) as e:
                    self.fail(rid, scheduled, f"connect: {type(e).__name__}: {e}", None, retried)
                    return None
            # After about per_conn requests, a request asks the server to close it: new
            # connections keep coming, so both processes' accept paths are exercised.
            close = conn.served + 1 >= conn.limit
            try:
                status, headers, body = await asyncio.wait_for(
                    self.attempt(conn, rid, fresh, close), self.timeout)
            except Stale as e:
                retried = {"id": rid, "at_s": round(self.now(), 3), "error": str(e),
                           "server": conn.server, "answers_before_on_conn": conn.served}
                self.stale.append(retried)
                conn.close()
                conn = None
                continue
            except (Failed, asyncio.TimeoutError) as e:
                why = str(e) if isinstance(e, Failed) else f"no answer within {self.timeout} s"
                self.fail(rid, scheduled, why, conn, retried)
                conn.close()
                return None
            conn.served += 1
            if conn.served == 1:
                conn.server = server_process(self.port, conn.port, self.pids)
                self.conns_opened[conn.server] += 1
                self.conn_log.append((conn.opened, conn.server))
            problem = answer_problem(rid, status, headers, body)
            if problem:
                self.fail(rid, scheduled, problem, conn, retried)
            else:
                self.ok_ids.append(rid)
                self.ok_by_server[conn.server] += 1
                self.latencies.append((scheduled, (self.now() - scheduled) * 1000))
            if close or headers.get("connection", "").lower() == "close":
                (self.closes_asked if close else self.server_closes)[conn.server] += 1
                conn.close()
                return None
            return conn

    def fail(self, rid: int, scheduled: float, why: str, conn: Conn | None,
             retried: dict | None) -> None:
        if conn and conn.server is None:  # no answer yet on it: who holds it now
            conn.server = server_process(self.port, conn.port, self.pids)
        self.failures.append({"id": rid, "scheduled_s": round(scheduled, 3),
                              "at_s": round(self.now(), 3), "error": why,
                              "server": conn.server if conn else None,
                              "answers_before_on_conn": conn.served if conn else None,
                              "after_retry": retried is not None})
        print(f"  FAILED request {rid} at {self.now():.3f} s: {why}", flush=True)

    async def worker(self, queue: asyncio.Queue) -> None:
        conn = None
        while (item := await queue.get()) is not None:
            self.started += 1
            conn = await self.one(conn, *item)
        if conn:
            conn.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.connections)]
        self.t0, self.t0_wall = loop.time(), time.time()
        i = 0
        while i < self.total:
            due = min(self.total, int((loop.time() - self.t0) * self.rate) + 1)
            while i < due:
                queue.put_nowait((LOAD_ID_BASE + i, i / self.rate))
                i += 1
            self.max_queue = max(self.max_queue, queue.qsize())
            await asyncio.sleep(0.002)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        self.elapsed = loop.time() - self.t0


# ---------------------------------------------------------------- the run


def log_events(log: Path) -> list[tuple[float, str]]:
    """(UNIX time, line) of the log's lines that start with an RFC 3339 time."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        stamp = line.split(" ", 1)[0]
        try:
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        events.append((when, line))
    return events


async def wait_for(what: str, check, timeout: float, every: float = 0.02) -> float:
    """Poll `check` (blocking calls run in a thread) until true; returns the loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(check):
            return loop.time()
        await asyncio.sleep(every)
    raise BenchError(f"{what}: not within {timeout:g} s")


class Run:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.bin_dir = args.target_dir / "release"
        self.timeline: list[tuple[float, str]] = []  # (s since the load started, event)
        self.services: dict[str, Service] = {}
        self.reload_keys: list[str] = []
        self.reload_checks: list[str] = []
        self.probes: list[dict] = []
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_average = os.getloadavg()
        self.check_ids: list[int] = []  # tools/call made by the script itself, audited too

    def mark(self, load: Load, event: str) -> None:
        self.timeline.append((load.now(), event))
        print(f"  {load.now():7.3f} s  {event}", flush=True)

    def write_config(self) -> None:
        self.config.write_text(sluice_config(self.port, self.admin, self.up_port, self.audit,
                                             self.sock, self.args.grace, self.reload_keys))

    def start(self) -> None:
        self.up_port, self.port, self.admin = free_port(), free_port(), free_port()
        self.config, self.audit = self.work / "sluice.yaml", self.work / "audit.jsonl"
        self.sock = self.work / "upgrade.sock"
        self.services["upstream"] = Service("upstream", [
            str(self.bin_dir / "perf-upstream"), "--listen", f"127.0.0.1:{self.up_port}",
            "--tools", str(UPSTREAM_TOOLS), "--threads", "2"], self.work)
        stats = f"http://127.0.0.1:{self.up_port}/stats"
        wait_until("perf-upstream", lambda: http("GET", stats)[0] == 200,
                   self.services["upstream"])
        self.write_config()
        self.key = secrets.token_urlsafe(24)
        # pingora_core at info: its upgrade and shutdown steps are the handover's timeline.
        self.env = dict(os.environ, SLUICE_BENCH_KEY=self.key,
                        SLUICE_SESSION_SECRET=secrets.token_hex(32),
                        SLUICE_LOG="info,pingora_proxy=warn")
        self.argv = [str(self.args.sluice_bin), "--config", str(self.config)]
        self.services["old"] = Service("sluice-old", self.argv, self.work, self.env)
        wait_until("sluice /readyz", lambda: http(
            "GET", f"http://127.0.0.1:{self.admin}/readyz")[0] == 200, self.services["old"])
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.target = Target("sluice", self.url, "fast__", bearer_key=self.key)
        self.target.open_session()
        # One checked call before the load (also proves the echo check right); audited too.
        self.check_ids.append(1)
        problem = answer_problem(1, *self.target.post(call_body(1)))
        if problem:
            raise BenchError(f"check call before the load: {problem}")

    async def reload(self, load: Load, name: str) -> None:
        """Rewrite the configuration with one more key, SIGHUP `name`, wait until the key is
        taken."""
        key = secrets.token_urlsafe(24)
        if await asyncio.to_thread(key_accepted, self.url, key):
            raise BenchError("a key not yet configured was accepted")
        self.reload_keys.append(key)
        self.write_config()
        service = self.services[name]
        service.proc.send_signal(signal.SIGHUP)
        self.mark(load, f"SIGHUP {len(self.reload_keys)} -> {name} (pid {service.pid})")
        done = await wait_for(f"reload {len(self.reload_keys)} of {name}",
                              lambda: key_accepted(self.url, key), 5)
        self.mark(load, f"reload {len(self.reload_keys)} applied: key reload-"
                        f"{len(self.reload_keys)} accepted")
        self.reload_checks.append(f"reload-{len(self.reload_keys)} on {name}: accepted "
                                  f"{(done - load.t0 - self.timeline[-2][0]) * 1000:.0f} ms "
                                  f"after SIGHUP")

    async def probe(self, load: Load, n: int, finish_at: float) -> dict:
        """A tools/call in flight across the old process's shutdown: its connection is opened
        while only the old process accepts, its body is sent a byte every 0.5 s and completed
        at `finish_at` (loop time), inside the old process's grace period. The old process must
        answer it."""
        loop = asyncio.get_running_loop()
        rid = PROBE_ID_BASE + n
        body = call_body(rid).encode()
        result: dict = {"id": rid, "server": None, "error": None}
        conn = None
        try:
            conn = await asyncio.wait_for(load.connect(), 5)
            conn.writer.write(f"POST /mcp HTTP/1.1\r\n{load.head}Content-Length: {len(body)}"
                              f"\r\n\r\n".encode() + body[:8])
            await conn.writer.drain()
            await asyncio.sleep(0.2)
            result["server"] = server_process(load.port, conn.port, load.pids)
            rest = body[8:]
            while len(rest) > 1 and loop.time() < finish_at - 0.5:
                await asyncio.sleep(0.5)
                conn.writer.write(rest[:1])
                rest = rest[1:]
                await conn.writer.drain()
            await asyncio.sleep(max(0.0, finish_at - loop.time()))
            conn.writer.write(rest)
            await conn.writer.drain()
            result["body_done_wall"] = time.time()
            status, headers, answer = await asyncio.wait_for(conn.response(), load.timeout)
            result["answered_wall"] = time.time()
            result["error"] = answer_problem(rid, status, headers, answer)
        except (OSError, EOFError, asyncio.TimeoutError, ValueError, IndexError) as e:
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            if conn:
                conn.close()
        return result

    async def upgrade(self, load: Load) -> None:
        old = self.services["old"]
        self.services["new"] = new = Service("sluice-new", self.argv + ["--upgrade"],
                                             self.work, self.env)
        load.pids["new"] = new.pid
        self.mark(load, f"new process started with --upgrade (pid {new.pid})")
        await wait_for("the new process listening on upgrade_sock", self.sock.exists, 10)
        self.mark(load, "new process waits on upgrade_sock")
        # Pingora keeps serving 5 s after SIGQUIT, then stops accepting: the probes' bodies
        # are complete half-way through the grace period that follows.
        loop = asyncio.get_running_loop()
        finish_at = loop.time() + 0.3 + 5 + self.args.grace / 2
        probes = [asyncio.create_task(self.probe(load, n, finish_at))
                  for n in range(self.args.probes)]
        await asyncio.sleep(0.3)
        if self.args.probes:
            self.mark(load, f"{self.args.probes} slow requests opened (bodies complete "
                            f"{finish_at - loop.time():.1f} s after SIGQUIT)")
        self.sigquit_wall = time.time()
        old.proc.send_signal(signal.SIGQUIT)
        self.mark(load, f"SIGQUIT -> old (pid {old.pid})")
        await wait_for("old process: listener sockets sent",
                       lambda: "listener sockets sent" in old.log.read_text(errors="replace"), 15)
        self.mark(load, "old process logged: listener sockets sent")
        await wait_for("old process exit", lambda: old.proc.poll() is not None,
                       self.args.grace + 30, every=0.01)
        self.old_exit_wall = time.time()
        self.mark(load, f"old process exited with {old.proc.returncode}")
        self.probes = await asyncio.gather(*probes)

    async def control(self, load: Load) -> None:
        loop = asyncio.get_running_loop()

        async def until(second: float) -> None:
            await asyncio.sleep(max(0.0, load.t0 + second - loop.time()))

        await asyncio.sleep(0)
        for at in (5, 10):
            await until(at)
            await self.reload(load, "old")
        await until(15)
        await self.upgrade(load)
        await until(max(load.now() + 2, self.args.duration - 6))
        await self.reload(load, "new")

    async def drive(self) -> Load:
        load = Load(self.port, self.target, self.args.rate, self.args.duration,
                    self.args.connections, self.args.per_conn, self.args.timeout,
                    {"old": self.services["old"].pid})
        self.sigquit_wall = self.old_exit_wall = None
        loop = asyncio.get_running_loop()
        load.t0 = loop.time()  # control() reads it before run() sets it precisely
        runner = asyncio.create_task(load.run())
        controller = asyncio.create_task(self.control(load))
        done, _ = await asyncio.wait({runner, controller}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception():
                runner.cancel()
                controller.cancel()
                raise task.exception()
        await asyncio.gather(runner, controller)
        self.mark(load, "load finished")
        return load


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def audit_check(path: Path, ok_ids: list[int], failed_ids: list[int],
                sigquit_wall: float | None, old_exit_wall: float | None
                ) -> tuple[dict, list[str]]:
    """The audit log against the requests: each one answered with success has exactly one
    record, with status ok; nothing else is there but records of failed requests."""
    problems = []
    lines = path.read_text().splitlines() if path.exists() else []
    records, bad = [], 0
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad:
        problems.append(f"audit log: {bad} lines are not JSON (interleaved writes?)")
    calls = [r for r in records if r.get("method") == "tools/call"]
    got: collections.Counter = collections.Counter()
    status_of: dict = collections.defaultdict(list)
    for r in calls:
        try:
            rid = int(r.get("request_id"))
        except (TypeError, ValueError):
            rid = r.get("request_id")
        got[rid] += 1
        status_of[rid].append(r.get("status"))
    ok, failed = collections.Counter(ok_ids), set(failed_ids)
    missing = sorted((ok - got).elements(), key=str)
    duplicated = sorted((rid for rid in ok if got[rid] > 1), key=str)
    extra = sorted((rid for rid in got if rid not in ok and rid not in failed), key=str)
    of_failed = sorted((rid for rid in got if rid in failed), key=str)
    statuses = collections.Counter(st for rid in ok for st in status_of.get(rid, []))
    if missing:
        problems.append(f"audit log: {len(missing)} requests answered with success have no "
                        f"record (first ids {missing[:10]})")
    if duplicated:
        problems.append(f"audit log: {len(duplicated)} requests have more than one record "
                        f"(ids {duplicated[:10]}): a first attempt was processed")
    if extra:
        problems.append(f"audit log: {len(extra)} records of no request sent (ids {extra[:10]})")
    if set(statuses) - {"ok"}:
        problems.append(f"audit log: requests answered with success recorded as "
                        f"{dict(statuses)}")

    def kind(rid) -> str:
        if not isinstance(rid, int):
            return "other"
        return "load" if rid >= LOAD_ID_BASE else "probes" if rid >= PROBE_ID_BASE else "checks"

    kinds = collections.Counter()
    for rid, n in got.items():
        kinds[kind(rid)] += n

    def when(r: dict) -> float:
        return datetime.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()

    phases = collections.Counter()
    for r in calls:
        t = when(r)
        phases["before SIGQUIT (old)" if sigquit_wall and t < sigquit_wall else
               "after the old exited (new)" if old_exit_wall and t > old_exit_wall else
               "between (either)"] += 1
    return {"lines": len(lines), "tools_call": len(calls), "load": kinds["load"],
            "probes": kinds["probes"], "checks": kinds["checks"], "other": kinds["other"],
            "missing": len(missing), "extra": len(extra), "of_failed": len(of_failed),
            "failed_statuses": dict(collections.Counter(
                st for rid in of_failed for st in status_of[rid])),
            "duplicated": len(duplicated), "statuses": dict(statuses),
            "by_time": dict(phases)}, problems


def handover_times(run: Run) -> list[tuple[str, float]]:
    """(what, UNIX time) of the handover's steps, from both processes' logs."""
    if not run.sigquit_wall:
        return []
    steps, seen = [], set()
    for when, line in log_events(run.services["old"].log):
        for marker, label in MARKERS.items():
            if line.endswith(marker) and marker not in seen and when >= run.sigquit_wall - 1:
                seen.add(marker)
                steps.append((label, when))
    if run.old_exit_wall:
        steps.append(("old: process exit seen by the script", run.old_exit_wall))
    for when, line in log_events(run.services["new"].log):
        if line.endswith("Bootstrap done"):
            steps.append(("new: listening sockets received (Bootstrap done)", when))
            break
    return sorted(steps, key=lambda s: s[1])


def summarize(run: Run, load: Load, audit: dict, old_rc: int | None, new_rc: int | None,
              new_serving: bool, problems: list[str]) -> str:
    args = run.args
    lat = [ms for _, ms in load.latencies]
    q = run.sigquit_wall - load.t0_wall if run.sigquit_wall else None
    x = run.old_exit_wall - load.t0_wall if run.old_exit_wall else None
    window = [ms for s, ms in load.latencies if q is not None and x is not None and q <= s <= x]
    outside = [ms for s, ms in load.latencies if not (q is not None and x is not None
                                                      and q <= s <= x)]

    def p(values: list[float]) -> str:
        if not values:
            return "n/a"
        return (f"p50 {percentile(values, 0.5):.2f} / p99 {percentile(values, 0.99):.2f} / "
                f"max {max(values):.2f} ms")

    def by_server(counter: collections.Counter) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"

    steps = handover_times(run)
    handover = [f"{what} {when - run.sigquit_wall:+.3f} s" for what, when in steps]
    times = dict(steps)
    bounds = [("before SIGQUIT", run.sigquit_wall),
              ("SIGQUIT to the new one's bootstrap",
               times.get("new: listening sockets received (Bootstrap done)")),
              ("both hold the listening socket",
               times.get(MARKERS["Graceful shutdown started!"])),
              ("old one draining", run.old_exit_wall), ("old one gone", float("inf"))]
    windows = []
    for i, (label, until) in enumerate(bounds):
        since = bounds[i - 1][1] if i else 0.0
        if until is None or since is None:
            continue
        got = collections.Counter(srv for t, srv in load.conn_log if since <= t < until)
        windows.append(f"{label}: {by_server(got)}")
    stale_by = collections.Counter((s["server"], s["error"].split(":")[0]) for s in load.stale)
    probes = "; ".join(
        f"{pr['id']}: " + (f"FAILED {pr['error']}" if pr["error"] else "ok")
        + f", accepted by {pr['server']}"
        + (f", answered {pr['answered_wall'] - run.sigquit_wall:+.3f} s"
           if pr.get("answered_wall") else "")
        for pr in run.probes)
    out = [
        f"- Machine: {machine()}; load average at start "
        + ", ".join(f"{v:.2f}" for v in run.load_average),
        f"- Commit: {args.built_from or commit()}",
        f"- Run: `{shlex.join(['python3', 'perf/upgrade.py'] + sys.argv[1:])}`",
        f"- Date: {run.started:%Y-%m-%d %H:%M} UTC",
        f"- Load: tools/call `small` (perf-upstream) at {args.rate:g} RPS for {args.duration:g} s, "
        f"open loop, {args.connections} kept-alive HTTP/1.1 connections, each closed "
        f"(`Connection: close`) after {args.per_conn // 2}-{args.per_conn * 3 // 2} requests; "
        f"one MCP session for the whole run; timeout {args.timeout:g} s; Sluice grace_period "
        f"{args.grace} s",
        f"- Requests: {load.total} scheduled, {load.started} sent, {len(load.ok_ids)} ok, "
        f"**{len(load.failures)} failed**; achieved {len(load.ok_ids) / load.elapsed:.0f} RPS "
        f"over {load.elapsed:.1f} s (largest backlog {load.max_queue} requests)",
        f"- Answered by: {by_server(load.ok_by_server)}; connections opened, by the process "
        f"that accepted them: {by_server(load.conns_opened)}; by when they were opened: "
        + "; ".join(windows),
        f"- Connections closed by the client's `Connection: close`: "
        f"{by_server(load.closes_asked)}; answers with an unasked `Connection: close`: "
        f"{by_server(load.server_closes)}",
        f"- Retried (kept-alive connection closed by the server before any byte of the answer; "
        f"sent again on a new connection, same id): {len(load.stale)}"
        + (" (" + ", ".join(f"{n}× {err} on a connection of {srv}"
                            for (srv, err), n in stale_by.items()) + ")" if load.stale else ""),
        f"- In flight across the old process's shutdown ({len(run.probes)} requests whose body "
        f"was completed in its grace period): {probes or 'none'}",
        f"- Latency from the scheduled time: all {p(lat)}; scheduled between SIGQUIT and "
        f"the old process's exit {p(window)}; outside {p(outside)}",
        f"- Audit log (one file, both processes): {audit['lines']} lines, {audit['tools_call']} "
        f"tools/call = {audit['load']} load + {audit['probes']} in flight + {audit['checks']} "
        f"the script's checks + {audit['other']} other; of requests answered with success: "
        f"missing {audit['missing']}, duplicated {audit['duplicated']}, statuses "
        f"{audit['statuses']}; records of failed requests {audit['of_failed']}"
        f"{' ' + str(audit['failed_statuses']) if audit['of_failed'] else ''}; records of "
        f"nothing sent {audit['extra']}; "
        f"by record time: " + ", ".join(f"{k} {v}" for k, v in audit["by_time"].items()),
        f"- Reloads: " + "; ".join(run.reload_checks),
        f"- Old process exit code: {old_rc}; new process still serving at the end: "
        f"{'yes' if new_serving else 'NO'}, then stopped (SIGINT) with {new_rc}",
        "- Handover (from the SIGQUIT sent): " + "; ".join(handover),
        "- Timeline (s since the load started): "
        + "; ".join(f"{t:.3f} {e}" for t, e in run.timeline),
    ]
    if problems:
        out += ["", "**Failures:**", ""] + [f"- {x}" for x in problems]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", "/work/target"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1500, help="requests per second (default 1500)")
    p.add_argument("--duration", type=float, default=40,
                   help="seconds of load (default 40; the upgrade starts at 15 s and the old "
                        "process takes 5 s + grace_period to leave)")
    p.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    p.add_argument("--per-conn", type=int, default=100,
                   help="requests per connection before the client closes it, on average "
                        "(default 100; each connection draws from 50%%-150%% of it)")
    p.add_argument("--probes", type=int, default=4,
                   help="slow requests in flight across the old process's shutdown (default 4)")
    p.add_argument("--timeout", type=float, default=10, help="seconds for one answer")
    p.add_argument("--grace", type=int, default=5, help="Sluice's grace_period, seconds")
    p.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    p.add_argument("--target-dir", type=Path, default=target_dir,
                   help="cargo target directory (default: $CARGO_TARGET_DIR or /work/target)")
    p.add_argument("--sluice-bin", type=Path, help="default: TARGET_DIR/release/sluice")
    p.add_argument("--built-from",
                   help="what the binaries were built from, for the summary (default: this "
                        "repository's HEAD)")
    args = p.parse_args()
    if args.duration < 25 + args.grace:
        p.error(f"--duration must be at least {25 + args.grace} s")
    if args.per_conn < 2:
        p.error("--per-conn must be at least 2")
    args.sluice_bin = args.sluice_bin or args.target_dir / "release" / "sluice"
    return args


def check(run: Run, load: Load, old_rc: int | None, new_rc: int | None,
          new_serving: bool) -> tuple[dict, list[str]]:
    """Everything the run must show; returns the audit summary and the problems."""
    old, new = run.services["old"], run.services["new"]
    ok = load.ok_ids + [pr["id"] for pr in run.probes if not pr["error"]] + run.check_ids
    failed = [f["id"] for f in load.failures] + [pr["id"] for pr in run.probes if pr["error"]]
    audit, problems = audit_check(run.audit, ok, failed, run.sigquit_wall, run.old_exit_wall)
    if load.failures:
        kinds = collections.Counter(f["error"][:120] for f in load.failures)
        problems.append(f"{len(load.failures)} failed requests: {dict(kinds)}")
    if len(load.ok_ids) + len(load.failures) != load.total or load.started != load.total:
        problems.append(f"{load.total} scheduled but {load.started} sent, "
                        f"{len(load.ok_ids) + len(load.failures)} accounted for")
    steps = dict(handover_times(run))
    stopped_accepting = steps.get(MARKERS["Graceful shutdown started!"])
    for pr in run.probes:
        if pr["error"]:
            problems.append(f"request {pr['id']} in flight across the shutdown: {pr['error']}")
        elif pr["server"] != "old":
            problems.append(f"request {pr['id']} was accepted by {pr['server']}, not the old "
                            f"process: it proves nothing about draining")
        elif not stopped_accepting or pr["answered_wall"] <= stopped_accepting:
            problems.append(f"request {pr['id']} was answered before the old process stopped "
                            f"accepting")
    if old_rc != 0:
        problems.append(f"old process exited with {old_rc}")
    if "listener sockets sent" not in old.log.read_text(errors="replace"):
        problems.append("old process never logged 'listener sockets sent'")
    if not new_serving:
        problems.append("new process not serving at the end")
    if new_rc != 0:
        problems.append(f"new process stopped with {new_rc}")
    for name, service, want in (("old", old, 2), ("new", new, 1)):
        text = service.log.read_text(errors="replace")
        if "reload refused" in text:
            problems.append(f"{name} process refused a reload")
        if text.count("configuration reloaded") != want:
            problems.append(f"{name} process logged {text.count('configuration reloaded')} "
                            f"reloads, want {want}")
    for name in ("old", "new"):
        if not load.ok_by_server.get(name):
            problems.append(f"no request was seen answered by the {name} process")
    return audit, problems


def main() -> int:
    args = parse_args()
    if not args.no_build:
        build(args.target_dir, ["sluice", "sluice-perf"])
    work = Path(tempfile.mkdtemp(prefix="sluice-upgrade-"))
    print(f"logs, configuration and audit log in {work}", flush=True)
    run = Run(args, work)
    try:
        run.start()
        print(f"load: tools/call at {args.rate:g} RPS for {args.duration:g} s over "
              f"{args.connections} connections", flush=True)
        load = asyncio.run(run.drive())
        old, new = run.services["old"], run.services["new"]
        old_rc = old.proc.returncode
        # The new process still serves: a checked call on the same session.
        new_serving = False
        if new.proc.poll() is None:
            run.check_ids.append(2)
            status, headers, body = run.target.post(call_body(2))
            new_serving = answer_problem(2, status, headers, body) is None
        new.stop()  # SIGINT: its audit records are drained before it exits
        new_rc = new.proc.returncode
        audit, problems = check(run, load, old_rc, new_rc, new_serving)
        if len(load.ok_ids) / load.elapsed < 0.95 * args.rate:
            print(f"note: achieved {len(load.ok_ids) / load.elapsed:.0f} RPS, under 95% of "
                  f"{args.rate:g}", flush=True)
        (work / "requests.json").write_text(json.dumps(
            {"failures": load.failures, "retried": load.stale, "in_flight": run.probes},
            indent=1))
        report = summarize(run, load, audit, old_rc, new_rc, new_serving, problems)
        print("\n" + report + "\n", flush=True)
        if load.stale:
            print("retried requests (kept-alive connection closed before any byte of the answer):")
            for s in load.stale:
                print(f"  {s}")
        if load.failures:
            print("failed requests:")
            for f in load.failures[:50]:
                print(f"  {f}")
        print(f"details: {work}/requests.json, logs {work}/sluice-old.log, "
              f"{work}/sluice-new.log, audit {run.audit}")
        if problems:
            print("upgrade check FAILED:\n  " + "\n  ".join(problems))
            return 1
        print(f"upgrade check OK: {len(load.ok_ids)} requests, 0 failed, "
              f"{audit['load']} audit records of the load, old process exited 0, new one "
              f"serving")
        return 0
    except BenchError as e:
        print(f"upgrade check FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(list(run.services.values())):
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
