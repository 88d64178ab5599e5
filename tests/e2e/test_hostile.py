"""The hostile input battery: malformed and hostile requests of both protocol eras, each
answered with the right error while well-formed traffic goes on beside them unharmed, and the
gateway's memory stays bounded.

One gateway (stdio server-everything, the Python fixture server, and a second server-everything
for the background traffic; two keys) serves the whole battery. A background thread sends
well-formed traffic of both eras (tools/call, tools/list) from the first case to the last and
must see no error. Every case is one row of `CASES`: how
it is sent (httpx, or a raw socket for what httpx refuses to send), the HTTP status it must
get and, where the answer is JSON-RPC, the error code; every answer is also checked for what
no answer may do: echo a key, or explain itself with anything but a short readable sentence.
The last test sends the light cases again many times and compares the gateway's RSS before the
battery and after.

Two more gateways test what needs their own settings: sessions that expire (`session_ttl`),
and bodies and request heads that never finish (`limits.body_timeout`, `limits.header_timeout`).

Eras in case ids: `s-` a 2025-11-25 session, `n-` the stateless 2026-07-28 era, `h-` HTTP
framing that no era reaches.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx
import pytest

from harness import (
    ACCEPT,
    DEFAULT_KEY,
    LATEST_PROTOCOL,
    META_CAPABILITIES,
    META_PROTOCOL,
    NEW_ERA,
    Gateway,
    RawMcp,
    StatelessMcp,
    sse_events,
    stdio_everything,
    stdio_py,
    vm_rss_kb,
)

# --------------------------------------------------------------------------- settings

OTHER_KEY = "other-hostile-key-0002-do-not-echo"
#: A key no gateway knows, shaped like a real one: it must never come back in an answer.
WRONG_KEY = "sk-live-hostile-wrong-key-0003-do-not-echo"
SECRETS = (DEFAULT_KEY, OTHER_KEY, WRONG_KEY)

ECHO = "everything__echo"
SUM = "everything__get-sum"
ELICIT = "everything__trigger-elicitation-request"
LONG = "everything__trigger-long-running-operation"
ARGS_PROMPT = "everything__args-prompt"
ADD = "py__add"
#: The well-formed traffic's stateless calls go to a server of their own: over stdio, Sluice can
#: relay a server's request (the elicitation cases' elicitation/create) only while a single call
#: to that server is in flight, so traffic on `everything` would make those cases flaky.
SIDE_ECHO = "side__echo"
#: The second key may use the Python server's tools, echo and the elicitation tool (so that its
#: use of someone else's requestState reaches the requestState check), nothing else.
KEYS = [{"name": "other", "key": OTHER_KEY, "tools": ["py__*", ECHO, ELICIT]}]

MAX_BODY = 4 * 1024 * 1024
#: A string that fits in a request just under the body limit.
BIG = 3 * 1024 * 1024
#: Nesting depth of the deep-nesting cases.
DEEP = 100_000
#: An error message is a sentence for a person: never longer than this.
MAX_MESSAGE = 2000
#: How long a raw-socket case waits for the gateway's answer.
RAW_TIMEOUT = 5.0
#: server-everything asks its client for roots/list 350 ms after `initialized`; a stateless call
#: in flight then would get that question (see test_stateless.py). Let it pass first.
UPSTREAM_SETTLE = 1.5
#: How much the gateway's RSS may grow over the battery and its repetitions.
RSS_GROWTH_LIMIT_KB = 64 * 1024
#: How much it may grow while the light cases are repeated (a leak grows with each round).
RSS_REPEAT_GROWTH_LIMIT_MB = 16
#: The light cases are sent up to REPEATS times more after the battery: as often as fits in
#: REPEAT_BUDGET seconds, and at least MIN_REPEATS times.
REPEATS = 20
MIN_REPEATS = 3
REPEAT_BUDGET = 10.0

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
HEADER_MISMATCH, UNSUPPORTED_VERSION = -32020, -32022
#: `code=REFUSAL`: an HTTP refusal whose body is a JSON-RPC error, whatever its code.
REFUSAL = "any JSON-RPC error"


# --------------------------------------------------------------------------- what came back


@dataclass
class Outcome:
    """What one hostile request got: the first HTTP response on the connection (status None
    when there was none), how long it took, and how many responses the connection carried."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed: float = 0.0
    responses: int = 1
    #: Whether the gateway closed the connection (raw sockets only).
    closed: bool = True
    note: str = ""
    #: What the session's owner got on its next request (cases that try to end a session).
    after: "Outcome | None" = None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def preview(self) -> str:
        text = self.text()
        if len(text) > 400:
            text = f"{text[:300]}... ({len(text)} chars)"
        return f"HTTP {self.status} {self.headers.get('content-type')!r} {text!r} {self.note}".strip()

    def message(self) -> dict:
        """The JSON-RPC message of the answer (the last response of an SSE answer)."""
        text = self.text()
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            answers = [m for m in sse_events(text.splitlines()) if "result" in m or "error" in m]
            assert answers, f"no JSON-RPC answer in the event stream: {self.preview()}"
            return answers[-1]
        try:
            message = json.loads(text)
        except ValueError:
            raise AssertionError(f"the answer is not JSON: {self.preview()}") from None
        assert isinstance(message, dict), f"the answer is not a JSON object: {self.preview()}"
        return message


def from_httpx(response: httpx.Response, elapsed: float) -> Outcome:
    return Outcome(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                   response.content, elapsed)


def parse_http(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP responses in `data`, in order (Content-Length or chunked bodies)."""
    out = []
    rest = data
    while rest.startswith(b"HTTP/"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, rest = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body, rest = body + rest[:size], rest[size + 2:]
        else:
            body, rest = rest, b""
        out.append((status, headers, body))
    return out


def raw_exchange(port: int, pieces: list[bytes] | bytes, timeout: float = RAW_TIMEOUT,
                 pause: float = 0.0) -> Outcome:
    """Send `pieces` on a new connection (reading at the same time, so an early answer to a
    request whose sending is cut short is not lost), then read until the gateway closes the
    connection or `timeout` passes."""
    if isinstance(pieces, bytes):
        pieces = [pieces]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = bytearray()
    state = {"closed": False, "note": ""}
    started = time.monotonic()
    first_byte: list[float] = []

    def read() -> None:
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state["note"] = f"(connection still open after {timeout:.0f}s)"
                return
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                state["note"] = f"(connection still open after {timeout:.0f}s)"
                return
            except OSError as e:
                state["closed"] = True
                state["note"] = f"({e.__class__.__name__})"
                return
            if not chunk:
                state["closed"] = True
                return
            if not first_byte:
                first_byte.append(time.monotonic() - started)
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for piece in pieces:
            sock.sendall(piece)
            if pause:
                time.sleep(pause)
    except OSError:
        pass  # the gateway answered and closed before taking it all: the answer is read anyway
    reader.join(timeout + 1)
    sock.close()
    responses = parse_http(bytes(received))
    elapsed = first_byte[0] if first_byte else time.monotonic() - started
    if not responses:
        return Outcome(None, {}, bytes(received), elapsed, 0, state["closed"], state["note"])
    status, headers, body = responses[0]
    return Outcome(status, headers, body, elapsed, len(responses), state["closed"], state["note"])


# --------------------------------------------------------------------------- the battery's world


class Traffic:
    """Well-formed traffic of both eras in a background thread: a session calling py__add and
    listing tools, a stateless client calling side__echo and listing tools. Every failure is
    kept."""

    def __init__(self, url: str):
        self.url = url
        self.errors: list[str] = []
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="well-formed-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        http = httpx.Client(timeout=30)
        try:
            session = RawMcp(self.url, client=http, key=DEFAULT_KEY)
            session.initialize()
            stateless = StatelessMcp(self.url, key=DEFAULT_KEY, http=http)
        except Exception as e:  # noqa: BLE001 - reported by the last test
            self.errors.append(f"setup: {e!r}")
            return
        steps = [self._session_call, self._session_list, self._stateless_call, self._stateless_list]
        i = 0
        while not self._stop.is_set():
            i += 1
            step = steps[i % len(steps)]
            try:
                step(session, stateless, i)
                self.done += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                self.errors.append(f"#{i} {step.__name__}: {e!r}"[:1000])
            self._stop.wait(0.005)
        try:
            session.delete()
        finally:
            http.close()

    @staticmethod
    def _session_call(session: RawMcp, _: StatelessMcp, i: int) -> None:
        message = session.call_tool(ADD, {"a": i, "b": 1})
        result = message.get("result") or {}
        assert not result.get("isError") and result.get("structuredContent") == {"result": i + 1}, message

    @staticmethod
    def _session_list(session: RawMcp, _: StatelessMcp, i: int) -> None:
        names = session.tool_names()
        assert {ADD, ECHO, SIDE_ECHO} <= names, sorted(names)

    @staticmethod
    def _stateless_call(_: RawMcp, stateless: StatelessMcp, i: int) -> None:
        response, message = stateless.call_tool(SIDE_ECHO, {"message": f"traffic {i}"})
        texts = [b.get("text") for b in (message.get("result") or {}).get("content", [])]
        assert response.status_code == 200 and f"Echo: traffic {i}" in texts, f"HTTP {response.status_code} {message}"

    @staticmethod
    def _stateless_list(_: RawMcp, stateless: StatelessMcp, i: int) -> None:
        names = {t["name"] for t in stateless.result("tools/list")["tools"]}
        assert {ADD, ECHO, SIDE_ECHO} <= names, sorted(names)


class Battery:
    """The gateway under attack and what cases need to reach it."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.url = gw.url
        self.port = gw.port
        self.http = httpx.Client(timeout=httpx.Timeout(20))
        self.traffic = Traffic(gw.url)
        self.rss_cold_kb = 0
        self.rss_before_kb = 0

    def close(self) -> None:
        self.http.close()

    @contextmanager
    def session(self, key: str = DEFAULT_KEY) -> Iterator[RawMcp]:
        """A new initialized session of `key`, ended (DELETE) afterwards."""
        client = RawMcp(self.url, client=self.http, key=key)
        client.initialize()
        try:
            yield client
        finally:
            client.delete()

    def stateless(self, key: str | None = DEFAULT_KEY) -> StatelessMcp:
        return StatelessMcp(self.url, key=key, http=self.http)

    def post(self, body: Any, headers: dict[str, str], drop: tuple[str, ...] = ()) -> Outcome:
        """POST `body` with `headers`, without the headers named in `drop` (not even the
        defaults httpx would add)."""
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        request = self.http.build_request("POST", self.url, content=content, headers=headers)
        for name in drop:
            if name in request.headers:
                del request.headers[name]
        started = time.monotonic()
        response = self.http.send(request)
        return from_httpx(response, time.monotonic() - started)

    def request(self, method: str, headers: dict[str, str], path: str = "/mcp") -> Outcome:
        """A bodiless request; an event stream it opens is closed at once, unread."""
        started = time.monotonic()
        with self.http.stream(method, f"http://127.0.0.1:{self.port}{path}", headers=headers) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()
            outcome = from_httpx(response, time.monotonic() - started) if response.is_stream_consumed else Outcome(
                response.status_code, {k.lower(): v for k, v in response.headers.items()}, b"",
                time.monotonic() - started, note="(an event stream was opened)")
        return outcome

    def raw(self, pieces: list[bytes] | bytes, timeout: float = RAW_TIMEOUT, pause: float = 0.0) -> Outcome:
        return raw_exchange(self.port, pieces, timeout, pause)


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> Iterator[Battery]:
    gw = Gateway(tmp_path_factory.mktemp("hostile") / "gw",
                 {"everything": stdio_everything(), "py": stdio_py(), "side": stdio_everything()},
                 name="sluice-hostile", keys=[dict(k) for k in KEYS], max_body_bytes=MAX_BODY)
    world = Battery(gw)
    try:
        time.sleep(UPSTREAM_SETTLE)
        # Warm up what every request touches, so that the RSS baseline is not the cold start;
        # big bodies too: the allocator keeps the high-water mark of a few multi-megabyte
        # requests, which is not what the battery leaves behind.
        world.rss_cold_kb = vm_rss_kb(gw.pid)
        for _ in range(2):
            with world.session() as c:
                c.tool_names()
                c.call_tool(ADD, {"a": 1, "b": 2})
                c.call_tool(ECHO, {"message": "w" * BIG})
            world.stateless().result("tools/call", {"name": ECHO, "arguments": {"message": "w" * BIG}})
            world.stateless().result("tools/call", {"name": SIDE_ECHO, "arguments": {"message": "warm"}})
        world.rss_before_kb = vm_rss_kb(gw.pid)
        world.traffic.start()
        yield world
    finally:
        world.traffic.stop()
        world.close()
        gw.stop()


# --------------------------------------------------------------------------- what every answer must be


def readable(message: Any, where: str) -> None:
    """A short sentence a person can read."""
    assert isinstance(message, str), f"{where}: the error message is not a string: {message!r}"
    shown = message if len(message) <= 300 else f"{message[:200]}... ({len(message)} chars)"
    assert 10 <= len(message) <= MAX_MESSAGE, f"{where}: the error message is not a short sentence: {shown!r}"
    assert len(message.split()) >= 3, f"{where}: the error message is not a sentence: {shown!r}"
    controls = [c for c in message if ord(c) < 32 and c not in "\n\t"]
    assert not controls, f"{where}: the error message holds control characters {controls!r}: {shown!r}"


def no_secrets(outcome: Outcome, where: str) -> None:
    """No key, in any case, in the answer's headers or body."""
    seen = (outcome.body.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in outcome.headers.items())).lower()
    for secret in SECRETS:
        assert secret.lower() not in seen, f"{where}: the answer echoes a key ({secret[:8]}...): {outcome.preview()}"


@dataclass
class Case:
    id: str
    send: Callable[[Battery], Outcome]
    #: The HTTP statuses that are right.
    status: tuple[int, ...]
    #: The JSON-RPC error code(s) the body must carry; REFUSAL: any code; None: no JSON-RPC
    #: error is required (a success, or a refusal below HTTP that has no body).
    code: int | tuple[int, ...] | str | None = None
    #: The answer's id, when it must be checked (an error to a request whose id was readable).
    rpc_id: Any = "unchecked"
    #: Further checks of the outcome.
    check: Callable[[Outcome], None] | None = None
    #: The answer must come within this many seconds.
    within: float | None = None
    #: Left out of the repetitions (slow, or large).
    heavy: bool = False


def verify(case: Case, outcome: Outcome) -> None:
    where = case.id
    assert outcome.status in case.status, (
        f"{where}: want HTTP {' or '.join(map(str, case.status))}, got {outcome.status} after {outcome.elapsed:.2f}s: "
        f"{outcome.preview()}"
    )
    no_secrets(outcome, where)
    if case.within is not None:
        assert outcome.elapsed <= case.within, f"{where}: answered after {outcome.elapsed:.2f}s (> {case.within}s)"
    if case.code is not None:
        assert outcome.body.strip(), f"{where}: want a JSON-RPC error, got an empty body: {outcome.preview()}"
        message = outcome.message()
        assert message.get("jsonrpc") == "2.0", f"{where}: not a JSON-RPC message: {outcome.preview()}"
        error = message.get("error")
        assert isinstance(error, dict) and "result" not in message, f"{where}: no JSON-RPC error: {outcome.preview()}"
        if case.code != REFUSAL:
            codes = case.code if isinstance(case.code, tuple) else (case.code,)
            want = " or ".join(map(str, codes))
            assert error.get("code") in codes, f"{where}: want error code {want}: {outcome.preview()}"
        else:
            assert isinstance(error.get("code"), int), f"{where}: error without an integer code: {outcome.preview()}"
        readable(error.get("message"), where)
        if case.rpc_id != "unchecked":
            assert message.get("id") == case.rpc_id, f"{where}: want id {case.rpc_id!r}: {outcome.preview()}"
    if case.check is not None:
        case.check(outcome)


# --------------------------------------------------------------------------- how cases are sent


def s_post(body: Any, *, key: str = DEFAULT_KEY, drop: tuple[str, ...] = (),
           **headers: str) -> Callable[[Battery], Outcome]:
    """POST `body` (bytes, a JSON value, or a function of the client giving one) on a new
    session of `key`, with the session's headers; `headers` override, `drop` removes."""

    def send(b: Battery) -> Outcome:
        with b.session(key) as c:
            content = body(c) if callable(body) else body
            return b.post(content, {**c.headers(), **headers}, drop)

    return send


#: The id of `s_request` requests.
S_ID = 100


def s_request(method: str, params: Any = None, **kwargs: Any) -> Callable[[Battery], Outcome]:
    """A session-era request of `method` with `params` (None: no params member), id `S_ID`."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": S_ID, "method": method}
    if params is not None:
        body["params"] = params
    return s_post(body, **kwargs)


def n_post(method: str, params: dict | None = None, *, key: str | None = DEFAULT_KEY,
           mutate: Callable[[dict], Any] | None = None, encode: Callable[[dict], bytes | str] | None = None,
           header_params: dict | None = None, drop: tuple[str, ...] = (), **headers: str) -> Callable[[Battery], Outcome]:
    """A stateless-era request: `mutate` edits the body (dict) in place, `encode` turns it into
    the bytes sent; the era's headers are derived from `header_params` (default: `params`)."""

    def send(b: Battery) -> Outcome:
        client = b.stateless(key)
        body = client.body(method, params)
        if mutate is not None:
            mutate(body)
        content = encode(body) if encode is not None else json.dumps(body)
        all_headers = {**client.headers(method, params if header_params is None else header_params), **headers}
        return b.post(content, all_headers, drop)

    return send


def set_in(path: str, value: Any) -> Callable[[dict], None]:
    """A body mutation: set `value` at the dotted `path` (`params._meta.<key>` keeps the dots
    of a `_meta` key whole)."""

    def mutate(body: dict) -> None:
        parts = path.split(".", 2) if path.startswith("params._meta.") else path.split(".")
        target = body
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = value

    return mutate


def head(first: bytes = b"POST /mcp HTTP/1.1", *, key: bytes | None = DEFAULT_KEY.encode(), era: str = "session",
         extra: bytes = b"", length: int | None = None, close: bool = True) -> bytes:
    """A raw request head: JSON POST headers, the key, and the era's headers (`new`: the
    stateless era's for tools/list; `session`: none, the request is refused before its session
    is looked at, or it initializes)."""
    lines = [first, b"Host: 127.0.0.1"]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key)
    lines += [b"Accept: application/json, text/event-stream", b"Content-Type: application/json"]
    if era == "new":
        lines += [b"MCP-Protocol-Version: " + NEW_ERA.encode(), b"Mcp-Method: tools/list"]
    if close:
        lines.append(b"Connection: close")
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def new_era_list_body() -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
        META_PROTOCOL: NEW_ERA, META_CAPABILITIES: {}}}}).encode()


def initialize_body() -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LATEST_PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "hostile", "version": "0"}}}).encode()


def h_raw(first: bytes = b"POST /mcp HTTP/1.1", *, era: str = "new", extra: bytes = b"", body: bytes | None = None,
          key: bytes | None = DEFAULT_KEY.encode(), timeout: float = RAW_TIMEOUT) -> Callable[[Battery], Outcome]:
    """A raw request: `first` line, the usual headers plus `extra`, and `body` (a stateless
    tools/list by default) with its Content-Length."""

    def send(b: Battery) -> Outcome:
        content = new_era_list_body() if body is None else body
        return b.raw(head(first, key=key, era=era, extra=extra, length=len(content)) + content, timeout)

    return send


def initialize_with(params: Any) -> Callable[[Battery], Outcome]:
    """An `initialize` request with `params` (`...`: without params)."""

    def send(b: Battery) -> Outcome:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "initialize"}
        if params is not ...:
            body["params"] = params
        headers = {"Accept": ACCEPT, "Content-Type": "application/json", "Authorization": f"Bearer {DEFAULT_KEY}"}
        outcome = b.post(body, headers)
        session = outcome.headers.get("mcp-session-id")
        if session:  # a session was opened anyway: end it
            b.http.delete(b.url, headers={"Mcp-Session-Id": session, "Authorization": f"Bearer {DEFAULT_KEY}"})
        return outcome

    return send


GOOD_INIT = {"protocolVersion": LATEST_PROTOCOL, "capabilities": {}, "clientInfo": {"name": "hostile", "version": "0"}}


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- cases that need more than one request


def session_of_other_key(b: Battery) -> Outcome:
    """Key `other` presents the session of the default key."""
    with b.session() as victim:
        thief = RawMcp(b.url, client=b.http, key=OTHER_KEY)
        headers = {**thief.headers(), "Mcp-Session-Id": victim.session_id, "MCP-Protocol-Version": victim.protocol_version}
        return b.post(thief.request_body("tools/list", {}), headers)


def flipped(token: str) -> str:
    """`token` with one character near its end changed."""
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]


def forged_session(b: Battery) -> Outcome:
    with b.session() as c:
        return b.post(c.request_body("tools/list", {}), c.headers(**{"Mcp-Session-Id": flipped(c.session_id)}))


def replayed_session(b: Battery) -> Outcome:
    with b.session() as c:
        ended = c.delete()
        assert ended.status_code == 200, f"DELETE of the own session: HTTP {ended.status_code} {ended.text}"
        return b.post(c.request_body("tools/list", {}), c.headers())


def delete_other_keys_session(b: Battery) -> Outcome:
    """Key `other` DELETEs the default key's session: refused as unknown, and the session
    goes on serving its owner."""
    with b.session() as victim:
        started = time.monotonic()
        response = b.http.delete(b.url, headers={"Mcp-Session-Id": victim.session_id,
                                                 "Authorization": f"Bearer {OTHER_KEY}"})
        outcome = from_httpx(response, time.monotonic() - started)
        outcome.after = b.post(victim.request_body("tools/list", {}), victim.headers())
        return outcome


def stream_of_other_key(b: Battery) -> Outcome:
    with b.session() as victim:
        return b.request("GET", {"Accept": "text/event-stream", "Mcp-Session-Id": victim.session_id,
                                 "Authorization": f"Bearer {OTHER_KEY}"})


def first_round(client: StatelessMcp) -> tuple[str, str]:
    """Start an elicitation call: the question's key and the requestState to retry with."""
    response, message = client.call_tool(ELICIT)
    result = message.get("result") or {}
    assert response.status_code == 200 and result.get("resultType") == "input_required", (
        f"the elicitation tool did not ask: HTTP {response.status_code} {message}")
    (key,) = result["inputRequests"].keys()
    return key, result["requestState"]


def answer(key: str, name: str) -> dict:
    return {key: {"action": "accept", "content": {"name": name, "check": True}}}


def finish(client: StatelessMcp, key: str, state: str) -> None:
    """Complete a paused call, so that nothing stays parked in the gateway (and check that the
    refusals before did not consume it)."""
    response, message = client.call_tool(ELICIT, inputResponses=answer(key, "Owner"), requestState=state)
    texts = " ".join(b.get("text", "") for b in (message.get("result") or {}).get("content", []))
    assert "Name: Owner" in texts, f"the owner's retry after a refused one failed: HTTP {response.status_code} {message}"


def request_state_case(present: Callable[[Battery, StatelessMcp, str, str], Outcome]) -> Callable[[Battery], Outcome]:
    """Pause an elicitation call of the default key, let `present` misuse its requestState,
    then complete the call with the real one."""

    def send(b: Battery) -> Outcome:
        owner = b.stateless()
        key, state = first_round(owner)
        try:
            return present(b, owner, key, state)
        finally:
            finish(owner, key, state)

    return send


def timed_call(client: StatelessMcp, tool: str, **params: Any) -> Outcome:
    body = client.body("tools/call", {"name": tool, "arguments": {}, **params})
    started = time.monotonic()
    response = client.post(body, client.headers("tools/call", {"name": tool}))
    return from_httpx(response, time.monotonic() - started)


def state_tampered(b, owner, key, state):
    return timed_call(owner, ELICIT, inputResponses=answer(key, "Mallory"), requestState=flipped(state))


def state_of_other_key(b, owner, key, state):
    return timed_call(b.stateless(OTHER_KEY), ELICIT, inputResponses=answer(key, "Mallory"), requestState=state)


def state_for_other_tool(b, owner, key, state):
    return timed_call(owner, ECHO, arguments={"message": "x"}, inputResponses=answer(key, "Mallory"), requestState=state)


def state_as_session_id(b, owner, key, state):
    client = RawMcp(b.url, client=b.http, key=DEFAULT_KEY)
    return b.post(client.request_body("tools/list", {}), client.headers(**{
        "Mcp-Session-Id": state, "MCP-Protocol-Version": LATEST_PROTOCOL}))


def replayed_request_state(b: Battery) -> Outcome:
    owner = b.stateless()
    key, state = first_round(owner)
    finish(owner, key, state)
    return timed_call(owner, ELICIT, inputResponses=answer(key, "Again"), requestState=state)


def session_id_as_request_state(b: Battery) -> Outcome:
    with b.session() as c:
        return timed_call(b.stateless(), ELICIT, inputResponses={"input-1": {"action": "accept", "content": {}}},
                          requestState=c.session_id)


def duplicate_ids_in_a_session(b: Battery) -> Outcome:
    """Two calls with the same id in flight at once on one session: each is answered with its
    own result, or the second is refused as a duplicate; never the other's answer, never none."""
    with b.session() as c:
        def call(steps: int) -> Outcome:
            body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                    "params": {"name": LONG, "arguments": {"duration": 1, "steps": steps}}}
            return b.post(body, c.headers())

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call, 2)
            time.sleep(0.2)
            second = pool.submit(call, 3)
            outcomes = [first.result(30), second.result(30)]
    answered = 0
    for steps, outcome in zip((2, 3), outcomes):
        message = outcome.message()
        assert message.get("id") == 77, f"answer to id 77 carries id {message.get('id')!r}: {outcome.preview()}"
        if "result" in message:
            text = json.dumps(message["result"])
            assert f"Steps: {steps}." in text, f"the call with {steps} steps got another call's answer: {outcome.preview()}"
            answered += 1
        else:
            assert message["error"]["code"] == INVALID_REQUEST, (
                f"duplicate id refused with a wrong code: {outcome.preview()}")
            readable(message["error"].get("message"), "duplicate id")
    assert answered >= 1, f"neither call with the duplicate id was answered: {[o.preview() for o in outcomes]}"
    return outcomes[0]


def duplicate_ids_stateless(b: Battery) -> Outcome:
    """Eight stateless calls with one id at once (no session: nothing ties them together):
    each gets its own echo."""
    client = b.stateless()

    def call(i: int) -> Outcome:
        body = client.body("tools/call", {"name": ECHO, "arguments": {"message": f"dup {i}"}})
        body["id"] = "same"
        return b.post(body, client.headers("tools/call", {"name": ECHO}))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    for i, outcome in enumerate(outcomes):
        message = outcome.message()
        texts = [c.get("text") for c in (message.get("result") or {}).get("content", [])]
        assert message.get("id") == "same" and f"Echo: dup {i}" in texts, f"call {i}: {outcome.preview()}"
    return outcomes[0]


def method_override_ignored(b: Battery) -> Outcome:
    """X-HTTP-Method-Override does not turn a POST into a DELETE: the session survives."""
    with b.session() as c:
        outcome = b.post(c.request_body("tools/list", {}), c.headers(**{"X-HTTP-Method-Override": "DELETE"}))
        outcome.after = b.post(c.request_body("tools/list", {}), c.headers())
        return outcome


def keyless_big_body_refused_before_it_is_read(b: Battery) -> Outcome:
    """A POST without a key announcing a 4 MB body (within the limit), of which only 1 KB is
    sent: the 401 must come without waiting for the rest."""
    declared = MAX_BODY - 1024
    return b.raw(head(key=None, length=declared) + b'{"jsonrpc":"2.0","id":1,"method":"tools/list","x":"' + b"x" * 1024,
                 timeout=3)


def chunked_body_over_the_limit(b: Battery) -> Outcome:
    """A chunked body (no Content-Length to refuse it by) that grows past the limit."""
    chunk = b"x" * 65536
    pieces = [head(era="session", extra=b"Transfer-Encoding: chunked\r\n")]
    pieces += [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (MAX_BODY // len(chunk) + 16)
    pieces.append(b"0\r\n\r\n")
    return b.raw(pieces, timeout=10)


def smuggled_request(b: Battery) -> Outcome:
    """Content-Length and Transfer-Encoding at once, the chunked body followed by a second
    request: at most one answer, and the connection closed after it (the smuggled request is
    never served)."""
    body = new_era_list_body()
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    return b.raw(head(era="new", close=False, extra=b"Transfer-Encoding: chunked\r\n", length=len(chunked)) + chunked,
                 timeout=3)


def check_smuggling(outcome: Outcome) -> None:
    assert outcome.responses == 1, f"the smuggled request was answered too ({outcome.responses} responses)"
    assert outcome.closed, (
        f"the connection stayed open after a request with both Content-Length and Transfer-Encoding {outcome.note}")


def slowloris(b: Battery) -> Outcome:
    """Twenty connections that send a head and a few bytes of body, then nothing: a normal
    request meanwhile is served at once."""
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
            s.sendall(head(era="session", length=1000) + b'{"jsonrpc":')
            socks.append(s)
        time.sleep(0.3)
        with b.session() as c:
            started = time.monotonic()
            response = b.http.post(b.url, content=json.dumps(c.request_body("tools/list", {})), headers=c.headers())
            return from_httpx(response, time.monotonic() - started)
    finally:
        for s in socks:
            s.close()


def sentinel_answer(expect_id: str) -> Callable[[Outcome], None]:
    """The answer is a result whose id is written exactly as `expect_id` was sent."""

    def check(outcome: Outcome) -> None:
        verbatim = f'"id":{expect_id},' in outcome.text().replace(" ", "")
        assert verbatim, f"the id is not echoed verbatim: {outcome.preview()}"
        assert "result" in outcome.message(), outcome.preview()

    return check


def huge_number_id(outcome: Outcome) -> None:
    """1e999999 is a JSON number: echoed byte for byte, or refused as an invalid id."""
    if outcome.status == 200:
        sentinel_answer("1e999999")(outcome)
    else:
        error = outcome.message().get("error") or {}
        assert error.get("code") == INVALID_REQUEST, outcome.preview()
        readable(error.get("message"), "id 1e999999")


def echoed(text_length: int) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        message = outcome.message()
        texts = [c.get("text", "") for c in (message.get("result") or {}).get("content", [])]
        whole = texts and texts[0] == "Echo: " + "e" * text_length
        assert whole, f"the big string did not come back whole: {outcome.preview()}"

    return check


def names_header(outcome: Outcome) -> None:
    """A 400 names the x-sluice-tools header (a 431 is about the whole head, and says so)."""
    message = (outcome.message().get("error") or {}).get("message", "")
    if outcome.status == 431:
        assert "header" in message.lower(), f"the 431 does not say the headers are too large: {message!r}"
    else:
        assert "x-sluice-tools" in message.lower(), f"the refusal does not name the x-sluice-tools header: {message!r}"


def negotiated(outcome: Outcome) -> None:
    result = outcome.message().get("result") or {}
    assert result.get("protocolVersion") == LATEST_PROTOCOL, outcome.preview()
    assert "9999999999" not in outcome.text(), "the unknown version is echoed back"


def served(outcome: Outcome) -> None:
    assert "result" in outcome.message(), outcome.preview()


def session_survives(outcome: Outcome) -> None:
    after = outcome.after
    assert after is not None and after.status == 200, (
        f"the session's owner lost it: its next request got {after.preview() if after else 'nothing'}")


def no_passwd(outcome: Outcome) -> None:
    assert "root:" not in outcome.text(), f"a path traversal read a file: {outcome.preview()}"


def has_www_authenticate(outcome: Outcome) -> None:
    assert outcome.headers.get("www-authenticate", "").lower().startswith("bearer"), outcome.headers


def explains_itself(outcome: Outcome) -> None:
    """A refusal Sluice writes (not Pingora's bare 400) says why, as JSON."""
    body = json.loads(outcome.text())
    text = body["error"] if isinstance(body.get("error"), str) else body["error"]["message"]
    readable(text, "refusal")


# --------------------------------------------------------------------------- the table

S_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
#: HTTP statuses of a JSON-RPC error: the session era answers request errors with 200, the
#: stateless era some with 400 and some with 200; both are right when the code is.
RPC = (200, 400)
PROTOCOL_REFUSAL = (400,)

CASES: list[Case] = [
    # ---- broken JSON, deep nesting, framing
    Case("s-broken-json", s_post(b'{"jsonrpc": "2.0", "id": 1, "method": '), (400,), PARSE_ERROR, rpc_id=None),
    Case("n-broken-json", n_post("tools/list", encode=lambda b: json.dumps(b)[:-7]), (400,), PARSE_ERROR, rpc_id=None),
    Case("s-empty-body", s_post(b""), (400,), PARSE_ERROR),
    Case("s-invalid-utf8-body", s_post(b"\xff\xfe{}"), (400,), PARSE_ERROR),
    Case("n-invalid-utf8-in-a-string",
         n_post("tools/list", encode=lambda b: json.dumps(b).encode().replace(b'"tools/list"', b'"tools/\xff\xfelist"', 1)),
         (400,), PARSE_ERROR),
    Case("s-deep-nesting-100k-unclosed-arrays", s_post(b"[" * DEEP), (400,), PARSE_ERROR),
    Case("n-deep-nesting-100k-unclosed-objects", n_post("tools/list", encode=lambda b: b'{"a":' * DEEP), (400,),
         PARSE_ERROR),
    Case("s-deep-nesting-100k-in-tool-arguments",
         s_post(lambda c: json.dumps(c.request_body("tools/call", {"name": ECHO, "arguments": {"message": 0}}))
                .replace('"message": 0', '"message": ' + deep_array())),
         (400,), PARSE_ERROR, within=5),
    Case("n-deep-nesting-100k-in-params",
         n_post("tools/list", mutate=set_in("params.x", 0),
                encode=lambda b: json.dumps(b).replace('"x": 0', '"x": ' + deep_array())),
         (400,), PARSE_ERROR, within=5),
    Case("s-trailing-garbage", s_post(json.dumps(S_LIST).encode() + b" trailing"), (400,), PARSE_ERROR),
    Case("n-two-messages-in-one-body", n_post("tools/list", encode=lambda b: json.dumps(b) * 2), (400,), PARSE_ERROR),
    # ---- batches and non-requests
    Case("s-batch-of-two", s_post([S_LIST, {**S_LIST, "id": 2}]), (400,), INVALID_REQUEST),
    Case("n-batch-of-one", n_post("tools/list", encode=lambda b: json.dumps([b])), (400,), INVALID_REQUEST),
    Case("s-empty-batch", s_post(b"[]"), (400,), INVALID_REQUEST),
    Case("s-json-null", s_post(b"null"), (400,), INVALID_REQUEST),
    Case("s-jsonrpc-1.0", s_post({**S_LIST, "jsonrpc": "1.0"}), (400,), INVALID_REQUEST),
    Case("n-jsonrpc-missing", n_post("tools/list", mutate=lambda b: b.pop("jsonrpc")), (400,), INVALID_REQUEST),
    Case("s-jsonrpc-number", s_post({**S_LIST, "jsonrpc": 2.0}), (400,), INVALID_REQUEST),
    # ---- ids
    Case("s-id-object", s_post({**S_LIST, "id": {"a": 1}}), (400,), INVALID_REQUEST),
    Case("s-id-array", s_post({**S_LIST, "id": [1]}), (400,), INVALID_REQUEST),
    Case("n-id-true", n_post("tools/list", mutate=set_in("id", True)), (400,), INVALID_REQUEST),
    # MCP: "Requests MUST include a string or integer ID ... the ID MUST NOT be null".
    Case("s-id-null", s_post({**S_LIST, "id": None}), RPC, INVALID_REQUEST),
    Case("n-id-null", n_post("tools/list", mutate=set_in("id", None)), RPC, INVALID_REQUEST),
    Case("s-id-2^70", s_post(json.dumps({**S_LIST, "id": 2**70})), (200,), check=sentinel_answer(str(2**70))),
    Case("s-id-1e999999", s_post(json.dumps(S_LIST).replace('"id": 1', '"id": 1e999999')), (200, 400),
         check=huge_number_id),
    Case("n-id-minus-2^70-through-an-upstream",
         n_post("tools/call", {"name": ECHO, "arguments": {"message": "big id"}}, mutate=set_in("id", -(2**70))),
         (200,), check=sentinel_answer(str(-(2**70)))),
    Case("s-duplicate-id-members", s_post(b'{"jsonrpc":"2.0","id":"a","id":"b","method":"tools/list"}'), (400,),
         INVALID_REQUEST),
    Case("n-duplicate-method-members",
         n_post("tools/list", encode=lambda b: json.dumps(b).replace('"method": "tools/list"',
                                                                     '"method": "tools/list", "method": "tools/call"')),
         (400,), INVALID_REQUEST),
    Case("s-duplicate-ids-in-flight", duplicate_ids_in_a_session, (200,), heavy=True),
    Case("n-duplicate-ids-in-flight", duplicate_ids_stateless, (200,), heavy=True),
    # ---- methods
    Case("s-method-number", s_post({**S_LIST, "method": 5}), (400,), INVALID_REQUEST),
    Case("s-method-empty", s_request("", {}), (200,), METHOD_NOT_FOUND, rpc_id=S_ID),
    Case("s-method-3mb-unknown", s_post(lambda c: {"jsonrpc": "2.0", "id": 1, "method": "m" * BIG}), (200,),
         METHOD_NOT_FOUND, rpc_id=1, heavy=True),
    Case("n-method-rpc-reserved", n_post("rpc.discover"), (404,), METHOD_NOT_FOUND),
    Case("n-initialize-is-gone", n_post("initialize", dict(GOOD_INIT)), (404,), METHOD_NOT_FOUND),
    Case("s-method-smuggled-in-override-header", method_override_ignored, (200,),
         check=lambda o: (served(o), session_survives(o))),
    Case("n-method-smuggled-past-mcp-method-header",
         n_post("tools/call", {"name": ECHO, "arguments": {"message": "x"}}, **{"Mcp-Method": "tools/list"}),
         (400,), HEADER_MISMATCH),
    Case("n-tool-smuggled-past-mcp-name-header",
         n_post("tools/call", {"name": SUM, "arguments": {"a": 1, "b": 2}}, key=OTHER_KEY, **{"Mcp-Name": ADD}),
         (400,), HEADER_MISMATCH),
    Case("n-ungranted-tool", n_post("tools/call", {"name": SUM, "arguments": {"a": 1, "b": 2}}, key=OTHER_KEY),
         RPC, INVALID_PARAMS),
    Case("s-notification-of-garbage-cancel",
         s_post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"a": [1]}}}), (202,)),
    Case("s-forged-client-response", s_post({"jsonrpc": "2.0", "id": 999, "result": {}}), (400,), INVALID_REQUEST),
    # ---- params of the wrong type, field by field
    Case("s-tools-list-params-array", s_request("tools/list", [1, 2]), (200,), INVALID_PARAMS, rpc_id=S_ID),
    Case("s-tools-list-params-string", s_request("tools/list", "x"), (200,), INVALID_PARAMS, rpc_id=S_ID),
    Case("s-cursor-number", s_request("tools/list", {"cursor": 5}), (200,), INVALID_PARAMS),
    Case("n-cursor-garbage", n_post("tools/list", {"cursor": "garbage!!"}), RPC, INVALID_PARAMS),
    Case("s-cursor-past-the-end", s_request("tools/list", {"cursor": cursor("offset:999999999")}), (200,),
         INVALID_PARAMS),
    Case("n-cursor-offset-overflow", n_post("tools/list", {"cursor": cursor(f"offset:{2**70}")}), RPC, INVALID_PARAMS),
    Case("n-cursor-negative", n_post("tools/list", {"cursor": cursor("offset:-1")}), RPC, INVALID_PARAMS),
    Case("s-cursor-3mb", s_request("tools/list", {"cursor": "c" * BIG}), (200,), INVALID_PARAMS, heavy=True),
    Case("s-tools-call-without-params", s_request("tools/call"), (200,), INVALID_PARAMS),
    Case("s-tools-call-name-number", s_request("tools/call", {"name": 5, "arguments": {}}), (200,), INVALID_PARAMS),
    Case("n-tools-call-name-null", n_post("tools/call", {"name": None, "arguments": {}}), RPC, INVALID_PARAMS),
    Case("s-tools-call-arguments-string", s_request("tools/call", {"name": ADD, "arguments": "a=1"}), (200,),
         INVALID_PARAMS),
    Case("n-tools-call-arguments-array", n_post("tools/call", {"name": ADD, "arguments": [1, 2]}), RPC, INVALID_PARAMS),
    Case("s-tools-call-name-3mb", s_request("tools/call", {"name": "t" * BIG, "arguments": {}}), (200,), INVALID_PARAMS,
         heavy=True),
    Case("s-resources-read-uri-number", s_request("resources/read", {"uri": 5}), (200,), INVALID_PARAMS),
    Case("n-resources-read-uri-object", n_post("resources/read", {"uri": {"href": "x"}}, header_params={}), RPC,
         INVALID_PARAMS),
    Case("s-resources-read-file-uri", s_request("resources/read", {"uri": "file:///etc/passwd"}), (200,), INVALID_PARAMS,
         check=no_passwd),
    Case("n-resources-read-path-traversal",
         n_post("resources/read", {"uri": "everything+demo://resource/static/document/../../../../../../etc/passwd"}),
         RPC, INVALID_PARAMS, check=no_passwd),
    Case("s-prompts-get-name-array", s_request("prompts/get", {"name": [ARGS_PROMPT]}), (200,), INVALID_PARAMS),
    Case("s-prompts-get-arguments-string", s_request("prompts/get", {"name": ARGS_PROMPT, "arguments": "city=Paris"}),
         (200,), INVALID_PARAMS),
    Case("n-prompts-get-arguments-array", n_post("prompts/get", {"name": ARGS_PROMPT, "arguments": ["Paris"]}),
         RPC, INVALID_PARAMS),
    Case("s-initialize-without-params", initialize_with(...), RPC, INVALID_PARAMS),
    Case("s-initialize-params-array", initialize_with([LATEST_PROTOCOL]), RPC, INVALID_PARAMS),
    Case("s-initialize-protocol-version-number", initialize_with({**GOOD_INIT, "protocolVersion": 20251125}), RPC,
         INVALID_PARAMS),
    Case("s-initialize-capabilities-string", initialize_with({**GOOD_INIT, "capabilities": "all"}), RPC, INVALID_PARAMS),
    Case("s-initialize-client-info-number", initialize_with({**GOOD_INIT, "clientInfo": 5}), RPC, INVALID_PARAMS),
    Case("s-initialize-unknown-version-is-negotiated",
         initialize_with({**GOOD_INIT, "protocolVersion": "9999999999" * 500}), (200,), check=negotiated),
    Case("n-meta-string", n_post("tools/list", mutate=set_in("params._meta", "v")), (400,), INVALID_PARAMS),
    Case("n-client-capabilities-string", n_post("tools/list", mutate=set_in(f"params._meta.{META_CAPABILITIES}", "all")),
         (400,), INVALID_PARAMS),
    Case("n-protocol-version-number", n_post("tools/list", mutate=set_in(f"params._meta.{META_PROTOCOL}", 20260728)),
         (400,), (INVALID_PARAMS, HEADER_MISMATCH)),
    Case("n-unsupported-version-10kb",
         n_post("tools/list", mutate=set_in(f"params._meta.{META_PROTOCOL}", "2099-" + "9" * 10_000),
                **{"MCP-Protocol-Version": "2099-" + "9" * 10_000}),
         (400,), UNSUPPORTED_VERSION),
    Case("s-protocol-version-header-garbage", s_request("tools/list", {}, **{"MCP-Protocol-Version": "zzz"}),
         (400,), (INVALID_REQUEST, UNSUPPORTED_VERSION)),
    # ---- huge strings just under the body limit (hostile, but well-formed: served)
    Case("s-3mb-string-echoed", s_request("tools/call", {"name": ECHO, "arguments": {"message": "e" * BIG}}), (200,),
         check=echoed(BIG), heavy=True),
    Case("n-3mb-string-echoed", n_post("tools/call", {"name": ECHO, "arguments": {"message": "e" * BIG}}), (200,),
         check=echoed(BIG), heavy=True),
    # ---- content types, Accept, Origin
    Case("s-content-type-text-plain", s_post(S_LIST, **{"Content-Type": "text/plain"}), (415,), REFUSAL),
    Case("n-content-type-form", n_post("tools/list", **{"Content-Type": "application/x-www-form-urlencoded"}), (415,),
         REFUSAL),
    Case("s-content-type-missing", s_post(S_LIST, drop=("Content-Type",)), (415,), REFUSAL),
    Case("n-content-type-jsonx", n_post("tools/list", **{"Content-Type": "application/jsonx"}), (415,), REFUSAL),
    Case("s-accept-missing", s_post(S_LIST, drop=("Accept",)), (406,), REFUSAL),
    Case("n-accept-html", n_post("tools/list", Accept="text/html"), (406,), REFUSAL),
    Case("s-get-accepting-json-only",
         lambda b: b.request("GET", {"Accept": "application/json", "Authorization": f"Bearer {DEFAULT_KEY}",
                                     "Mcp-Session-Id": "x"}),
         (406, 404), REFUSAL),
    Case("n-get-is-not-allowed",
         lambda b: b.request("GET", {"Accept": "text/event-stream", "Authorization": f"Bearer {DEFAULT_KEY}",
                                     "MCP-Protocol-Version": NEW_ERA}),
         (405,), REFUSAL),
    Case("s-foreign-origin", s_post(S_LIST, Origin="http://evil.example"), (403,), REFUSAL),
    # ---- keys
    Case("s-no-key", lambda b: b.post(initialize_body(), {"Accept": ACCEPT, "Content-Type": "application/json"}),
         (401,), REFUSAL, check=has_www_authenticate),
    Case("n-wrong-key", n_post("tools/list", key=WRONG_KEY), (401,), REFUSAL, check=has_www_authenticate),
    Case("s-key-in-basic-auth",
         lambda b: b.post(initialize_body(), {
             "Accept": ACCEPT, "Content-Type": "application/json",
             "Authorization": "Basic " + base64.b64encode(f"u:{DEFAULT_KEY}".encode()).decode()}),
         (401,), REFUSAL),
    Case("s-two-keys-in-one-header",
         lambda b: b.post(initialize_body(), {"Accept": ACCEPT, "Content-Type": "application/json",
                                              "Authorization": f"Bearer {WRONG_KEY} {DEFAULT_KEY}"}),
         (401,), REFUSAL),
    Case("n-key-invalid-utf8", h_raw(key=b"\xff\xfe" + WRONG_KEY.encode()), (401,), REFUSAL),
    # ---- sessions: other keys', forged, replayed, stolen
    Case("s-other-keys-session", session_of_other_key, (404,), REFUSAL),
    Case("s-forged-session", forged_session, (404,), REFUSAL),
    Case("s-session-id-8kb", s_post(S_LIST, **{"Mcp-Session-Id": "A" * 8192}), (404, 400), REFUSAL),
    Case("s-session-id-invalid-utf8",
         h_raw(era="session", extra=b"Mcp-Session-Id: \xff\xfe\xfd-forged\r\n",
               body=json.dumps(S_LIST).encode()),
         (404, 400), REFUSAL),
    Case("s-replayed-session-after-delete", replayed_session, (404,), REFUSAL),
    Case("s-delete-other-keys-session", delete_other_keys_session, (404,), REFUSAL, check=session_survives),
    Case("s-stream-of-other-keys-session", stream_of_other_key, (404,), REFUSAL),
    Case("s-request-state-as-session-id", request_state_case(state_as_session_id), (404,), REFUSAL),
    # ---- requestState (2026-07-28 multi-round-trip calls)
    Case("n-request-state-garbage",
         n_post("tools/call", {"name": ECHO, "arguments": {"message": "x"}, "requestState": "garbage"}),
         RPC, INVALID_PARAMS),
    Case("n-request-state-number",
         n_post("tools/call", {"name": ECHO, "arguments": {"message": "x"}, "requestState": 5}), RPC, INVALID_PARAMS),
    Case("n-request-state-3mb",
         n_post("tools/call", {"name": ECHO, "arguments": {"message": "x"}, "requestState": "r" * BIG}),
         RPC, INVALID_PARAMS, heavy=True),
    Case("n-request-state-tampered", request_state_case(state_tampered), RPC, INVALID_PARAMS),
    Case("n-request-state-of-other-key", request_state_case(state_of_other_key), RPC, INVALID_PARAMS),
    Case("n-request-state-for-other-tool", request_state_case(state_for_other_tool), RPC, INVALID_PARAMS),
    Case("n-request-state-replayed", replayed_request_state, RPC, INVALID_PARAMS),
    Case("n-session-id-as-request-state", session_id_as_request_state, RPC, INVALID_PARAMS),
    Case("n-notification-is-accepted",
         n_post("tools/list", mutate=lambda b: b.pop("id")), (202,)),
    # ---- narrowing headers (x-sluice-tools)
    # Past `limits.max_header_bytes` the whole head is refused (431); below it, the header's own
    # cap (64 patterns, 4 KiB) answers 400 naming it.
    Case("s-sluice-tools-60kb", s_request("tools/list", {}, **{"x-sluice-tools": "a*," * 20_000}), (400, 431), REFUSAL,
         check=names_header, within=2),
    Case("s-sluice-tools-8kb", s_request("tools/list", {}, **{"x-sluice-tools": "a*," * 2_700}), (400,), REFUSAL,
         check=names_header, within=2),
    Case("s-sluice-tools-65-patterns", s_request("tools/list", {}, **{"x-sluice-tools": ",".join([ADD] * 65)}),
         (400,), REFUSAL, check=names_header, within=2),
    Case("n-sluice-tools-60kb", n_post("tools/list", **{"x-sluice-tools": "*a" * 30_000}), (400, 431), REFUSAL,
         check=names_header, within=2),
    Case("n-sluice-tools-8kb", n_post("tools/list", **{"x-sluice-tools": "*a," * 2_700}), (400,), REFUSAL,
         check=names_header, within=2),
    Case("s-narrowing-cannot-widen",
         s_request("tools/call", {"name": SUM, "arguments": {"a": 1, "b": 2}}, key=OTHER_KEY, **{"x-sluice-tools": "*"}),
         (200,), INVALID_PARAMS),
    # ---- HTTP framing and headers (raw sockets)
    Case("h-header-70kb", h_raw(extra=b"X-Big: " + b"a" * 70_000 + b"\r\n"), (431, 400)),
    Case("h-header-2mb", h_raw(extra=b"X-Big: " + b"a" * 2_000_000 + b"\r\n"), (431, 400), heavy=True),
    Case("h-1000-headers", h_raw(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(1000))), (431, 400)),
    Case("h-cr-injection-in-a-header", h_raw(extra=b"X-Note: a\rMcp-Session-Id: injected\r\n"), PROTOCOL_REFUSAL),
    Case("h-nul-in-a-header", h_raw(extra=b"X-Note: a\x00b\r\n"), PROTOCOL_REFUSAL),
    Case("h-obs-fold-header", h_raw(extra=b"X-Note: a\r\n  folded\r\n"), PROTOCOL_REFUSAL),
    Case("h-space-before-colon", h_raw(extra=b"Authorization : Bearer x\r\n"), PROTOCOL_REFUSAL),
    Case("h-content-length-and-transfer-encoding", smuggled_request, (200, 400), check=check_smuggling),
    Case("h-two-content-lengths", h_raw(extra=b"Content-Length: 5\r\n"), PROTOCOL_REFUSAL),
    Case("h-negative-content-length",
         lambda b: b.raw(head(era="new", extra=b"Content-Length: -1\r\n") + new_era_list_body()), PROTOCOL_REFUSAL),
    Case("h-unknown-transfer-encoding",
         lambda b: b.raw(head(era="new", extra=b"Transfer-Encoding: xchunked\r\n") + new_era_list_body()),
         (400, 501)),
    Case("h-http-9.9", h_raw(b"POST /mcp HTTP/9.9"), (400, 505)),
    Case("h-garbage-request-line", lambda b: b.raw(b"\x00\x01\x02 garbage\r\n\r\n"), PROTOCOL_REFUSAL),
    Case("h-http-0.9-request", lambda b: b.raw(b"GET /mcp\r\n\r\n"), PROTOCOL_REFUSAL),
    Case("h-lowercase-post", h_raw(b"post /mcp HTTP/1.1"), (405, 400)),
    Case("h-put", h_raw(b"PUT /mcp HTTP/1.1"), (405,), REFUSAL),
    Case("h-method-10kb", h_raw(b"P" * 10_000 + b" /mcp HTTP/1.1"), (405, 400, 501)),
    Case("h-uri-100kb", h_raw(b"POST /mcp?" + b"q" * 100_000 + b" HTTP/1.1"), (414, 431, 400)),
    Case("h-absolute-form-foreign-host", h_raw(b"POST http://evil.example/mcp HTTP/1.1"), (400, 404, 200)),
    # ---- path tricks: only /mcp is /mcp
    Case("h-path-dot-dot", h_raw(b"POST /mcp/../mcp HTTP/1.1"), (404, 400),
         check=lambda o: o.status == 404 and explains_itself(o)),
    Case("h-path-double-slash", h_raw(b"POST //mcp HTTP/1.1"), (404, 400)),
    Case("h-path-upper-case", h_raw(b"POST /MCP HTTP/1.1"), (404,), check=explains_itself),
    Case("h-path-nul-escape", h_raw(b"POST /mcp%00 HTTP/1.1"), (404, 400)),
    Case("h-path-percent-encoded", h_raw(b"POST /%6dcp HTTP/1.1"), (404, 400)),
    Case("h-path-semicolon", h_raw(b"POST /mcp;jsessionid=1 HTTP/1.1"), (404, 400)),
    Case("h-path-below-mcp", h_raw(b"POST /mcp/admin HTTP/1.1"), (404,), check=explains_itself),
    Case("h-path-admin-on-public-port", h_raw(b"GET /metrics HTTP/1.1", body=b""), (404,), check=explains_itself),
    # ---- bodies: too big, never finished, slow
    Case("h-declared-body-over-the-limit",
         lambda b: b.raw(head(era="session", length=MAX_BODY + 1) + b"{"), (413,), REFUSAL, within=2),
    Case("h-chunked-body-over-the-limit", chunked_body_over_the_limit, (413,), REFUSAL, heavy=True),
    Case("h-keyless-4mb-body-refused-before-it-is-read", keyless_big_body_refused_before_it_is_read, (401,), REFUSAL,
         within=2, heavy=True),
    Case("h-20-slow-bodies-do-not-block-others", slowloris, (200,), check=served, within=3, heavy=True),
]


def test_there_are_enough_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "two cases share an id"
    assert len(CASES) >= 60, len(CASES)
    assert sum(c.id.startswith("s-") for c in CASES) >= 20 and sum(c.id.startswith("n-") for c in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(battery, case):
    assert battery.gw.alive(), f"the gateway is gone before {case.id}:\n{battery.gw.log(50)}"
    outcome = case.send(battery)
    assert battery.gw.alive(), f"the gateway died on {case.id}:\n{battery.gw.log(50)}"
    verify(case, outcome)


def test_the_gateway_is_unharmed_and_its_memory_bounded(battery, capsys):
    """After the battery, the light cases again and again: the gateway still serves, the
    well-formed traffic beside it never failed, its RSS grew by less than the bound, and its
    log holds no key."""
    gw = battery.gw
    light = [c for c in CASES if not c.heavy]
    started = time.monotonic()
    rounds = 0
    samples = [vm_rss_kb(gw.pid) // 1024]
    while rounds < MIN_REPEATS or (rounds < REPEATS and time.monotonic() - started < REPEAT_BUDGET):
        for case in light:
            try:
                case.send(battery)
            except Exception:  # noqa: BLE001 - each case's own test reports what is wrong with it
                pass
        rounds += 1
        assert gw.alive(), f"the gateway died while the battery was repeated:\n{gw.log(50)}"
        samples.append(vm_rss_kb(gw.pid) // 1024)
    repeated = time.monotonic() - started
    time.sleep(0.5)
    rss_after = vm_rss_kb(gw.pid)
    battery.traffic.stop()
    growth = rss_after - battery.rss_before_kb
    with capsys.disabled():
        print(f"\n[hostile] {len(CASES)} cases; {len(light)} light ones sent {rounds} more times in {repeated:.1f}s; "
              f"gateway RSS {battery.rss_cold_kb / 1024:.1f} MB cold, {battery.rss_before_kb / 1024:.1f} MB warm "
              f"before the battery, {rss_after / 1024:.1f} MB after "
              f"(+{growth / 1024:.1f} MB, limit {RSS_GROWTH_LIMIT_KB / 1024:.0f} MB); "
              f"{battery.traffic.done} well-formed requests beside it, {len(battery.traffic.errors)} failed; "
              f"RSS (MB) after the battery and each repetition: {samples}")

    assert not battery.traffic.errors, (
        f"{len(battery.traffic.errors)} of {battery.traffic.done + len(battery.traffic.errors)} well-formed requests "
        f"failed during the battery; the first ones:\n" + "\n".join(battery.traffic.errors[:10]))
    assert battery.traffic.done >= 50, f"only {battery.traffic.done} well-formed requests ran beside the battery"
    assert samples[-1] - samples[0] < RSS_REPEAT_GROWTH_LIMIT_MB, (
        f"the gateway's RSS grew while the same requests were repeated (MB after each round): {samples}")
    assert growth < RSS_GROWTH_LIMIT_KB, (
        f"the gateway's RSS grew by {growth / 1024:.1f} MB over the battery "
        f"({battery.rss_before_kb} kB -> {rss_after} kB)")

    # It still serves both eras normally.
    with battery.session() as c:
        assert c.call_tool(ADD, {"a": 20, "b": 22})["result"]["structuredContent"] == {"result": 42}
    response, message = battery.stateless().call_tool(ECHO, {"message": "after the battery"})
    assert response.status_code == 200 and "Echo: after the battery" in json.dumps(message), message
    log = gw.log()
    for secret in SECRETS:
        assert secret not in log, f"the gateway's log holds a key ({secret[:8]}...)"
    assert "panicked" not in log, f"the gateway panicked:\n{gw.log(80)}"


# --------------------------------------------------------------------------- gateways of their own


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory) -> Iterator[tuple[Gateway, bool]]:
    """A gateway whose sessions live 2 s and whose request heads and bodies must arrive within
    2 s; and whether it has the `limits` settings (an older binary refuses them: then it runs
    without them, and only the slow-request test is given up)."""
    tmp = tmp_path_factory.mktemp("hostile-short")
    limits = {"limits": {"body_timeout": "2s", "header_timeout": "2s"}}
    try:
        gw, has_limits = Gateway(tmp / "gw", {"py": stdio_py()}, name="sluice-hostile-short", session_ttl="2s",
                                 top=limits), True
    except RuntimeError as e:
        if not any(word in str(e) for word in ("limits", "body_timeout", "header_timeout", "unknown field")):
            raise
        gw, has_limits = Gateway(tmp / "gw2", {"py": stdio_py()}, name="sluice-hostile-short",
                                 session_ttl="2s"), False
    yield gw, has_limits
    gw.stop()


def test_expired_session_is_404(short_lived):
    """A session past `mcp.session_ttl` is refused as unknown (404, so the client initializes
    again), for POST, GET and DELETE alike."""
    gw, _ = short_lived
    client = gw.client()
    client.initialize()
    initialized = time.monotonic()
    assert client.call_tool(ADD, {"a": 1, "b": 1})["result"]["structuredContent"] == {"result": 2}
    # Expiry is kept in whole seconds: past 2 s, the session may live up to a second more.
    time.sleep(max(0.0, initialized + 3.3 - time.monotonic()))
    body = client.request_body("tools/list", {})
    outcome = from_httpx(client.post(body), 0)
    verify(Case("s-expired-session", lambda b: outcome, (404,), REFUSAL, rpc_id=body["id"]), outcome)
    assert "expired" in outcome.message()["error"]["message"], outcome.preview()
    stream = client.http.get(gw.url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": client.session_id,
                                              **client.key_headers()})
    assert stream.status_code == 404, f"GET with an expired session: HTTP {stream.status_code} {stream.text}"
    deleted = client.delete()
    assert deleted.status_code == 404, f"DELETE of an expired session: HTTP {deleted.status_code} {deleted.text}"
    client.close()


def test_slow_body_and_slow_head_are_cut(short_lived):
    """A body that stops coming is given up after `limits.body_timeout` (408), a request head
    that stops coming after `limits.header_timeout` (the connection closed); other requests
    meanwhile are served at once, and the gateway serves normally after."""
    gw, has_limits = short_lived
    if not has_limits:
        pytest.xfail("needs body_timeout")
    result: dict[str, Outcome] = {}

    def stall(name: str, data: bytes) -> None:
        result[name] = raw_exchange(gw.port, data, timeout=8)

    stallers = [
        threading.Thread(target=stall, args=("body", head(era="session", length=1000) + b'{"jsonrpc":"2.0",'),
                         daemon=True),
        threading.Thread(target=stall, args=("head", b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: appl"),
                         daemon=True),
    ]
    for staller in stallers:
        staller.start()
    time.sleep(0.5)
    client = gw.client()
    client.initialize()
    started = time.monotonic()
    assert client.call_tool(ADD, {"a": 2, "b": 3})["result"]["structuredContent"] == {"result": 5}
    assert time.monotonic() - started < 1.5, "a request waited behind the slow ones"
    for staller in stallers:
        staller.join(10)

    body = result["body"]
    verify(Case("h-slow-body", lambda b: body, (408,), REFUSAL), body)
    assert 1.5 <= body.elapsed < 5, f"a body stalled for {body.elapsed:.1f}s with body_timeout=2s: {body.preview()}"
    slow_head = result["head"]
    assert slow_head.closed and slow_head.elapsed < 5 and slow_head.status in (None, 408, 400), (
        f"a request head stalled for {slow_head.elapsed:.1f}s with header_timeout=2s: {slow_head.preview()}")

    assert client.call_tool(ADD, {"a": 4, "b": 5})["result"]["structuredContent"] == {"result": 9}
    client.close()
