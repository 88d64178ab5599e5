"""The gateway's edge: what a caller may hold of it, and how it stops, reloads and upgrades.

Unknown tool names in metrics, a key checked on the request head alone, the `x-sluice-tools`
cap, the connection cap, request-head and body deadlines, the header size limit, the session
book (maximum, idle expiry, owners), stdio children stopped as a process group, reload matching
servers by name, the admin token, per-upstream concurrency and the graceful binary upgrade.

Raw sockets are used wherever the test must see (or withhold) exact bytes on the wire.
"""

from __future__ import annotations

import copy
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    ACCEPT,
    DEFAULT_KEY,
    PYTHON,
    TESTS,
    Gateway,
    Proc,
    RawMcp,
    bearer,
    children_of,
    cmdline,
    descendants_of,
    free_port,
    is_running,
    rpc_message,
    sluice_bin,
    stdio_live,
    stdio_py,
    wait_until,
)

LAUNCHER = TESTS / "fixtures" / "launcher.py"
FAULTY_SERVER = TESTS / "fixtures" / "faulty_server.py"
# Python upstreams may take long to start on a loaded machine: never give up on them early.
PATIENT = {"connect_timeout": "60s"}

OTHER_KEY_NAME = "intruder"
OTHER_KEY = "intruder-secret-key-0002"
ADMIN_TOKEN = "admin-token-for-edge-tests-0001"
SESSION_SECRET = "edge-upgrade-session-secret-0123456789"
LOOP_IDS = 100_000  # JSON-RPC ids of the upgrade test's calls: LOOP_IDS + n

INVALID_PARAMS = -32602


# --------------------------------------------------------------------------- helpers


def ppid_of(pid: int) -> int | None:
    """The parent pid of `pid` (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def stdio_fast() -> dict:
    """A stdio MCP server that starts fast (standard library only): tools `echo` and `pid`."""
    return {"stdio": {"command": str(PYTHON), "args": [str(FAULTY_SERVER), "stdio"]}}


def readyz_detail(gw: Gateway) -> dict:
    """The detail of /readyz (servers, their health and pids)."""
    return httpx.get(f"{gw.admin_url}/readyz", timeout=10).json()


def server_pids(gw: Gateway) -> dict[str, int | None]:
    """Each server's stdio process id, as /readyz details it."""
    return {name: entry.get("pid") for name, entry in readyz_detail(gw)["servers"].items()}


def all_ready(gw: Gateway) -> dict[str, int]:
    """The servers' pids once every one is ready (synced)."""
    def ready():
        servers = readyz_detail(gw)["servers"]
        if all(entry.get("health") == "ready" and entry.get("pid") for entry in servers.values()):
            return {name: entry["pid"] for name, entry in servers.items()}
        return None

    return wait_until(ready, 60, f"every server of {gw.name} to be ready")


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Wire:
    """One raw TCP connection to a gateway, for exchanges httpx would tidy up."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bytes | None:
        """Some bytes; b'' when the peer closed (or reset); None at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([self.sock], [], [], left)
        if not ready:
            return None
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            return b""

    def response(self, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """Read one HTTP/1.1 response (status, lower-cased headers, body) within `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            data = self._recv(deadline)
            if data is None:
                raise AssertionError(f"no complete response head within {timeout}s (got {self.buffer!r})")
            if data == b"":
                raise AssertionError(f"the connection closed before a complete response head: {self.buffer!r}")
            self.buffer += data
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            data = self._recv(deadline)
            if not data:
                raise AssertionError(f"response body cut short: {rest!r} of {length} bytes")
            rest += data
        self.buffer = rest[length:]
        return status, headers, rest[:length]

    def closed_within(self, timeout: float) -> bool:
        """Whether the peer closes (EOF or reset) within `timeout` s; bytes before are kept."""
        deadline = time.monotonic() + timeout
        while True:
            data = self._recv(deadline)
            if data is None:
                return False
            if data == b"":
                return True
            self.buffer += data


def post_head(content_length: int, key: str | None = None, extra: str = "") -> bytes:
    """The head of a POST /mcp announcing `content_length` body bytes."""
    lines = [
        "POST /mcp HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Accept: {ACCEPT}",
        f"Content-Length: {content_length}",
    ]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def error_message(body: bytes) -> str:
    message = json.loads(body)
    assert message.get("jsonrpc") == "2.0" and isinstance(message.get("error"), dict), message
    return message["error"]["message"]


def initialize_body() -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "edge", "version": "0"}},
    }


def fresh_initialize(gw: Gateway, key: str = DEFAULT_KEY, **headers: str) -> httpx.Response:
    """An initialize POST on a connection of its own (closed afterwards)."""
    with httpx.Client(timeout=10) as http:
        return http.post(
            gw.url,
            content=json.dumps(initialize_body()),
            headers={"Accept": ACCEPT, "Content-Type": "application/json", **bearer(key), **headers},
        )


def ping(client: RawMcp) -> httpx.Response:
    return client.post(client.request_body("ping"))


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.metrics().sum(name, **labels)


# --------------------------------------------------------------------------- shared gateway


@pytest.fixture(scope="module")
def gw(e2e_tmp):
    """A Sluice with a fast stdio server and a slow one allowed one call at a time; two keys."""
    gateway = Gateway(
        e2e_tmp / "edge",
        {
            "fast": stdio_fast(),
            "slow": {**stdio_live(), **PATIENT, "max_concurrent_calls": 1, "queue_timeout": "1s"},
        },
        name="sluice-edge",
        keys=[{"name": OTHER_KEY_NAME, "key": OTHER_KEY, "tools": ["*"]}],
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def limited(e2e_tmp):
    """A Sluice without upstreams and with tight request limits (head, body, header size)."""
    gateway = Gateway(
        e2e_tmp / "edge-limited",
        {},
        name="sluice-edge-limited",
        top={"limits": {"header_timeout": "1s", "body_timeout": "1s", "max_header_bytes": 4096}},
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw):
    c = gw.client()
    c.initialize()
    yield c
    c.close()


# --------------------------------------------------------------------------- 1. metrics labels


def test_unknown_tool_names_share_one_metric_label(gw, client):
    before = metric(gw, "sluice_tool_calls_total", tool="(unknown)")
    names = [f"made{uuid.uuid4().hex[:12]}__up{uuid.uuid4().hex[:8]}" for _ in range(30)]
    for name in names:
        message = client.call_tool(name)
        assert message.get("error", {}).get("code") == INVALID_PARAMS, message
    metrics = gw.metrics()
    after = metrics.sum("sluice_tool_calls_total", tool="(unknown)")
    assert after - before == 30, (
        f"sluice_tool_calls_total{{tool=\"(unknown)\"}} went from {before} to {after}, want +30:\n"
        + "\n".join(l for l in metrics.text.splitlines() if l.startswith("sluice_tool_calls_total"))
    )
    leaked = [name for name in names if name in metrics.text or name.split("__")[0] in metrics.text]
    assert not leaked, f"made-up tool names are metric labels: {leaked[:5]}"


# --------------------------------------------------------------------------- 2. key on the head


@pytest.mark.parametrize(
    "length", [4_000_000, 5 * 1024 * 1024], ids=["within-max-body", "over-max-body"]
)
def test_post_without_key_is_refused_on_its_head(gw, length):
    """401 without the body, whatever its size: the key is checked first (the default
    max_body_bytes is 4 MiB, so the second one would get 413 if the size came first)."""
    wire = Wire(gw.port)
    try:
        started = time.monotonic()
        wire.send(post_head(length))  # and no body
        status, headers, body = wire.response(timeout=3)
        elapsed = time.monotonic() - started
    finally:
        wire.close()
    assert status == 401, f"want 401 on the head alone, got {status}: {body!r}"
    assert elapsed < 2, f"the 401 took {elapsed:.1f}s"
    assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    assert error_message(body)


def test_announced_body_over_the_limit_is_refused_on_its_head(gw):
    wire = Wire(gw.port)
    try:
        started = time.monotonic()
        wire.send(post_head(5 * 1024 * 1024, key=DEFAULT_KEY))  # default max_body_bytes is 4 MiB
        status, _, body = wire.response(timeout=3)
        elapsed = time.monotonic() - started
    finally:
        wire.close()
    assert status == 413, f"want 413 on the head alone, got {status}: {body!r}"
    assert elapsed < 2, f"the 413 took {elapsed:.1f}s"
    assert "max_body_bytes" in error_message(body)


# --------------------------------------------------------------------------- 3. x-sluice-tools


@pytest.mark.parametrize(
    "value",
    [
        ",".join(f"fast__tool{i}" for i in range(65)),
        ",".join(["fast__" + "x" * 500] * 9),  # 9 patterns, over 4096 bytes
    ],
    ids=["65-patterns", "over-4096-bytes"],
)
def test_narrowing_header_is_capped(client, value):
    response, message = client.request("tools/list", {}, headers={"x-sluice-tools": value})
    assert response.status_code == 400, f"want 400, got {response.status_code}: {response.text[:300]}"
    assert isinstance(message.get("error"), dict), message
    assert "x-sluice-tools" in message["error"]["message"], message


def test_narrowing_header_with_64_patterns_works(client):
    patterns = ["fast__echo"] + [f"nothing{i}__*" for i in range(63)]
    value = ",".join(patterns)
    assert len(value) <= 4096
    names = client.tool_names(headers={"x-sluice-tools": value})
    assert names == {"fast__echo"}, sorted(names)


# --------------------------------------------------------------------------- 4. connection cap


def test_connection_cap(e2e_tmp):
    gw = Gateway(e2e_tmp / "edge-capped", {}, name="sluice-edge-capped", top={"limits": {"max_connections": 5}})
    idle: list[socket.socket] = []
    try:
        for _ in range(5):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        wait_until(lambda: metric(gw, "sluice_open_connections") == 5, 10, "sluice_open_connections to be 5")
        refused_before = metric(gw, "sluice_refused_connections_total")

        sixth = Wire(gw.port)
        try:
            status, headers, body = sixth.response(timeout=5)
            assert status == 503, f"the 6th connection: HTTP {status} {body!r}"
            assert sixth.closed_within(3), "the refused connection was not closed"
        finally:
            sixth.close()
        assert b"limits.max_connections" in body, body
        metrics = gw.metrics()
        assert metrics.sum("sluice_refused_connections_total") == refused_before + 1, metrics.text
        assert metrics.sum("sluice_open_connections") == 5, metrics.text

        for s in idle:
            s.close()
        idle.clear()

        def served() -> bool:
            try:
                return fresh_initialize(gw).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(served, 10, "a request to be served after the idle connections closed")
        wait_until(lambda: metric(gw, "sluice_open_connections") == 0, 10, "sluice_open_connections back to 0")
    finally:
        for s in idle:
            s.close()
        gw.stop()


# --------------------------------------------------------------------------- 5-7. request limits


def test_slowloris_head_is_cut_off(limited):
    slow = Wire(limited.port)
    served_meanwhile = None
    closed_after = None
    try:
        slow.send(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        trickle = b"X-Slow: " + b"a" * 100
        i = 0
        while time.monotonic() - started < 6:
            try:
                slow.send(trickle[i % len(trickle) : i % len(trickle) + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            i += 1
            if slow.closed_within(0.3):
                closed_after = time.monotonic() - started
                break
            if served_meanwhile is None and time.monotonic() - started > 0.4:
                other = limited.client()
                try:
                    other.initialize()
                    served_meanwhile = ping(other).status_code
                finally:
                    other.close()
    finally:
        slow.close()
    assert served_meanwhile == 200, f"a normal request beside the slow one: {served_meanwhile}"
    assert closed_after is not None, (
        f"a request head trickled byte by byte for 6s (header_timeout 1s) was never cut off; got {slow.buffer!r}"
    )
    assert 0.8 <= closed_after <= 3.0, f"the slow head was cut off after {closed_after:.1f}s"


def test_slow_body_gets_408(limited):
    wire = Wire(limited.port)
    try:
        wire.send(post_head(100, key=DEFAULT_KEY) + b'{"jsonrpc":')  # 11 of 100 bytes, then nothing
        started = time.monotonic()
        status, _, body = wire.response(timeout=5)
        elapsed = time.monotonic() - started
    finally:
        wire.close()
    assert status == 408, f"want 408, got {status}: {body!r}"
    assert 0.8 <= elapsed <= 3.0, f"the 408 came after {elapsed:.1f}s (body_timeout 1s)"
    assert "limits.body_timeout" in error_message(body), body


def test_oversized_header_gets_431(limited):
    fine = fresh_initialize(limited, **{"X-Filler": "f" * 2000})
    assert fine.status_code == 200, f"a 2 KB header: HTTP {fine.status_code} {fine.text}"
    big = fresh_initialize(limited, **{"X-Filler": "f" * 6000})
    assert big.status_code == 431, f"a 6 KB header: HTTP {big.status_code} {big.text}"
    assert "max_header_bytes" in big.text, big.text


# --------------------------------------------------------------------------- 8-9. sessions


def test_max_sessions(e2e_tmp):
    gw = Gateway(e2e_tmp / "edge-sessions", {}, name="sluice-edge-sessions", max_sessions=3)
    clients = [gw.client() for _ in range(3)]
    try:
        for c in clients:
            c.initialize()
        assert metric(gw, "sluice_active_sessions") == 3

        fourth = fresh_initialize(gw)
        assert fourth.status_code == 503, f"the 4th initialize: HTTP {fourth.status_code} {fourth.text}"
        assert fourth.headers.get("retry-after"), dict(fourth.headers)
        message = rpc_message(fourth)["error"]["message"]
        assert "maximum" in message and "3" in message, message
        assert metric(gw, "sluice_active_sessions") == 3

        ended = clients[0].delete()
        assert ended.status_code == 200, f"DELETE: HTTP {ended.status_code} {ended.text}"
        assert metric(gw, "sluice_active_sessions") == 2

        again = gw.client()
        clients.append(again)
        again.initialize()
        assert metric(gw, "sluice_active_sessions") == 3
        assert ping(again).status_code == 200 and ping(clients[1]).status_code == 200
    finally:
        for c in clients:
            c.close()
        gw.stop()


def test_idle_session_ends(e2e_tmp):
    gw = Gateway(e2e_tmp / "edge-idle", {}, name="sluice-edge-idle", session_idle_timeout="2s")
    idle, busy = gw.client(), gw.client()
    try:
        idle.initialize()
        busy.initialize()
        assert metric(gw, "sluice_active_sessions") == 2
        started = time.monotonic()
        while time.monotonic() - started < 3.5:
            time.sleep(0.9)
            response = ping(busy)
            assert response.status_code == 200, f"a session used every second: HTTP {response.status_code} {response.text}"
        gone = ping(idle)
        assert gone.status_code == 404, f"a session idle for 3.5s (timeout 2s): HTTP {gone.status_code} {gone.text}"
        assert "idle" in gone.text, gone.text
        assert ping(busy).status_code == 200
        assert ping(idle).status_code == 404, "an idle-ended session came back"
        active = metric(gw, "sluice_active_sessions")
        assert active == 1, f"sluice_active_sessions is {active} after one of two sessions ended idle"
    finally:
        idle.close()
        busy.close()
        gw.stop()


def test_delete_of_another_keys_session_is_refused(gw):
    owner = gw.client()
    intruder = gw.client(OTHER_KEY)
    try:
        owner.initialize()
        intruder.initialize()
        stolen = intruder.http.delete(gw.url, headers={"Mcp-Session-Id": owner.session_id, **bearer(OTHER_KEY)})
        assert stolen.status_code == 404, f"DELETE of another key's session: HTTP {stolen.status_code} {stolen.text}"
        echoed = owner.call_tool("fast__echo", {"text": "still mine"})
        assert echoed.get("result", {}).get("content") == [{"type": "text", "text": "echo: still mine"}], echoed
        assert ping(intruder).status_code == 200
        assert owner.delete().status_code == 200
        assert ping(owner).status_code == 404
    finally:
        owner.close()
        intruder.close()


# --------------------------------------------------------------------------- 10-11. stdio children


def launched() -> dict:
    """A Python stdio server started through a launcher: a grandchild of Sluice."""
    args = [str(LAUNCHER), str(PYTHON), str(FAULTY_SERVER), "stdio"]
    return {"stdio": {"command": str(PYTHON), "args": args}}


def echo_text(message: dict) -> str:
    assert "result" in message, message
    return message["result"]["content"][0]["text"]


def test_stdio_children_are_stopped_as_a_process_group(e2e_tmp):
    gw = Gateway(
        e2e_tmp / "edge-group",
        {"gone": launched(), "kept": launched()},
        name="sluice-edge-group",
    )
    tree: list[int] = []
    try:
        pids = all_ready(gw)
        grandchildren = {}
        for name in ("gone", "kept"):
            launcher = pids[name]
            assert launcher and ppid_of(launcher) == gw.pid, f"{name}: launcher pid {launcher}"
            kids = [k for k in children_of(launcher) if str(FAULTY_SERVER) in " ".join(cmdline(k))]
            assert len(kids) == 1, f"{name}: the launcher's children are {kids}"
            grandchildren[name] = kids[0]
        tree = descendants_of(gw.pid)
        assert set(grandchildren.values()) <= set(tree), (grandchildren, tree)

        client = gw.client()
        client.initialize()
        assert echo_text(client.call_tool("gone__pid")) == str(grandchildren["gone"])

        config = copy.deepcopy(gw.config)
        config["mcp"]["servers"] = [s for s in config["mcp"]["servers"] if s["name"] != "gone"]
        gw.reload(config)
        wait_until(lambda: not is_running(pids["gone"]), 5, "the removed server's launcher to stop")
        try:
            wait_until(lambda: not is_running(grandchildren["gone"]), 5, "the removed server (a grandchild) to stop")
        except TimeoutError:
            raise AssertionError(
                f"the removed server's grandchild {grandchildren['gone']} ({cmdline(grandchildren['gone'])}) "
                f"still runs 5s after its launcher {pids['gone']} stopped"
            ) from None
        assert is_running(grandchildren["kept"]) and is_running(pids["kept"])
        assert echo_text(client.call_tool("kept__pid")) == str(grandchildren["kept"])
        client.close()

        tree = descendants_of(gw.pid)
        assert grandchildren["kept"] in tree
        code = gw.terminate()
        assert code == 0, f"sluice exited {code}:\n{gw.log(30)}"
        try:
            wait_until(lambda: not any(is_running(p) for p in tree), 5, "every process Sluice started to stop")
        except TimeoutError:
            left = {p: cmdline(p) for p in tree if is_running(p)}
            raise AssertionError(f"processes left running after Sluice stopped: {left}") from None
    finally:
        gw.stop()
        kill_quietly(tree)


def test_reload_matches_servers_by_name(e2e_tmp):
    gw = Gateway(
        e2e_tmp / "edge-by-name",
        {"a": stdio_fast(), "b": stdio_fast(), "c": stdio_fast()},
        name="sluice-edge-by-name",
    )
    try:
        client = gw.client()
        client.initialize()
        before = all_ready(gw)

        config = copy.deepcopy(gw.config)
        config["mcp"]["servers"] = [s for s in config["mcp"]["servers"] if s["name"] != "b"]
        gw.reload(config)
        after = server_pids(gw)
        assert set(after) == {"a", "c"}, after
        assert after["a"] == before["a"] and after["c"] == before["c"], (
            f"a server that only moved in the list was restarted: pids before {before}, after {after}"
        )
        assert is_running(before["a"]) and is_running(before["c"])
        wait_until(lambda: not is_running(before["b"]), 5, "the removed server b to stop")
        for name in ("a", "c"):
            assert echo_text(client.call_tool(f"{name}__pid")) == str(before[name])
        names = client.tool_names()
        assert not any(n.startswith("b__") for n in names), sorted(names)
    finally:
        gw.stop()


# --------------------------------------------------------------------------- 12. admin token


class TokenGateway(Gateway):
    """A Gateway whose admin listener requires ADMIN_TOKEN."""

    def write_config(self, config: dict[str, Any] | str) -> None:
        if isinstance(config, dict) and "admin" in config:
            config = {**config, "admin": {**config["admin"], "token": ADMIN_TOKEN}}
        super().write_config(config)


def test_admin_token(e2e_tmp):
    unreachable = f"http://127.0.0.1:{free_port()}/mcp"
    gw = TokenGateway(
        e2e_tmp / "edge-admin",
        {"hidden-backend": {"http": {"url": unreachable}, "connect_timeout": "1s"}},
        name="sluice-edge-admin",
    )
    try:
        admin = gw.admin_url
        assert httpx.get(f"{admin}/healthz", timeout=10).status_code == 200

        for headers in ({}, bearer("wrong-token"), {"Authorization": ADMIN_TOKEN}):
            refused = httpx.get(f"{admin}/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, f"/metrics with {headers}: HTTP {refused.status_code}"
            assert "sluice_" not in refused.text, refused.text
        allowed = httpx.get(f"{admin}/metrics", headers=bearer(ADMIN_TOKEN), timeout=10)
        assert allowed.status_code == 200 and 'sluice_upstream_up{server="hidden-backend"}' in allowed.text, (
            allowed.text[:300]
        )

        plain = httpx.get(f"{admin}/readyz", timeout=10)
        assert set(plain.json()) == {"ready"}, plain.text
        assert "hidden-backend" not in plain.text, plain.text
        detailed = httpx.get(f"{admin}/readyz", headers=bearer(ADMIN_TOKEN), timeout=10)
        assert detailed.status_code == plain.status_code
        assert "hidden-backend" in detailed.json()["servers"], detailed.text
    finally:
        gw.stop()


def test_check_refuses_an_open_admin_listener_without_token(tmp_path):
    def check(admin: str) -> subprocess.CompletedProcess:
        path = tmp_path / "sluice.yaml"
        path.write_text(f"listen:\n  - address: 127.0.0.1:{free_port()}\nadmin:\n{admin}mcp:\n  servers: []\n")
        return subprocess.run(
            [str(sluice_bin()), "check", "--config", str(path)], capture_output=True, text=True, timeout=60
        )

    port = free_port()
    open_admin = check(f"  address: 0.0.0.0:{port}\n")
    assert open_admin.returncode != 0, f"an open admin listener without token passed check: {open_admin.stdout}"
    assert "admin.token" in open_admin.stdout + open_admin.stderr, open_admin.stdout + open_admin.stderr
    with_token = check(f"  address: 0.0.0.0:{port}\n  token: {ADMIN_TOKEN}\n")
    assert with_token.returncode == 0, with_token.stdout + with_token.stderr


# --------------------------------------------------------------------------- 13. concurrency


def test_upstream_concurrency_limit(gw):
    results: dict[str, tuple[float, dict]] = {}

    def call(tag: str) -> None:
        c = gw.client()
        try:
            c.initialize()
            started = time.monotonic()
            message = c.call_tool("slow__slow", {"tag": tag, "seconds": 3})
            results[tag] = (time.monotonic() - started, message)
        finally:
            c.close()

    threads = [threading.Thread(target=call, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2, results
    ok = [(s, m) for s, m in results.values() if "result" in m and not m["result"].get("isError")]
    failed = [(s, m) for s, m in results.values() if (s, m) not in ok]
    assert len(ok) == 1 and len(failed) == 1, f"want one success and one refusal: {results}"
    seconds, message = failed[0]
    text = message["error"]["message"] if "error" in message else json.dumps(message["result"])
    assert "`slow`" in text and "max_concurrent_calls" in text, message
    assert seconds < 2.5, f"the refused call waited {seconds:.1f}s (queue_timeout 1s)"
    assert ok[0][0] >= 2.5, ok


# --------------------------------------------------------------------------- 14. graceful upgrade


def short_socket_dir() -> Path:
    """A directory for a Unix socket (whose path must stay under ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix="sluice-up-"))


def test_graceful_upgrade_drops_nothing(e2e_tmp):
    sock_dir = short_socket_dir()
    upgrade_sock = sock_dir / "upgrade.sock"
    env = {"SLUICE_SESSION_SECRET": SESSION_SECRET}
    old = Gateway(
        e2e_tmp / "edge-upgrade",
        {"py": {**stdio_py(), **PATIENT}},
        name="sluice-edge-upgrade",
        top={"upgrade_sock": str(upgrade_sock)},
        env=env,
    )
    new: Proc | None = None
    stop = threading.Event()
    outcomes: list[tuple[str, Any]] = []
    try:
        client = old.client()
        client.initialize()
        headers = client.headers()

        def loop() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"jsonrpc": "2.0", "id": LOOP_IDS + i, "method": "tools/call",
                        "params": {"name": "py__add", "arguments": {"a": i, "b": 1}}}
                try:
                    with httpx.Client(timeout=15) as http:  # a new connection for every call
                        response = http.post(old.url, content=json.dumps(body), headers=headers)
                    message = rpc_message(response)
                    if response.status_code == 200 and message.get("result", {}).get("structuredContent") == {"result": i + 1}:
                        outcomes.append(("ok", i))
                    else:
                        outcomes.append(("failed", (i, response.status_code, response.text[:300])))
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    outcomes.append(("failed", (i, repr(e))))
                time.sleep(0.02)

        caller = threading.Thread(target=loop, name="upgrade-caller", daemon=True)
        caller.start()
        wait_until(lambda: len(outcomes) >= 5, 10, "calls before the upgrade")

        new = Proc(
            "sluice-edge-upgraded",
            [str(sluice_bin()), "--config", str(old.config_path), "--upgrade"],
            e2e_tmp / "edge-upgrade" / "sluice-edge-upgraded.log",
            env={"NO_COLOR": "1", **env},
        )
        wait_until(lambda: upgrade_sock.exists() or not new.alive(), 10, "the new Sluice to wait on upgrade_sock")
        assert new.alive(), f"the new Sluice exited:\n{new.log()}"
        os.kill(old.pid, signal.SIGQUIT)
        upgraded_at = time.monotonic()
        try:
            old.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the old Sluice still runs 20s after SIGQUIT:\n{old.log(30)}") from None
        took = time.monotonic() - upgraded_at
        calls_at_exit = len(outcomes)
        wait_until(lambda: len(outcomes) >= calls_at_exit + 10, 15, "calls after the old Sluice exited")
        stop.set()
        caller.join(20)

        failed = [o for o in outcomes if o[0] == "failed"]
        succeeded = [o for o in outcomes if o[0] == "ok"]
        assert new.alive(), f"the new Sluice exited:\n{new.log()}"
        assert took < 20, took

        # The new process serves, the session from before the upgrade included.
        client.http.close()
        client.http = httpx.Client(timeout=60)
        whoami_id = client.request_body("ping")["id"] + 1  # the id of the next request
        after = client.call_tool("py__whoami")
        server_pid = int(after["result"]["content"][0]["text"].rsplit("pid=", 1)[1])
        assert ppid_of(server_pid) == new.pid != old.pid, (server_pid, ppid_of(server_pid), new.pid, old.pid)
        client.close()

        os.kill(new.pid, signal.SIGTERM)
        new.popen.wait(timeout=30)
        # Both processes appended to one audit log: one record per successful call, none twice.
        records = [json.loads(line) for line in old.audit_path.read_text().splitlines() if line.strip()]
        ok_ids = sorted(r["request_id"] for r in records if r.get("method") == "tools/call" and r["status"] == "ok")
        want = sorted([str(LOOP_IDS + i) for _, i in succeeded] + [str(whoami_id)])
        assert ok_ids == want, (
            f"{len(ok_ids)} successful tools/call audit records for {len(want)} successful calls; "
            f"missing {sorted(set(want) - set(ok_ids))[:5]}, extra {sorted(set(ok_ids) - set(want))[:5]}"
        )
        # Last, so that the checks above are made whatever happened to the calls.
        assert not failed, (
            f"{len(failed)} of {len(outcomes)} calls (one every ~20 ms, a new connection each) failed across "
            f"the upgrade: {failed[:5]}"
        )
    finally:
        stop.set()
        if new is not None:
            new.stop()
        old.stop()
        try:
            upgrade_sock.unlink()
        except OSError:
            pass
        try:
            sock_dir.rmdir()
        except OSError:
            pass
