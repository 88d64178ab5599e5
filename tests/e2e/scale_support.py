"""Scale-out fixtures: a real Redis, a real nginx in front, and two Sluice instances that share
`SLUICE_SESSION_SECRET` and the Redis (tests/e2e/test_scale_out.py).

Everything is a real process started here, on free loopback ports, with its files in the test's
own directory; `Cluster.close()` stops whatever is still running, also after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from harness import Gateway, ListeningProc, Metrics, Proc, free_port, wait_until

REDIS_BIN = "/usr/bin/redis-server"
#: Every instance of a cluster seals sessions with this secret (>= 16 bytes).
SECRET = "scale-out-e2e-session-secret-0123456789"
#: How often an instance reads the shared counters back from Redis (the test configuration).
SYNC_INTERVAL = "50ms"


def find_nginx() -> str | None:
    """nginx on PATH, else where Debian puts it (perf/bench.py looks in the same places; it is a
    script with its own command line, so it is not imported)."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# --------------------------------------------------------------------------- redis


def redis_command(port: int, *args: str, timeout: float = 2.0) -> Any:
    """Send one command to the Redis on 127.0.0.1:`port` (RESP) and return its parsed reply
    (str, int, None, list; an error reply raises RuntimeError)."""
    out = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        reader = s.makefile("rb")
        return _resp(reader)


def _resp(reader) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(reader) for _ in range(n)]
    raise RuntimeError(f"unexpected RESP line {line!r}")


class RedisServer(ListeningProc):
    """`redis-server` on 127.0.0.1:`port` (a free one unless given), nothing persisted."""

    started = 0

    def __init__(self, tmp: Path, port: int | None = None):
        RedisServer.started += 1
        port = port or free_port()
        workdir = tmp / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        name = f"redis-{RedisServer.started}"
        super().__init__(name, argv, tmp / f"{name}.log", port)
        self.url = f"redis://127.0.0.1:{port}"

    def ping(self) -> bool:
        try:
            return redis_command(self.port, "PING") == "PONG"
        except OSError:
            return False

    def keys(self, pattern: str = "*") -> list[str]:
        return sorted(redis_command(self.port, "KEYS", pattern) or [])


# --------------------------------------------------------------------------- nginx


def nginx_config(prefix: Path, listen: int, upstreams: list[int]) -> str:
    """nginx as it is commonly put in front of several gateway instances: plain round robin
    (no stickiness: no `ip_hash`, `hash` or cookie), HTTP/1.1 with a keep-alive pool to the
    instances, `proxy_buffering off` so SSE answers are passed on as they come, and
    `proxy_next_upstream error timeout` (nginx's default): a request whose connection to an
    instance fails before it was sent (refused, e.g. while it restarts) goes to the next one.
    `max_fails=0` keeps both instances in the rotation whatever happens, so requests keep
    alternating. One worker, so that the round robin is one sequence. The access log names the
    instance (`$upstream_addr`) of every request. Everything nginx writes stays in `prefix`."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in upstreams)
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    log_format scale '$msec $request_method $request_uri $status up=$upstream_addr up_status=$upstream_status';
    access_log {prefix / "access.log"} scale;
{temp}
    upstream sluice {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://sluice;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_connect_timeout 5s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Nginx(ListeningProc):
    """nginx round-robining over `upstreams` (ports on 127.0.0.1); `self.url` is its /mcp."""

    def __init__(self, tmp: Path, upstreams: list[int], name: str = "nginx"):
        binary = find_nginx()
        assert binary, "nginx is not installed (`apt-get install nginx`, or `make system-deps`)"
        self.prefix = tmp / name
        self.prefix.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = self.prefix / "nginx.conf"
        config.write_text(nginx_config(self.prefix, port, upstreams))
        self.access_log = self.prefix / "access.log"
        super().__init__(name, [binary, "-p", str(self.prefix), "-c", str(config), "-e", "stderr"],
                         tmp / f"{name}.log", port)
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = f"{self.base_url}/mcp"

    def access(self) -> list[str]:
        """The access log's lines so far (`<time> <method> <uri> <status> up=<addr> up_status=<s>`)."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []


# --------------------------------------------------------------------------- the cluster


def state_section(tmp: Path, name: str, redis_url: str | None) -> dict:
    """`state:` of instance `name`: its own SQLite file, and the shared Redis."""
    section: dict[str, Any] = {"path": str(tmp / f"{name}-state.db")}
    if redis_url:
        section["redis"] = {"url": redis_url, "sync_interval": SYNC_INTERVAL}
    return section


class Cluster:
    """Redis, two Sluice instances (`a`, `b`) sharing it and the session secret, nginx in front.

    `servers`, `keys` and `top` are the same for both instances (the configuration differs only in
    ports and `state.path`). Instances listen on fixed ports for their whole life: `restart(name)`
    starts the replacement on the same client port, so nginx's upstream list stays right.
    """

    def __init__(self, tmp: Path, servers: dict[str, dict], *, keys: list[dict] | None = None,
                 top: dict | None = None, redis: bool = True):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.servers = servers
        self.keys = keys or []
        self.top = top or {}
        self.redis: RedisServer | None = None
        self.redis_port: int | None = None
        self.nginx: Nginx | None = None
        self.gateways: dict[str, Gateway] = {}
        self.ports: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        try:
            if redis:
                self.redis = RedisServer(tmp)
                self.redis_port = self.redis.port
            for name in ("a", "b"):
                self.start(name)
            self.nginx = Nginx(tmp, [self.ports["a"], self.ports["b"]])
        except BaseException:
            self.close()
            raise

    # -- instances

    @property
    def redis_url(self) -> str | None:
        return f"redis://127.0.0.1:{self.redis_port}" if self.redis_port else None

    @property
    def a(self) -> Gateway:
        return self.gateways["a"]

    @property
    def b(self) -> Gateway:
        return self.gateways["b"]

    def start(self, name: str) -> Gateway:
        """Start instance `name` (on its fixed client port once it has one)."""
        generation = self.generation.get(name, 0) + 1
        self.generation[name] = generation
        top = {**self.top, "state": state_section(self.tmp, name, self.redis_url)}
        if name in self.ports:
            top["listen"] = [{"address": f"127.0.0.1:{self.ports[name]}"}]
        gw = Gateway(self.tmp, self.servers, name=f"sluice-{name}{generation}", keys=[dict(k) for k in self.keys],
                     top=top, env={"SLUICE_SESSION_SECRET": SECRET})
        if name in self.ports:  # Gateway picked a port of its own; the `listen` above overrode it
            gw.port = self.ports[name]
            gw.url = f"http://127.0.0.1:{gw.port}/mcp"
        self.ports[name] = gw.port
        self.gateways[name] = gw
        return gw

    def restart(self, name: str) -> tuple[int, Gateway]:
        """SIGTERM instance `name` (graceful), wait for it to exit, start it again on the same port.
        Returns the old instance's exit code and the new instance."""
        code = self.gateways[name].terminate()
        wait_until(lambda: _port_free(self.ports[name]), 10, f"port {self.ports[name]} of sluice-{name} to be free")
        return code, self.start(name)

    # -- redis

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.stop()

    def start_redis(self) -> RedisServer:
        assert self.redis_port is not None
        self.redis = RedisServer(self.tmp, port=self.redis_port)
        return self.redis

    # -- helpers

    def url_of(self, name: str) -> str:
        return self.gateways[name].url

    def base_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self.gateways[name].port}"

    def metrics(self) -> dict[str, Metrics]:
        return {name: gw.metrics() for name, gw in self.gateways.items()}

    def heal(self) -> None:
        """Bring back whatever an earlier (failed) test left stopped."""
        if self.redis_port and (self.redis is None or not self.redis.alive()):
            self.start_redis()
        for name, gw in list(self.gateways.items()):
            if not gw.alive():
                gw.stop()
                wait_until(lambda: _port_free(self.ports[name]), 10, f"port {self.ports[name]} to be free")
                self.start(name)

    def close(self) -> None:
        for proc in [self.nginx, *self.gateways.values(), self.redis]:
            if proc is not None and proc in Proc.running:  # not stopped yet
                proc.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- readiness detail


def readyz(gw: Gateway) -> tuple[int, Any]:
    """The status and JSON body of an instance's `/readyz` (detail: no admin token is set)."""
    response = httpx.get(f"{gw.admin_url}/readyz", timeout=5)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def state_entries(body: Any) -> list[tuple[str, Any]]:
    """Every (path, value) in a `/readyz` body whose key names the shared state (`state`,
    `redis`, or a key containing either), wherever it sits in the JSON."""
    found: list[tuple[str, Any]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                here = f"{path}.{k}" if path else k
                if "state" in k.lower() or "redis" in k.lower():
                    found.append((here, v))
                walk(v, here)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")

    walk(body, "")
    return found


def redis_up(gw: Gateway) -> float | None:
    """`sluice_redis_up` of an instance (None when the metric is absent)."""
    metrics = gw.metrics()
    values = [v for name, _, v in metrics.samples if name == "sluice_redis_up"]
    return values[0] if values else None


def describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def poll(get: Callable[[], Any], want: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Wait until `get()` == `want`; on timeout fail showing the last value seen."""
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = get()
        return last[0] == want

    try:
        wait_until(check, timeout, what, interval)
    except TimeoutError as e:
        raise AssertionError(f"{e} (last value: {last[0]!r})") from None
    return last[0]


def seconds_into_minute() -> float:
    return time.time() % 60
