"""Faults: an upstream killed, hung (accepts and never answers), slow, or answering garbage,
while other upstreams serve; the gateway's errors name the server, its other calls succeed.

The faulty upstreams are tests/fixtures/faulty_server.py (a Streamable HTTP or a stdio server
whose tools each misbehave in one way) and the Python fixture server (`hold`, for a stdio child
killed mid-call). The healthy upstream is a stdio server-everything; while each fault is under
way, a few sessions of their own call it in a loop, and every one of those calls must succeed,
quickly. The faulty HTTP upstreams are configured with credentials in every place a URL and a
configuration can carry them (userinfo, a query token, an Authorization header); no answer of
the gateway may contain them.

Tests run in file order: the last test of the shared gateway reads what it logged.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness import (
    PY_SERVER,
    PYTHON,
    TESTS,
    Gateway,
    ListeningProc,
    RawMcp,
    free_port,
    is_running,
    rpc_message,
    stdio_everything,
    stdio_py,
    wait_until,
)

FAULTY_SERVER = TESTS / "fixtures" / "faulty_server.py"

# The credentials of the faulty HTTP upstreams, and the form reqwest would send the userinfo in.
USER, SECRET = "user", "s3cret"
HEADER_SECRET = "s3cret-header"
FORBIDDEN = (SECRET, base64.b64encode(f"{USER}:{SECRET}".encode()).decode())

REQUEST_TIMEOUT = 2.0  # `request_timeout` of the faulty upstreams, seconds
CONNECT_TIMEOUT = 2.0  # `connect_timeout` (connecting and initialize) of the hung-at-start one
SLACK = 2.0  # what a loaded 2-core machine may add to an answer's expected time
RECOVERY = 15.0  # a killed or flooded upstream serves again within this
HEALTHY_MAX_LATENCY = 0.75  # a healthy call during a fault; the slow tool takes 1 s
READY_WAIT = 20.0  # how long a gateway with a hung upstream is given to get ready (asserted lower)


# --------------------------------------------------------------------------- upstreams


class FaultyHttp(ListeningProc):
    """tests/fixtures/faulty_server.py over Streamable HTTP (`hang`: it never answers anything)."""

    def __init__(self, tmp: Path, name: str, hang: bool = False, port: int | None = None):
        port = port or free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        argv = [str(PYTHON), str(FAULTY_SERVER), "http", str(port)] + (["--hang"] if hang else [])
        super().__init__(name, argv, tmp / f"{name}.log", port)


def secret_http(port: int, timeout: float = REQUEST_TIMEOUT, **settings: str | int) -> dict:
    """A Streamable HTTP upstream whose URL and headers carry credentials (`settings`: more of
    the server's configuration, e.g. connect_timeout, max_concurrent_calls)."""
    return {
        "http": {
            "url": f"http://{USER}:{SECRET}@127.0.0.1:{port}/mcp?token={SECRET}",
            "headers": {"Authorization": f"Bearer {HEADER_SECRET}"},
        },
        "request_timeout": f"{timeout:g}s",
        "sync_interval": "5m",
        **settings,
    }


def faulty_stdio() -> dict:
    return {"stdio": {"command": str(PYTHON), "args": [str(FAULTY_SERVER), "stdio"]},
            "request_timeout": f"{REQUEST_TIMEOUT:g}s"}


# --------------------------------------------------------------------------- calls and checks


@dataclass
class Answer:
    tool: str
    status: int
    body: str
    message: dict
    elapsed: float


def call(client: RawMcp, tool: str, arguments: dict | None = None) -> Answer:
    """One tools/call, timed; the raw body is kept for the credential check."""
    body = client.request_body("tools/call", {"name": tool, "arguments": arguments or {}})
    started = time.monotonic()
    response = client.post(body)
    elapsed = time.monotonic() - started
    try:
        message = rpc_message(response)
    except AssertionError:
        message = {}
    return Answer(tool, response.status_code, response.text, message, elapsed)


def assert_no_secret(text: str, where: str) -> None:
    for secret in FORBIDDEN:
        assert secret not in text, f"{where} contains the upstream credential {secret!r}: {text[:600]!r}"


def names_server(text: str, server: str) -> bool:
    """`server` appears as a name of its own, not only inside a tool name `server__tool`."""
    return re.search(rf"(?<![\w-]){re.escape(server)}(?![\w-])", text) is not None


def error_text(answer: Answer) -> str | None:
    """The error's message if the call failed, as a JSON-RPC error or an isError result."""
    message = answer.message
    if isinstance(message.get("error"), dict):
        return str(message["error"].get("message", ""))
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return " ".join(str(c.get("text", "")) for c in result.get("content", []))
    return None


def assert_fault_error(answer: Answer, server: str, within: float) -> str:
    """The call failed with a JSON-RPC error (or an isError result) naming `server`, within
    `within` seconds, in HTTP 200, and without credentials. Returns the error text."""
    described = f"{answer.tool}: HTTP {answer.status} after {answer.elapsed:.2f}s: {answer.body[:600]!r}"
    assert_no_secret(answer.body, f"the answer to {answer.tool}")
    assert answer.status == 200, f"want HTTP 200 with a JSON-RPC error: {described}"
    assert answer.message.get("jsonrpc") == "2.0", f"not a JSON-RPC answer: {described}"
    text = error_text(answer)
    assert text is not None, f"the faulty call did not fail: {described}"
    assert names_server(text, server), f"the error does not name the server `{server}`: {described}"
    assert answer.elapsed <= within, f"the error took {answer.elapsed:.2f}s (want <= {within:.1f}s): {described}"
    return text


def assert_echo(answer: Answer, text: str, within: float = REQUEST_TIMEOUT) -> None:
    described = f"{answer.tool}: HTTP {answer.status} after {answer.elapsed:.2f}s: {answer.body[:600]!r}"
    assert answer.status == 200 and "result" in answer.message, f"the call did not succeed: {described}"
    assert answer.message["result"].get("content") == [{"type": "text", "text": f"echo: {text}"}], described
    assert answer.elapsed <= within, f"took {answer.elapsed:.2f}s (want <= {within:.1f}s): {described}"


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    """Run `fn(*args)` in a thread; its return value (or exception) lands in the list."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as e:  # reported by the test that reads `out`
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: list, timeout: float):
    thread.join(timeout)
    assert not thread.is_alive(), f"the call did not come back within {timeout:.0f}s"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class HealthyTraffic:
    """`sessions` sessions of their own call the healthy upstream (`everything__echo`) in a
    loop while a fault is under way; `check()` asserts every call succeeded, quickly."""

    def __init__(self, gw: Gateway, sessions: int = 3, tool: str = "everything__echo"):
        self.tool = tool
        self.clients = []
        for _ in range(sessions):
            client = gw.client(client=httpx.Client(timeout=httpx.Timeout(10, read=30)))
            client.initialize()
            self.clients.append(client)
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i, c), daemon=True)
                        for i, c in enumerate(self.clients)]

    def __enter__(self) -> "HealthyTraffic":
        for thread in self.threads:
            thread.start()
        # The fault begins once the traffic flows.
        wait_until(lambda: len(self.latencies) + len(self.failures) >= len(self.threads), 10,
                   "the healthy traffic to start")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(35)
        for client in self.clients:
            client.close()

    def _run(self, i: int, client: RawMcp) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                message = client.call_tool(self.tool, {"message": f"healthy-{i}-{n}"})
            except Exception as e:
                self.failures.append(f"call #{n} of session {i}: {e!r}")
                time.sleep(0.1)
                continue
            elapsed = time.monotonic() - started
            if message.get("result", {}).get("content") != [{"type": "text", "text": f"Echo: healthy-{i}-{n}"}]:
                self.failures.append(f"call #{n} of session {i}: {message}")
            self.latencies.append(elapsed)
            time.sleep(0.02)

    def check(self, max_latency: float = HEALTHY_MAX_LATENCY, min_calls: int = 10) -> None:
        # Traffic keeps flowing: on a loaded machine the fault's window may end before
        # `min_calls` were made, so wait for them (a stalled gateway still fails here).
        try:
            wait_until(lambda: len(self.latencies) >= min_calls or self.failures, 30,
                       f"{min_calls} healthy calls")
        except TimeoutError:
            pass
        self.stop.set()
        for thread in self.threads:
            thread.join(35)
        assert not self.failures, f"healthy calls failed during the fault: {self.failures[:5]}"
        assert len(self.latencies) >= min_calls, f"only {len(self.latencies)} healthy calls were made"
        slowest = max(self.latencies)
        assert slowest <= max_latency, (
            f"healthy calls were held back by the fault: slowest {slowest:.2f}s of {len(self.latencies)} "
            f"(want <= {max_latency}s)"
        )


def admin_texts(gw: Gateway) -> dict[str, str]:
    return {path: httpx.get(f"{gw.admin_url}{path}", timeout=10).text for path in ("/readyz", "/metrics")}


def assert_no_secret_anywhere_but_logs(gw: Gateway) -> None:
    for path, text in admin_texts(gw).items():
        assert_no_secret(text, f"the admin listener's {path}")


# --------------------------------------------------------------------------- the shared gateway


@pytest.fixture(scope="module")
def flaky(e2e_tmp):
    """The faulty HTTP upstream the shared gateway calls `flaky`."""
    server = FaultyHttp(e2e_tmp / "faults", "flaky")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(e2e_tmp, flaky):
    """Healthy stdio server-everything, the faulty HTTP `flaky`, the faulty stdio `junky`, and
    `narrow`: the same HTTP server as flaky, taking at most two calls at once."""
    gateway = Gateway(
        e2e_tmp / "faults",
        {"everything": stdio_everything(), "flaky": secret_http(flaky.port), "junky": faulty_stdio(),
         "narrow": secret_http(flaky.port, timeout=NARROW_TIMEOUT, max_concurrent_calls=NARROW_LIMIT,
                               queue_timeout=f"{NARROW_QUEUE:g}s")},
        name="sluice-faults",
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw):
    c = gw.client(client=httpx.Client(timeout=httpx.Timeout(10, read=60)))
    c.initialize()
    yield c
    c.close()


def test_hung_call_times_out_naming_the_server(gw, flaky, client):
    """Calls that the upstream accepts and never answers fail after its request_timeout with an
    error naming it; the gateway lets go of the hung connections; the server's other tools and
    the other servers keep answering meanwhile."""
    with HealthyTraffic(gw) as healthy:
        extra = [gw.client() for _ in range(3)]
        for c in extra:
            c.initialize()
        calls = [in_thread(call, c, "flaky__hang") for c in [client] + extra]
        # While they hang, the same server's other tool answers at once.
        time.sleep(0.5)
        side = gw.client()
        side.initialize()
        assert_echo(call(side, "flaky__echo", {"text": "beside the hung calls"}), "beside the hung calls", within=1.0)
        for thread, out in calls:
            answer = joined(thread, out, REQUEST_TIMEOUT + SLACK + 30)
            text = assert_fault_error(answer, "flaky", within=REQUEST_TIMEOUT + SLACK)
            assert answer.elapsed >= REQUEST_TIMEOUT * 0.9, f"failed before the timeout: {answer}"
            assert re.search(r"time|answer", text, re.I), f"the error does not say it timed out: {text}"
        healthy.check()
    assert_echo(call(client, "flaky__echo", {"text": "after"}), "after")
    # The gateway closed (or reused, never leaked) the connections of the calls it gave up on.
    wait_until(lambda: flaky.log().count("hang: connection closed by the client") >= 4, 10,
               "the gateway to close the connections of the timed-out calls")
    for c in extra + [side]:
        c.close()


NARROW_LIMIT, NARROW_QUEUE, NARROW_TIMEOUT = 2, 1.0, 3.0


def test_saturated_upstream_queues_then_refuses_naming_it(gw, client):
    """`narrow` takes two calls at once (max_concurrent_calls): with two hung calls in flight, a
    third waits its queue_timeout and fails naming the server; the same HTTP server under
    another name (flaky) and the other servers answer at once meanwhile; once the hung calls
    time out, narrow answers again."""
    hung = [gw.client() for _ in range(NARROW_LIMIT)]
    for c in hung:
        c.initialize()
    with HealthyTraffic(gw) as healthy:
        started = time.monotonic()
        calls = [in_thread(call, c, "narrow__hang") for c in hung]
        time.sleep(0.3)
        queued = call(client, "narrow__echo", {"text": "queued"})
        assert_fault_error(queued, "narrow", within=NARROW_QUEUE + SLACK)
        assert queued.elapsed >= NARROW_QUEUE * 0.9, f"refused before the queue timeout: {queued}"
        assert_echo(call(client, "flaky__echo", {"text": "same server, other name"}), "same server, other name",
                    within=HEALTHY_MAX_LATENCY)
        for thread, out in calls:
            assert_fault_error(joined(thread, out, 30), "narrow", within=NARROW_TIMEOUT + SLACK)
        healthy.check()
    assert time.monotonic() - started < NARROW_TIMEOUT + SLACK + 2
    assert_echo(call(client, "narrow__echo", {"text": "free again"}), "free again")
    for c in hung:
        c.close()


def test_slow_upstream_delays_nobody_else(gw, client):
    """Calls that take 1 s succeed; meanwhile the other servers, and the same server's fast
    tool, answer at once."""
    with HealthyTraffic(gw) as healthy:
        clients = [gw.client() for _ in range(4)]
        for c in clients:
            c.initialize()
        slow = [in_thread(call, c, "flaky__slow", {"text": f"slow-{i}"}) for i, c in enumerate(clients)]
        time.sleep(0.2)
        for i in range(5):
            assert_echo(call(client, "flaky__echo", {"text": f"fast-{i}"}), f"fast-{i}", within=HEALTHY_MAX_LATENCY)
        for i, (thread, out) in enumerate(slow):
            answer = joined(thread, out, 30)
            assert_echo(answer, f"slow-{i}", within=1.0 + SLACK)
            assert answer.elapsed >= 0.95, f"the slow tool answered in {answer.elapsed:.2f}s"
        healthy.check()
    for c in clients:
        c.close()


HTTP_GARBAGE = ["not_json", "binary", "wrong_type", "empty", "truncated", "cut", "wrong_id", "sse_junk", "http_500"]


@pytest.mark.parametrize("tool", HTTP_GARBAGE)
def test_garbage_from_an_http_upstream(gw, client, tool):
    """An answer the gateway cannot use (not JSON, not UTF-8, the wrong content type, empty,
    truncated, cut off, for another request id, an event stream of junk, an HTTP 500 echoing
    the credentials) is an error naming the server, without the credentials; the server's
    next call, and every call to the others, succeed."""
    with HealthyTraffic(gw) as healthy:
        answer = call(client, f"flaky__{tool}", {"text": tool})
        assert_fault_error(answer, "flaky", within=REQUEST_TIMEOUT + SLACK)
        assert "WRONG-ID ANSWER" not in answer.body, f"an answer to another request was passed on: {answer.body}"
        assert_echo(call(client, "flaky__echo", {"text": f"after {tool}"}), f"after {tool}")
        healthy.check(min_calls=3)


# (tool, what the call itself must get): "ok" the answer; "error" an error naming the server;
# "either": either of them. After each, the server's next call must succeed at once.
STDIO_GARBAGE = [("text_junk", "ok"), ("junk", "either"), ("wrong_id", "error"), ("flood", "error"),
                 ("long_stderr", "ok")]


@pytest.mark.parametrize("tool,expect", STDIO_GARBAGE, ids=[t for t, _ in STDIO_GARBAGE])
def test_garbage_from_a_stdio_upstream(gw, client, tool, expect):
    """A stdio server that writes a line of prose or of binary junk, answers another id, floods
    its stdout without a newline, or logs a very long line on stderr: the call gets its answer
    or an error naming the server within its timeout, the gateway's memory stays bounded, and
    the server keeps serving (the gateway keeps reading its stdout and stderr)."""
    # A fault of an earlier case may have cost junky its process: wait until it serves.
    wait_until(lambda: "result" in call(client, "junky__pid").message, RECOVERY, "junky to serve before the fault")
    rss_before = rss_kb(gw.pid)
    with HealthyTraffic(gw) as healthy:
        answer = call(client, f"junky__{tool}", {"text": tool})
        if expect == "ok":
            assert_echo(answer, tool)
        elif expect == "error" or error_text(answer) is not None:
            assert_fault_error(answer, "junky", within=REQUEST_TIMEOUT + SLACK)
            assert "WRONG-ID ANSWER" not in answer.body, answer.body
        else:
            assert_echo(answer, tool)
        healthy.check(min_calls=3)
    if tool == "flood":
        # The flood stops once the gateway gives up on the call (notifications/cancelled).
        wait_until(lambda: "flood id=" in gw.log() or "stdout is gone" in gw.log(), RECOVERY,
                   "the flooding server to stop")
        assert rss_kb(gw.pid) - rss_before < 100 * 1024, "the flood grew the gateway's memory by 100 MB or more"
    # The server goes on serving (after a flood, once it has written its last bytes: on a
    # loaded machine that can take longer than one call's timeout).
    wait_until(lambda: "result" in call(client, "junky__echo", {"text": f"after {tool}"}).message,
               RECOVERY, f"junky to serve after {tool}")


def test_credentials_appear_in_no_answer_or_log(gw):
    """After all the faults above: the admin listener's answers carry no credential of an
    upstream; nor do the gateway's log or audit log (they may name the server)."""
    assert_no_secret_anywhere_but_logs(gw)
    log = gw.log()
    leaked = [line for line in log.splitlines() if any(s in line for s in FORBIDDEN)]
    assert not leaked, f"the gateway's log carries upstream credentials ({len(leaked)} lines), e.g.: {leaked[:3]}"
    audit = gw.audit_path.read_text() if gw.audit_path.exists() else ""
    leaked = [line for line in audit.splitlines() if any(s in line for s in FORBIDDEN)]
    assert not leaked, f"the audit log carries upstream credentials ({len(leaked)} lines), e.g.: {leaked[:3]}"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- hung from the start


class PatientGateway(Gateway):
    """A Gateway that waits READY_WAIT for /readyz (not the harness's 60 s) and notes how long
    getting ready took."""

    def wait_ready(self, admin_url: str, timeout: float = 60) -> None:
        started = time.monotonic()
        super().wait_ready(admin_url, timeout=READY_WAIT)
        self.ready_after = time.monotonic() - started


def test_upstream_hung_from_the_start_holds_back_nothing(e2e_tmp):
    """An HTTP upstream that accepts connections and never answers, not even initialize: the
    gateway gets ready within about its connect_timeout (the others serve), reports it failed
    on /readyz without its credentials, and a call meant for it fails fast naming it."""
    tmp = e2e_tmp / "faults-hung"
    tmp.mkdir(parents=True, exist_ok=True)
    hung = FaultyHttp(tmp, "hungstart", hang=True)
    gw = None
    try:
        gw = PatientGateway(tmp, {"everything": stdio_everything(),
                                  "hungstart": secret_http(hung.port, connect_timeout=f"{CONNECT_TIMEOUT:g}s")},
                            name="sluice-faults-hung")
        assert gw.ready_after <= CONNECT_TIMEOUT + SLACK + 2, (
            f"/readyz took {gw.ready_after:.1f}s with one upstream hung at initialize "
            f"(its connect_timeout is {CONNECT_TIMEOUT:g}s)"
        )
        ready = httpx.get(f"{gw.admin_url}/readyz", timeout=10)
        assert_no_secret(ready.text, "/readyz")
        state = ready.json()["servers"]
        assert state["hungstart"]["health"] != "ready", ready.text
        assert state["everything"]["health"] == "ready", ready.text
        client = gw.client()
        client.initialize()
        with HealthyTraffic(gw) as healthy:
            answer = call(client, "hungstart__echo", {"text": "anyone?"})
            assert_fault_error(answer, "hungstart", within=REQUEST_TIMEOUT + SLACK)
            healthy.check()
        client.close()
        assert_no_secret_anywhere_but_logs(gw)
        leaked = [line for line in gw.log().splitlines() if any(s in line for s in FORBIDDEN)]
        assert not leaked, f"the gateway's log carries upstream credentials: {leaked[:3]}"
    finally:
        if gw is not None:
            gw.stop()
        hung.stop()


def test_upstream_down_from_the_start_is_reported_without_credentials(e2e_tmp):
    """An HTTP upstream whose port refuses connections when the gateway starts: the gateway gets
    ready, /readyz says the server failed, a call meant for it fails at once naming it, and
    neither the answers nor the log carry its credentials."""
    tmp = e2e_tmp / "faults-absent"
    gw = Gateway(tmp, {"everything": stdio_everything(), "absent": secret_http(free_port())},
                 name="sluice-faults-absent")
    try:
        ready = httpx.get(f"{gw.admin_url}/readyz", timeout=10)
        assert ready.json()["servers"]["absent"]["health"] != "ready", ready.text
        assert_no_secret(ready.text, "/readyz")
        client = gw.client()
        client.initialize()
        with HealthyTraffic(gw) as healthy:
            assert_fault_error(call(client, "absent__echo", {"text": "anyone?"}), "absent", within=SLACK)
            healthy.check()
        client.close()
        assert_no_secret_anywhere_but_logs(gw)
        leaked = [line for line in gw.log().splitlines() if any(s in line for s in FORBIDDEN)]
        assert not leaked, f"the gateway's log carries upstream credentials: {leaked[:3]}"
    finally:
        gw.stop()


# --------------------------------------------------------------------------- killed mid-call


@pytest.fixture(scope="module")
def doomed_setup(e2e_tmp):
    """A gateway with the healthy upstream, the Python fixture server over stdio (`py`, with
    `hold`) and a faulty HTTP server (`doomed`, request_timeout 10 s, so that an error caused by
    the kill is told apart from a timeout)."""
    tmp = e2e_tmp / "faults-killed"
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "py-record.txt"
    record.touch()
    doomed = FaultyHttp(tmp, "doomed")
    servers = [doomed]
    try:
        gateway = Gateway(tmp, {"everything": stdio_everything(), "py": stdio_py(record),
                                "doomed": secret_http(doomed.port, timeout=10)},
                          name="sluice-faults-killed")
    except BaseException:
        doomed.stop()
        raise
    yield gateway, record, servers, tmp
    gateway.stop()
    for server in servers:
        server.stop()


def test_stdio_upstream_killed_mid_call(doomed_setup):
    """SIGKILL a stdio child while a call to it is in flight: that call fails at once naming the
    server, the others keep serving, and the supervisor starts a new child that answers."""
    gw, record, _, _ = doomed_setup
    client = gw.client(client=httpx.Client(timeout=httpx.Timeout(10, read=60)))
    client.initialize()
    first = client.call_tool("py__whoami")
    assert "result" in first, first
    old_pid = int(re.search(r"pid=(\d+)", first["result"]["content"][0]["text"]).group(1))
    assert gw.stdio_children(str(PY_SERVER)) == [old_pid]
    with HealthyTraffic(gw) as healthy:
        thread, out = in_thread(call, client, "py__hold", {"tag": "killed", "timeout": 30})
        wait_until(lambda: "hold-start:killed" in record.read_text(), 10, "the hold call to reach py")
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: not is_running(old_pid), 10, "the killed child to die")
        answer = joined(thread, out, 30)
        waited = time.monotonic() - killed_at
        assert_fault_error(answer, "py", within=answer.elapsed)
        assert waited <= SLACK, f"the in-flight call failed {waited:.1f}s after the kill"

        other = gw.client()
        other.initialize()

        def back() -> int | None:
            message = other.call_tool("py__whoami")
            if "result" in message:
                return int(re.search(r"pid=(\d+)", message["result"]["content"][0]["text"]).group(1))
            assert names_server(message["error"]["message"], "py"), message
            return None

        new_pid = wait_until(back, RECOVERY, "the killed stdio server to be restarted", interval=0.2)
        assert new_pid != old_pid
        assert gw.stdio_children(str(PY_SERVER)) == [new_pid]
        healthy.check()
    other.close()
    client.close()


def test_http_upstream_killed_mid_call(doomed_setup):
    """SIGKILL an HTTP upstream while a call to it is in flight: that call fails at once (not at
    the timeout) naming the server, so do calls while it is down, all without its credentials;
    the others keep serving; once it is back on the same port, its calls succeed again."""
    gw, _, servers, tmp = doomed_setup
    doomed = servers[0]
    client = gw.client(client=httpx.Client(timeout=httpx.Timeout(10, read=60)))
    client.initialize()
    assert_echo(call(client, "doomed__echo", {"text": "before"}), "before")
    with HealthyTraffic(gw) as healthy:
        thread, out = in_thread(call, client, "doomed__hang")
        wait_until(lambda: "hang-start" in doomed.log(), 10, "the hang call to reach doomed")
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        answer = joined(thread, out, 30)
        waited = time.monotonic() - killed_at
        assert_fault_error(answer, "doomed", within=answer.elapsed)
        assert waited <= SLACK, f"the in-flight call failed {waited:.1f}s after the kill (timeout is 10 s)"

        down = gw.client()
        down.initialize()
        for i in range(3):
            assert_fault_error(call(down, "doomed__echo", {"text": f"down-{i}"}), "doomed", within=SLACK)
        healthy.check()
    assert_no_secret_anywhere_but_logs(gw)

    servers.append(FaultyHttp(tmp, "doomed-again", port=doomed.port))

    def back() -> bool:
        answer = call(down, "doomed__echo", {"text": "back"})
        if "result" in answer.message:
            assert_echo(answer, "back")
            return True
        assert_fault_error(answer, "doomed", within=10 + SLACK)
        return False

    wait_until(back, RECOVERY, "calls to the restarted HTTP upstream to succeed", interval=0.3)
    down.close()
    client.close()
    leaked = [line for line in gw.log().splitlines() if any(s in line for s in FORBIDDEN)]
    assert not leaked, f"the gateway's log carries upstream credentials: {leaked[:3]}"
