"""Cancellation (issue 14): a client that disconnects mid-call, or sends
`notifications/cancelled` for it, cancels the upstream request: Sluice sends
`notifications/cancelled` upstream and the upstream work stops (the fixture's `slow` tool
records `cancelled:<tag>` when its task is cancelled)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from harness import Gateway, LiveHttp, RawMcp, http_upstream, stdio_live, wait_until

#: Upstreams started by `start_gateway`, stopped by the `stop_upstreams` fixture.
_upstreams: list = []


@pytest.fixture(autouse=True)
def stop_upstreams():
    yield
    while _upstreams:
        _upstreams.pop().stop()


def recorded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def raw_http_post(port: int, client: RawMcp, body: dict) -> socket.socket:
    """Send one POST /mcp on a fresh socket and return the socket without reading the answer."""
    payload = json.dumps(body).encode()
    headers = client.headers()
    lines = [f"POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    return sock


def start_gateway(e2e_tmp: Path, name: str, transport: str = "stdio") -> tuple[Gateway, Path]:
    """A Sluice fronting the live fixture over `transport` (stdio, or Streamable HTTP)."""
    name = f"{name}-{transport}"
    tmp = e2e_tmp / name
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "live-record.txt"
    record.touch()
    if transport == "stdio":
        spec = stdio_live(record)
    else:
        upstream = LiveHttp(tmp, record_file=record)
        _upstreams.append(upstream)
        spec = http_upstream(upstream.url)
    return Gateway(tmp, {"live": spec}, name=f"sluice-{name}"), record


transports = pytest.mark.parametrize("transport", ["stdio", "http"])


@transports
def test_disconnect_cancels_upstream_call(e2e_tmp, transport):
    gw, record = start_gateway(e2e_tmp, "cancel-disconnect", transport)
    client = gw.client()
    try:
        client.initialize()
        sock = raw_http_post(gw.port, client, client.request_body(
            "tools/call", {"name": "live__slow", "arguments": {"tag": "disc-1", "seconds": 60}}))
        try:
            wait_until(lambda: "slow-start:disc-1" in recorded(record), 30, "the slow call to reach the upstream")
        finally:
            sock.close()  # the client goes away mid-call
        wait_until(lambda: "cancelled:disc-1" in recorded(record), 30,
                   f"the upstream to record the cancellation (record: {recorded(record)})")
        assert "slow-done:disc-1" not in recorded(record)

        # The upstream and the session still serve.
        assert client.call_tool("live__ping_back", {"text": "still"})["result"]["content"][0]["text"] == "still"
    finally:
        client.close()
        gw.stop()


@transports
def test_disconnect_while_streaming_progress_cancels_upstream_call(e2e_tmp, transport):
    """The same, when the call carries a progress token (so Sluice may answer with SSE)."""
    gw, record = start_gateway(e2e_tmp, "cancel-disconnect-sse", transport)
    client = gw.client()
    try:
        client.initialize()
        body = client.request_body("tools/call", {
            "name": "live__slow", "arguments": {"tag": "disc-2", "seconds": 60},
            "_meta": {"progressToken": "p-disc-2"}})
        sock = raw_http_post(gw.port, client, body)
        try:
            wait_until(lambda: "slow-start:disc-2" in recorded(record), 30, "the slow call to reach the upstream")
        finally:
            sock.close()
        wait_until(lambda: "cancelled:disc-2" in recorded(record), 30,
                   f"the upstream to record the cancellation (record: {recorded(record)})")
    finally:
        client.close()
        gw.stop()


@transports
def test_notifications_cancelled_cancels_upstream_call(e2e_tmp, transport):
    gw, record = start_gateway(e2e_tmp, "cancel-notification", transport)
    client = gw.client()
    outcome: dict = {}
    try:
        client.initialize()
        body = client.request_body("tools/call", {"name": "live__slow", "arguments": {"tag": "note-1", "seconds": 60}})
        call_id = body["id"]
        caller = RawMcp(gw.url, client=httpx.Client(timeout=httpx.Timeout(10, read=40)), key=gw.key)
        caller.session_id, caller.protocol_version = client.session_id, client.protocol_version

        def call() -> None:
            try:
                response = caller.post(body)
                outcome["status"], outcome["body"] = response.status_code, response.text
            except Exception as e:  # what the client saw is reported, not asserted on
                outcome["error"] = repr(e)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        wait_until(lambda: "slow-start:note-1" in recorded(record), 30, "the slow call to reach the upstream")

        cancelled = client.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                 "params": {"requestId": call_id, "reason": "user gave up"}})
        assert cancelled.status_code == 202, f"notifications/cancelled: HTTP {cancelled.status_code} {cancelled.text}"
        wait_until(lambda: "cancelled:note-1" in recorded(record), 30,
                   f"the upstream to record the cancellation (record: {recorded(record)})")
        thread.join(45)
        assert not thread.is_alive(), "the cancelled call's HTTP request never ended"
        print(f"cancelled call ended with: {outcome}")
        caller.close()

        assert client.call_tool("live__ping_back", {"text": "still"})["result"]["content"][0]["text"] == "still"
    finally:
        client.close()
        gw.stop()
