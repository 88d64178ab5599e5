"""A Streamable HTTP upstream that restarts (and so forgets Sluice's session) is initialized
again by Sluice, with no restart of Sluice and no error once it is back."""

from __future__ import annotations

import pytest

from harness import CountingRelay, EverythingHttp, Gateway, http_upstream, stdio_everything, wait_until


@pytest.fixture
def restartable(e2e_tmp):
    """server-everything over HTTP behind a relay whose target can be switched to a new process."""
    (e2e_tmp / "restart").mkdir(parents=True, exist_ok=True)
    first = EverythingHttp(e2e_tmp / "restart", name="everything-http-first")
    relay = CountingRelay(first.port)
    gw = Gateway(
        e2e_tmp / "restart",
        {"everything": stdio_everything(), "remote": http_upstream(f"http://127.0.0.1:{relay.port}/mcp")},
        name="sluice-restart",
    )
    servers = [first]
    yield gw, relay, servers
    gw.stop()
    relay.close()
    for server in servers:
        server.stop()


def test_restarted_http_upstream_gets_a_new_session(restartable, e2e_tmp):
    gw, relay, servers = restartable
    client = gw.client()
    client.initialize()
    ok = client.call_tool("remote__echo", {"message": "before"})
    assert ok["result"]["content"] == [{"type": "text", "text": "Echo: before"}], ok

    # The upstream restarts: the new process knows nothing of Sluice's session.
    servers[0].stop()
    second = EverythingHttp(e2e_tmp / "restart", name="everything-http-second")
    servers.append(second)
    relay.target_port = second.port

    # A call may fail while the pooled connection to the dead process is noticed, naming the
    # server; then Sluice initializes a new upstream session and calls succeed.
    def call_succeeds() -> bool:
        answer = client.call_tool("remote__echo", {"message": "after"})
        if "error" in answer:
            assert "remote" in answer["error"]["message"], answer
            return False
        assert answer["result"]["content"] == [{"type": "text", "text": "Echo: after"}], answer
        return True

    wait_until(call_succeeds, 30, "calls to the restarted upstream to succeed")
    assert "initializing again" in gw.log(), "Sluice should say it re-initialized the upstream session"
    # The stdio upstream was never disturbed.
    assert "result" in client.call_tool("everything__echo", {"message": "still here"})
