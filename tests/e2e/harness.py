"""Process management and a raw JSON-RPC client for Sluice's end-to-end tests.

Everything here drives real programs: the `sluice` binary, the Node
`server-everything` MCP server, the Python fixture server. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
NODE_MODULES = TESTS / "node_modules"
EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
INSPECTOR_CLI = NODE_MODULES / "@modelcontextprotocol" / "inspector-cli" / "build" / "cli.js"
PY_SERVER = TESTS / "fixtures" / "py_server.py"
PYTHON = Path(sys.executable)  # the interpreter running pytest, which has the `mcp` SDK

LATEST_PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"

# Tools server-everything always registers, whatever the client's capabilities.
EVERYTHING_TOOLS = {
    "echo",
    "get-annotated-message",
    "get-env",
    "get-resource-links",
    "get-resource-reference",
    "get-structured-content",
    "get-sum",
    "get-tiny-image",
    "gzip-file-as-resource",
    "toggle-simulated-logging",
    "toggle-subscriber-updates",
    "trigger-long-running-operation",
}
PY_TOOLS = {"add", "whoami", "fail", "record", "hold"}

# The virtual key every Gateway gets unless told otherwise: granted every tool.
DEFAULT_KEY_NAME = "tester"
DEFAULT_KEY = "tester-secret-key-0001"
# How long a gateway may finish requests in flight after SIGTERM (kept short: tests stop many).
GRACE_PERIOD = "1s"
# The environment variable through which the Python fixture server's `record`/`slow` tools
# learn where to append.
RECORD_ENV = "SLUICE_E2E_RECORD"


def bearer(key: str) -> dict[str, str]:
    """The header that presents `key` as `Authorization: Bearer <key>`."""
    return {"Authorization": f"Bearer {key}"}


def node() -> str:
    """Path of the `node` executable."""
    path = shutil.which("node")
    assert path, "node is not on PATH; the e2e tests need Node.js for server-everything"
    return path


def require(path: Path) -> Path:
    """`path`, which the e2e fixtures need; fail with the install hint if it is missing."""
    assert path.exists(), f"{path} is missing: run `npm ci --prefix tests` (Node packages) first"
    return path


def sluice_bin() -> Path:
    """Where the gateway binary is: $SLUICE_BIN, else the cargo target dir's debug build."""
    if os.environ.get("SLUICE_BIN"):
        return Path(os.environ["SLUICE_BIN"])
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "sluice")
    candidates += [Path("/work/target/debug/sluice"), REPO / "target" / "debug" / "sluice"]
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


def run_in_group(argv: list[str], timeout: float, what: str, **popen: Any) -> subprocess.CompletedProcess:
    """Run `argv` to completion in its own process group, capturing its output as text. Past
    `timeout` the group is killed and the test fails naming `what`; whatever the command left
    behind in its group is killed either way."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, **popen,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{what} ran over {timeout:.0f}s:\nstdout: {out}\nstderr: {err}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def descendants_of(pid: int) -> list[int]:
    """Every process below `pid` in the process tree."""
    found, todo = [], [pid]
    while todo:
        for kid in children_of(todo.pop()):
            found.append(kid)
            todo.append(kid)
    return found


def cmdline(pid: int) -> list[str]:
    """The argv of process `pid` ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


class Proc:
    """A child process in its own process group, with its output in a log file."""

    #: Every process still running, so that a failing test can show their logs.
    running: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        Proc.running.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, admin_url: str, timeout: float = 60) -> None:
        """Wait until a Sluice's `admin_url`/readyz answers 200; if it exits or never gets
        ready, stop it and raise with its log."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{admin_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout, f"{self.name} /readyz to answer 200")
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"{e}\n--- {self.log_path} ---\n{self.log(100)}") from None
        except BaseException:
            self.stop()
            raise

    def log(self, tail_lines: int | None = None) -> str:
        """The process's output so far (its last `tail_lines` lines if given)."""
        text = self.log_path.read_text(errors="replace")
        if tail_lines is not None:
            text = "\n".join(text.splitlines()[-tail_lines:])
        return text

    def stop(self) -> None:
        """Terminate the process, its process group and any descendant that left the group."""
        if self in Proc.running:
            Proc.running.remove(self)
        strays = descendants_of(self.pid) if self.alive() else []
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            for pid in strays:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            if not any(is_running(p) for p in strays):
                break
        self._log.close()


# --------------------------------------------------------------------------- upstreams


class ListeningProc(Proc):
    """A server process that listens on `self.port` (127.0.0.1); ready once it accepts."""

    def __init__(self, name: str, argv: list[str], log_path: Path, port: int, env: dict[str, str] | None = None):
        self.port = port
        super().__init__(name, argv, log_path, env=env)
        try:
            wait_until(self._accepts, 30, f"{name} to listen on port {port}")
        except BaseException:
            self.stop()
            raise

    def _accepts(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


class EverythingHttp(ListeningProc):
    """server-everything in Streamable HTTP mode; its endpoint is `self.url`."""

    def __init__(self, tmp: Path, name: str = "everything-http"):
        port = free_port()
        super().__init__(name, [node(), str(require(EVERYTHING_JS)), "streamableHttp"], tmp / f"{name}.log", port,
                         env={"PORT": str(port)})
        self.url = f"http://127.0.0.1:{self.port}/mcp"


def stdio_everything() -> dict:
    """Config of a stdio server-everything upstream."""
    return {"stdio": {"command": node(), "args": [str(require(EVERYTHING_JS)), "stdio"]}}


def stdio_py(record_file: Path | None = None) -> dict:
    """Config of the Python fixture server as a stdio upstream; its `record` and `slow` tools
    append to `record_file` if given."""
    stdio: dict[str, Any] = {"command": str(PYTHON), "args": [str(PY_SERVER)]}
    if record_file is not None:
        stdio["env"] = {RECORD_ENV: str(record_file)}
    return {"stdio": stdio}


def http_upstream(url: str) -> dict:
    """Config of a Streamable HTTP upstream."""
    return {"http": {"url": url}}


def main_servers(remote_url: str) -> dict[str, dict]:
    """The standard upstream set: stdio server-everything, HTTP server-everything, Python server."""
    return {
        "everything": stdio_everything(),
        "remote": {**http_upstream(remote_url), "sync_interval": "5m", "request_timeout": "30s"},
        "py": stdio_py(),
    }


# --------------------------------------------------------------------------- gateway


class Gateway(Proc):
    """A running Sluice with a generated configuration file.

    Auth is enforced (the gateway's default): the gateway gets the key `tester`
    (`DEFAULT_KEY`, every tool) unless `default_key=False`, plus `keys`. `tool_groups` go to
    `mcp.tool_groups`, `top` to the top level of the file (e.g. `enforce_auth`), the other
    keyword arguments to `mcp`. The audit log is written to `<tmp>/<name>-audit.jsonl`.
    """

    def __init__(
        self,
        tmp: Path,
        servers: dict[str, dict],
        name: str = "sluice",
        *,
        keys: list[dict] | None = None,
        tool_groups: dict[str, list[str]] | None = None,
        top: dict[str, Any] | None = None,
        default_key: bool = True,
        env: dict[str, str] | None = None,
        **mcp: Any,
    ):
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        self.key = DEFAULT_KEY if default_key else None
        all_keys = ([{"name": DEFAULT_KEY_NAME, "key": DEFAULT_KEY, "tools": ["*"]}] if default_key else [])
        all_keys += keys or []
        self.audit_path = tmp / f"{name}-audit.jsonl"
        mcp_section = dict(mcp)
        if tool_groups is not None:
            mcp_section["tool_groups"] = tool_groups
        mcp_section["servers"] = [{"name": n, **spec} for n, spec in servers.items()]
        self.config: dict[str, Any] = {
            "listen": [{"address": f"127.0.0.1:{self.port}"}],
            "admin": {"address": f"127.0.0.1:{self.admin_port}"},
            "grace_period": GRACE_PERIOD,
            **(top or {}),
            "audit": {"path": str(self.audit_path), **(top or {}).get("audit", {})},
            "mcp": mcp_section,
        }
        if all_keys:
            self.config["keys"] = all_keys
        self.config_path = tmp / f"{name}.yaml"
        self.write_config(self.config)
        binary = sluice_bin()
        if not binary.exists():
            raise FileNotFoundError(
                f"sluice binary not found at {binary}; build it with `cargo build -p sluice` "
                "or point SLUICE_BIN at it"
            )
        super().__init__(name, [str(binary), "--config", str(self.config_path)], tmp / f"{name}.log",
                         env={"NO_COLOR": "1", **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.wait_ready(self.admin_url)

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the configuration file (a dict as YAML, or raw text) without signalling."""
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def client(self, key: Any = ..., **kwargs: Any) -> "RawMcp":
        """A raw client of this gateway presenting `key` (the default key unless given)."""
        return RawMcp(self.url, key=self.key if key is ... else key, **kwargs)

    def reload(self, config: dict[str, Any] | str, expect: str = "configuration reloaded") -> None:
        """Write `config`, send SIGHUP, and wait until the log shows one more `expect` line."""
        before = self.log().count(expect)
        self.write_config(config)
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: self.log().count(expect) > before, 20, f"{self.name} to log `{expect}` after SIGHUP")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM the gateway alone (graceful shutdown); wait for it to exit; its exit code."""
        os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs {timeout:.0f}s after SIGTERM:\n{self.log(50)}") from None
        self.stop()  # reap any stdio children left behind and close the log
        return code

    def metrics(self) -> "Metrics":
        """Scrape the admin listener's /metrics."""
        response = httpx.get(f"{self.admin_url}/metrics", timeout=10)
        assert response.status_code == 200, f"/metrics: HTTP {response.status_code} {response.text}"
        return Metrics.parse(response.text)


    def stdio_children(self, script_arg: str) -> list[int]:
        """Pids of the gateway's child processes whose command line contains `script_arg`."""
        return [pid for pid in descendants_of(self.pid) if any(script_arg in a for a in cmdline(pid))]


# --------------------------------------------------------------------------- raw client


def rpc_message(response: httpx.Response) -> dict:
    """The JSON-RPC message in a response, whether sent as JSON or as an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = []
        for event in response.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(l[5:].lstrip(" ") for l in event.split("\n") if l.startswith("data:"))
            if data:
                messages.append(json.loads(data))
        responses = [m for m in messages if "result" in m or "error" in m]
        assert responses, f"no JSON-RPC response in SSE body: {response.text!r}"
        return responses[-1]
    try:
        return response.json()
    except ValueError:
        raise AssertionError(
            f"HTTP {response.status_code} body is not JSON "
            f"(content-type {response.headers.get('content-type')!r}): {response.text[:500]!r}"
        ) from None


class RawMcp:
    """A minimal Streamable HTTP MCP client speaking raw JSON-RPC with httpx.

    Used where the tests need to see or shape the exact HTTP exchange.
    """

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        key: str | None = None,
        key_header: str = "Authorization",
    ):
        self.url = url
        self.http = client or httpx.Client(timeout=60)
        self.key = key
        self.key_header = key_header
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    def key_headers(self) -> dict[str, str]:
        """The header presenting this client's key ({} without a key)."""
        if self.key is None:
            return {}
        if self.key_header.lower() == "authorization":
            return {self.key_header: f"Bearer {self.key}"}
        return {self.key_header: self.key}

    def headers(self, session: bool = True, **extra: str) -> dict[str, str]:
        """Headers of a well-formed POST: the key, and the session if there is one."""
        headers = {"Accept": ACCEPT, "Content-Type": "application/json", **self.key_headers()}
        if session and self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if session and self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        headers.update(extra)
        return headers

    def post(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST `body` (bytes or a JSON-serialisable object) to /mcp."""
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(self.url, content=content, headers=self.headers() if headers is None else headers)

    def request_body(self, method: str, params: dict | None = None) -> dict:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = params
        return body

    def initialize(self, version: str = LATEST_PROTOCOL) -> httpx.Response:
        """Run the initialize handshake; remember the session id and negotiated version."""
        response = self.post(
            self.request_body(
                "initialize",
                {
                    "protocolVersion": version,
                    "capabilities": {},
                    "clientInfo": {"name": "sluice-e2e-raw", "version": "0"},
                },
            ),
            headers=self.headers(session=False),
        )
        assert response.status_code == 200, f"initialize: HTTP {response.status_code} {response.text}"
        message = rpc_message(response)
        assert "result" in message, f"initialize failed: {message}"
        self.session_id = response.headers.get("mcp-session-id")
        assert self.session_id, f"initialize response has no Mcp-Session-Id header: {dict(response.headers)}"
        self.protocol_version = message["result"]["protocolVersion"]
        notified = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert notified.status_code == 202, f"notifications/initialized: HTTP {notified.status_code} {notified.text}"
        return response

    def request(
        self, method: str, params: dict | None = None, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, dict]:
        """Send one request (with extra `headers`); return the HTTP response and its JSON-RPC message."""
        response = self.post(self.request_body(method, params), headers=self.headers(**(headers or {})))
        return response, rpc_message(response)

    def call_tool(self, name: str, arguments: dict | None = None, headers: dict[str, str] | None = None) -> dict:
        """tools/call; returns the JSON-RPC message (with `result` or `error`)."""
        response, message = self.request("tools/call", {"name": name, "arguments": arguments or {}}, headers)
        assert response.status_code == 200, f"tools/call {name}: HTTP {response.status_code} {response.text}"
        return message

    def delete(self) -> httpx.Response:
        """End the session with DELETE."""
        return self.http.delete(self.url, headers={"Mcp-Session-Id": self.session_id or "", **self.key_headers()})

    def tool_names(self, headers: dict[str, str] | None = None) -> set[str]:
        """The names of every tool this client may see."""
        names = [tool["name"] for tool in self.list_tools(headers)]
        assert len(names) == len(set(names)), f"a tool is listed twice: {sorted(names)}"
        return set(names)

    def list_tools(self, headers: dict[str, str] | None = None) -> list[dict]:
        """Every tool, following nextCursor."""
        tools, cursor = [], None
        for _ in range(1000):
            _, message = self.request("tools/list", {"cursor": cursor} if cursor else {}, headers)
            assert "result" in message, f"tools/list failed: {message}"
            tools += message["result"]["tools"]
            cursor = message["result"].get("nextCursor")
            if not cursor:
                return tools
        raise AssertionError("tools/list never stopped returning nextCursor")


# --------------------------------------------------------------------------- TCP relay


class CountingRelay:
    """A TCP relay to 127.0.0.1:`target_port` that counts the connections it accepts.

    Runs its own asyncio loop in a background thread.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._doomed: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting-relay", daemon=True)
        self._thread.start()
        assert self._started.wait(10), "relay did not start"
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, upstream_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    if client_w in self._doomed:
                        client_w.close()
                        upstream_w.close()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    writer.close()
                except Exception:
                    pass

        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))

    def drop_on_next_request(self) -> None:
        """Every connection open now is closed when its next request arrives, unanswered: an
        upstream that timed out an idle keep-alive connection just as a request was sent on it."""

        async def doom() -> None:
            self._doomed = set(self._writers)

        asyncio.run_coroutine_threadsafe(doom(), self._loop).result(10)

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            for writer in self._writers:
                writer.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# --------------------------------------------------------------------------- official SDK client


@asynccontextmanager
async def sdk_http_session(url: str, key: str | None = None, headers: dict[str, str] | None = None) -> AsyncIterator:
    """An initialized official-SDK `ClientSession` over Streamable HTTP to `url`, presenting
    `key` as `Authorization: Bearer` (if given) and sending `headers` with every request."""
    from mcp import ClientSession

    all_headers = {**(bearer(key) if key else {}), **(headers or {})}
    try:  # mcp >= 2: headers travel on an httpx2 client handed to the transport
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        @asynccontextmanager
        async def connect():
            timeout = httpx2.Timeout(30.0, read=300.0)
            async with httpx2.AsyncClient(headers=all_headers, timeout=timeout) as http:
                async with streamable_http_client(url, http_client=http) as streams:
                    yield streams

    except ImportError:  # mcp 1.x
        from mcp.client.streamable_http import streamablehttp_client

        def connect():
            return streamablehttp_client(url, headers=all_headers)

    async with connect() as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def sdk_stdio_session(command: str, args: list[str]) -> AsyncIterator:
    """An initialized official-SDK `ClientSession` to a stdio server started by the SDK."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async with stdio_client(StdioServerParameters(command=command, args=args)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


# --------------------------------------------------------------------------- metrics


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Samples of one /metrics scrape (Prometheus text format)."""

    def __init__(self, samples: list[tuple[str, dict[str, str], float]], text: str):
        self.samples = samples
        self.text = text

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        samples = []
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = _SAMPLE.match(line.strip())
            assert match, f"unparseable metrics line: {line!r}"
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
        return cls(samples, text)

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def sum(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels` (0 if none)."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of `name` with exactly `labels`, or None."""
        for sample, have, value in self.samples:
            if sample == name and have == labels:
                return value
        return None


def wire(model: Any) -> Any:
    """An SDK model as it appears on the wire (camelCase keys, no unset fields)."""
    if isinstance(model, list):
        return [wire(m) for m in model]
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- streaming (issue 14)

LIVE_SERVER = TESTS / "fixtures" / "live_server.py"
STATEFUL_SERVER = TESTS / "fixtures" / "stateful_server.py"


class EverythingSse(ListeningProc):
    """server-everything in legacy HTTP+SSE mode; its SSE endpoint is `self.url`."""

    def __init__(self, tmp: Path, name: str = "everything-sse"):
        port = free_port()
        super().__init__(name, [node(), str(require(EVERYTHING_JS)), "sse"], tmp / f"{name}.log", port,
                         env={"PORT": str(port)})
        self.url = f"http://127.0.0.1:{self.port}/sse"


class StatefulServer(ListeningProc):
    """tests/fixtures/stateful_server.py over Streamable HTTP; it records session creations and
    DELETEs to `self.record` (lines `session:<id>`, `delete:<id>`)."""

    def __init__(self, tmp: Path, name: str = "stateful"):
        port = free_port()
        self.record = tmp / f"{name}-record.txt"
        self.record.touch()
        super().__init__(name, [str(PYTHON), str(STATEFUL_SERVER), str(port), str(self.record)],
                         tmp / f"{name}.log", port)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def lines(self) -> list[str]:
        return self.record.read_text().splitlines()


def sse_upstream(url: str) -> dict:
    """Config of a legacy HTTP+SSE upstream (protocol 2024-11-05 `sse` transport)."""
    return {"sse": {"url": url}}


def stdio_live(record_file: Path | None = None) -> dict:
    """Config of tests/fixtures/live_server.py as a stdio upstream, recording to `record_file`."""
    stdio: dict[str, Any] = {"command": str(PYTHON), "args": [str(LIVE_SERVER)]}
    if record_file is not None:
        stdio["env"] = {RECORD_ENV: str(record_file)}
    return {"stdio": stdio}


def vm_rss_kb(pid: int) -> int:
    """Resident set size of process `pid` in kB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def sse_events(lines: "Iterator[str]") -> "Iterator[dict]":
    """JSON-RPC messages of an SSE stream given line by line (e.g. httpx `iter_lines()`)."""
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r")
        if line == "":
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield json.loads("\n".join(data))


@contextmanager
def fronted(upstream: Proc, start_gateway: Callable[[], "Gateway"]) -> Iterator["Gateway"]:
    """A gateway in front of a running `upstream`: both are stopped at the end, and the upstream
    also when the gateway fails to start."""
    try:
        gw = start_gateway()
    except BaseException:
        upstream.stop()
        raise
    try:
        yield gw
    finally:
        gw.stop()
        upstream.stop()


class StreamReader:
    """What a stream read in a background thread offers the tests: its JSON-RPC messages
    (`self.messages`), waiting for one, and closing. Subclasses set `_thread`, `_http`,
    `status`, `error` and `what` (the stream's name in failures)."""

    what = "stream"
    messages: list[dict]

    def methods(self) -> list[str]:
        return [m.get("method", "") for m in self.messages]

    def wait_for(self, method: str, timeout: float, after: int = 0) -> dict:
        """The first message with `method` at index >= `after`, waiting up to `timeout` s."""

        def found():
            for m in self.messages[after:]:
                if m.get("method") == method:
                    return m
            if not self._thread.is_alive():
                raise AssertionError(
                    f"the {self.what} ended (HTTP {self.status}, {self.error!r}) before {method}; got {self.messages}"
                )
            return None

        return wait_until(found, timeout, f"{method} on the {self.what} (got {self.methods()})")

    def close(self) -> None:
        """Stop reading. A read blocked in the background thread may only end when the
        gateway closes the stream (e.g. when it stops); the thread is a daemon either way."""
        self._http.close()
        self._thread.join(1)


class NotificationStream(StreamReader):
    """A raw `GET /mcp` notification stream of `client`'s session, read in a background
    thread; every JSON-RPC message it carries is appended to `self.messages`."""

    what = "GET stream"

    def __init__(self, client: "RawMcp"):
        self.messages: list[dict] = []
        self.error: BaseException | None = None
        self.status: int | None = None
        self.content_type: str | None = None
        self._opened = threading.Event()
        self._http = httpx.Client(timeout=httpx.Timeout(10, read=None))
        headers = {"Accept": "text/event-stream", **client.key_headers()}
        if client.session_id:
            headers["Mcp-Session-Id"] = client.session_id
        if client.protocol_version:
            headers["MCP-Protocol-Version"] = client.protocol_version
        self._headers = headers
        self._url = client.url
        self._thread = threading.Thread(target=self._run, name="notification-stream", daemon=True)
        self._thread.start()
        assert self._opened.wait(15), "GET /mcp notification stream did not open within 15s"
        assert self.error is None, f"GET /mcp failed: {self.error!r}"
        assert self.status == 200, f"GET /mcp: HTTP {self.status}"

    def _run(self) -> None:
        try:
            with self._http.stream("GET", self._url, headers=self._headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type")
                self._opened.set()
                if response.status_code != 200:
                    response.read()
                    return
                for message in sse_events(response.iter_lines()):
                    self.messages.append(message)
        except BaseException as e:  # closed by close(), or a failure the test reports
            self.error = e
        finally:
            self._opened.set()



@asynccontextmanager
async def sdk_http_session_with(url: str, key: str | None = None, **session_kwargs: Any) -> AsyncIterator:
    """Like `sdk_http_session`, handing `session_kwargs` (sampling_callback,
    elicitation_callback, message_handler, ...) to the SDK's `ClientSession` (mcp >= 2)."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = bearer(key) if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1], **session_kwargs) as session:
                await session.initialize()
                yield session


class LiveHttp(ListeningProc):
    """tests/fixtures/live_server.py over Streamable HTTP; its endpoint is `self.url`."""

    def __init__(self, tmp: Path, name: str = "live-http", record_file: Path | None = None):
        port = free_port()
        env = {RECORD_ENV: str(record_file)} if record_file is not None else None
        super().__init__(name, [str(PYTHON), str(LIVE_SERVER), "http", str(port)], tmp / f"{name}.log", port, env=env)
        self.url = f"http://127.0.0.1:{self.port}/mcp"


class LiveSse(ListeningProc):
    """tests/fixtures/live_server.py over legacy HTTP+SSE; its event stream is `self.url`."""

    def __init__(self, tmp: Path, name: str = "live-sse", record_file: Path | None = None):
        port = free_port()
        env = {RECORD_ENV: str(record_file)} if record_file is not None else None
        super().__init__(name, [str(PYTHON), str(LIVE_SERVER), "sse", str(port)], tmp / f"{name}.log", port, env=env)
        self.url = f"http://127.0.0.1:{self.port}/sse"


# --------------------------------------------------------------------------- MCP 2026-07-28 (issue 15)

NEW_ERA = "2026-07-28"
META_PROTOCOL = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
#: What a new-era test client declares unless told otherwise: it can answer every input request.
NEW_ERA_CAPABILITIES = {"sampling": {}, "elicitation": {"form": {}}, "roots": {}}


def mcp_name_of(method: str, params: dict | None) -> str | None:
    """The `Mcp-Name` header value the 2026-07-28 transport wants for `method`, if any."""
    params = params or {}
    if method in ("tools/call", "prompts/get"):
        return params.get("name")
    if method == "resources/read":
        return params.get("uri")
    if method in ("tasks/get", "tasks/update", "tasks/cancel"):
        return params.get("taskId")
    return None


class StatelessMcp:
    """A raw MCP 2026-07-28 client over httpx: no initialize, no session; every request carries
    the protocol version and client capabilities in `params._meta` and the era's headers
    (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`)."""

    def __init__(self, url: str, key: str | None = None, capabilities: dict | None = None,
                 http: httpx.Client | None = None, verify: Any = True):
        self.url = url
        self.key = key
        self.capabilities = NEW_ERA_CAPABILITIES if capabilities is None else capabilities
        self.verify = verify
        self.http = http or httpx.Client(timeout=httpx.Timeout(60, read=120), verify=verify)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    def meta(self, **extra: Any) -> dict:
        return {
            META_PROTOCOL: NEW_ERA,
            META_CAPABILITIES: self.capabilities,
            META_CLIENT_INFO: {"name": "sluice-e2e-stateless", "version": "0"},
            **extra,
        }

    def body(self, method: str, params: dict | None = None, meta: dict | None = None) -> dict:
        """A request with the era's `_meta` merged into `params` (`meta` adds or overrides keys)."""
        full = dict(params or {})
        full["_meta"] = {**self.meta(), **(full.get("_meta") or {}), **(meta or {})}
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": full}

    def headers(self, method: str, params: dict | None = None, **extra: str) -> dict[str, str]:
        headers = {"Accept": ACCEPT, "Content-Type": "application/json",
                   "MCP-Protocol-Version": NEW_ERA, "Mcp-Method": method}
        name = mcp_name_of(method, params)
        if name is not None:
            headers["Mcp-Name"] = name
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        headers.update(extra)
        return headers

    def post(self, body: Any, headers: dict[str, str]) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(self.url, content=content, headers=headers)

    def request(self, method: str, params: dict | None = None, *, meta: dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[httpx.Response, dict]:
        """One well-formed new-era request; the HTTP response and its JSON-RPC message."""
        body = self.body(method, params, meta)
        response = self.post(body, {**self.headers(method, params), **(headers or {})})
        return response, rpc_message(response)

    def call_tool(self, name: str, arguments: dict | None = None, **params: Any) -> tuple[httpx.Response, dict]:
        """tools/call with `params` (inputResponses, requestState, _meta, ...) beside name/arguments."""
        return self.request("tools/call", {"name": name, "arguments": arguments or {}, **params})

    def result(self, method: str, params: dict | None = None, **kwargs: Any) -> dict:
        """The `result` of a request that must succeed (HTTP 200)."""
        response, message = self.request(method, params, **kwargs)
        assert response.status_code == 200 and "result" in message, (
            f"{method}: HTTP {response.status_code} {message}"
        )
        return message["result"]


class ListenStream(StreamReader):
    """A `subscriptions/listen` request (MCP 2026-07-28) read in a background thread: every
    JSON-RPC message of its SSE answer lands in `self.messages`."""

    what = "listen stream"

    def __init__(self, client: StatelessMcp, notifications: dict | None = None, open_timeout: float = 15):
        self.messages: list[dict] = []
        self.error: BaseException | None = None
        self.status: int | None = None
        self.content_type: str | None = None
        self._opened = threading.Event()
        self._http = httpx.Client(timeout=httpx.Timeout(10, read=None), verify=client.verify)
        params = {"notifications": notifications or {"toolsListChanged": True, "promptsListChanged": True,
                                                     "resourcesListChanged": True}}
        self._body = client.body("subscriptions/listen", params)
        self._headers = client.headers("subscriptions/listen", params)
        self._url = client.url
        self._thread = threading.Thread(target=self._run, name="listen-stream", daemon=True)
        self._thread.start()
        assert self._opened.wait(open_timeout), f"subscriptions/listen did not answer within {open_timeout}s"
        assert self.error is None, f"subscriptions/listen failed: {self.error!r}"

    def _run(self) -> None:
        try:
            with self._http.stream("POST", self._url, content=json.dumps(self._body), headers=self._headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type")
                self._opened.set()
                if response.status_code != 200 or not (self.content_type or "").startswith("text/event-stream"):
                    response.read()
                    self.messages.append({"_body": response.text})
                    return
                for message in sse_events(response.iter_lines()):
                    self.messages.append(message)
        except BaseException as e:
            self.error = e
        finally:
            self._opened.set()



# --------------------------------------------------------------------------- upstreams of either era (issue 15)

NEW_ERA_SERVER = TESTS / "fixtures" / "new_era_server.py"
NEW_ERA_TOOLS = {"add", "greet", "who_am_i"}


class NewEraServer(ListeningProc):
    """tests/fixtures/new_era_server.py over Streamable HTTP (official Python SDK): it serves MCP
    2026-07-28 requests, and the session era too unless `refuse_initialize` (then `initialize`
    gets HTTP 400 UNSUPPORTED_PROTOCOL_VERSION). Every POSTed message and every round of its
    `who_am_i` tool land in `self.record` as JSON lines (see the fixture's docstring)."""

    def __init__(self, tmp: Path, name: str = "new-era", refuse_initialize: bool = False):
        port = free_port()
        self.record = tmp / f"{name}-record.jsonl"
        self.record.touch()
        argv = [str(PYTHON), str(NEW_ERA_SERVER), str(port), str(self.record)]
        if refuse_initialize:
            argv.append("--refuse-initialize")
        super().__init__(name, argv, tmp / f"{name}.log", port)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def entries(self, kind: str | None = None) -> list[dict]:
        """The recorded entries (those of `kind`, `post` or `who_am_i`, if given)."""
        out = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [e for e in out if kind is None or e.get("kind") == kind]

    def posts(self, method: str | None = None) -> list[dict]:
        """The recorded POSTs (those of JSON-RPC `method`, if given)."""
        return [e for e in self.entries("post") if method is None or e.get("method") == method]
