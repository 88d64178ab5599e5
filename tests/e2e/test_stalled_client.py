"""A stalled client holds back nobody else (issue 14): one session starts a call whose upstream
streams many progress notifications and never reads its answer; meanwhile another session's
calls, to the same upstream, all succeed; Sluice stays healthy and its memory bounded."""

from __future__ import annotations

import json
import socket
import time

import httpx

from harness import Gateway, stdio_live, stdio_py, vm_rss_kb, wait_until

FLOOD_COUNT = 20000     # progress notifications the stalled call's upstream sends
FLOOD_SIZE = 2000       # characters of message in each: about 40 MB in all
CALLS = 200
RSS_GROWTH_LIMIT_KB = 100 * 1024


def test_stalled_client_holds_back_nobody(e2e_tmp):
    tmp = e2e_tmp / "stalled-client"
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "live-record.txt"
    record.touch()
    gw = Gateway(tmp, {"live": stdio_live(record), "py": stdio_py()}, name="sluice-stalled")
    stalled = gw.client()
    other = gw.client()
    other.http = httpx.Client(timeout=httpx.Timeout(10, read=30))
    sock = None
    try:
        stalled.initialize()
        other.initialize()
        for _ in range(5):  # warm up before the baseline
            assert "result" in other.call_tool("live__ping_back", {"text": "warm"})
        rss_before = vm_rss_kb(gw.pid)

        body = json.dumps(stalled.request_body("tools/call", {
            "name": "live__flood", "arguments": {"count": FLOOD_COUNT, "size": FLOOD_SIZE},
            "_meta": {"progressToken": "stalled-1"}})).encode()
        head = [f"POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{gw.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in stalled.headers().items()]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        # Never read from `sock`. Give the flood time to fill every buffer on the way.
        time.sleep(3)

        started = time.monotonic()
        failures = []
        for i in range(CALLS):
            server = "live" if i % 2 == 0 else "py"
            try:
                if server == "live":
                    message = other.call_tool("live__ping_back", {"text": f"n{i}"})
                    ok = message.get("result", {}).get("content", [{}])[0].get("text") == f"n{i}"
                else:
                    message = other.call_tool("py__add", {"a": i, "b": 1})
                    ok = message.get("result", {}).get("structuredContent") == {"result": i + 1}
            except httpx.HTTPError as e:
                message, ok = repr(e), False
            if not ok:
                failures.append((i, server, message))
        elapsed = time.monotonic() - started
        rss_after = vm_rss_kb(gw.pid)
        print(f"{CALLS} calls beside a stalled client took {elapsed:.1f}s; "
              f"sluice RSS {rss_before} kB -> {rss_after} kB ({(rss_after - rss_before) / 1024:+.1f} MB); "
              f"upstream flood finished: {f'flood-done:{FLOOD_COUNT}' in record.read_text()}")
        assert not failures, f"{len(failures)} of {CALLS} calls failed beside the stalled client; first: {failures[:3]}"
        assert httpx.get(f"{gw.admin_url}/readyz", timeout=5).status_code == 200
        assert gw.alive()
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KB, (
            f"sluice RSS grew by {(rss_after - rss_before) / 1024:.1f} MB beside one stalled client")
    finally:
        if sock:
            sock.close()
        stalled.close()
        other.close()
        gw.stop()

    # After the stalled client went away, a fresh gateway-level check is not needed: the
    # gateway was stopped above; what matters was asserted while the client was stalled.


def test_gateway_serves_after_stalled_client_leaves(e2e_tmp):
    """The stalled call's client goes away: Sluice cancels the flood and keeps serving the
    same upstream."""
    tmp = e2e_tmp / "stalled-client-leaves"
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "live-record.txt"
    record.touch()
    gw = Gateway(tmp, {"live": stdio_live(record)}, name="sluice-stalled-leaves")
    stalled = gw.client()
    other = gw.client()
    other.http = httpx.Client(timeout=httpx.Timeout(10, read=30))
    try:
        stalled.initialize()
        other.initialize()
        body = json.dumps(stalled.request_body("tools/call", {
            "name": "live__flood", "arguments": {"count": FLOOD_COUNT, "size": FLOOD_SIZE},
            "_meta": {"progressToken": "stalled-2"}})).encode()
        head = [f"POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{gw.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in stalled.headers().items()]
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        time.sleep(2)
        sock.close()
        # Calls to the same upstream keep working (within a bounded wait).
        wait_until(lambda: other.call_tool("live__ping_back", {"text": "after"})
                   .get("result", {}).get("content", [{}])[0].get("text") == "after",
                   60, "live__ping_back to answer after the stalled client left")
    finally:
        stalled.close()
        other.close()
        gw.stop()
