"""Sluice keeps its upstream HTTP connections alive instead of dialing per call."""

from __future__ import annotations

import httpx
import pytest

from harness import CountingRelay, Gateway, http_upstream

CALLS = 1000
MAX_UPSTREAM_CONNECTIONS = 8


@pytest.fixture
def relay(everything_http):
    """A connection-counting TCP relay in front of the HTTP server-everything."""
    relay = CountingRelay(everything_http.port)
    yield relay
    relay.close()


@pytest.fixture
def relayed_gateway(e2e_tmp, relay):
    """A Sluice whose only upstream is reached through the relay."""
    gw = Gateway(e2e_tmp / "reuse", {"remote": http_upstream(relay.url)}, name="sluice-reuse")
    yield gw
    gw.stop()


def test_sequential_calls_reuse_upstream_connections(relayed_gateway, relay):
    """1,000 sequential tools/call succeed over at most a handful of upstream connections."""
    with httpx.Client(timeout=60) as http:
        client = relayed_gateway.client(client=http)
        client.initialize()
        for i in range(CALLS):
            message = client.call_tool("remote__echo", {"message": f"call-{i}"})
            assert "result" in message, f"call {i} failed: {message}"
            assert message["result"]["content"] == [{"type": "text", "text": f"Echo: call-{i}"}], message
    assert relay.accepted <= MAX_UPSTREAM_CONNECTIONS, (
        f"the relay accepted {relay.accepted} upstream connections for {CALLS} sequential calls"
    )


def test_calls_after_the_upstream_closed_pooled_connections(relayed_gateway, relay):
    """The upstream closes a pooled connection just as a call is sent on it (its keep-alive
    timeout ran out meanwhile): nothing was answered, so the call is sent again on a new
    connection and succeeds."""
    with httpx.Client(timeout=60) as http:
        client = relayed_gateway.client(client=http)
        client.initialize()
        for i in range(20):
            message = client.call_tool("remote__echo", {"message": f"before-{i}"})
            assert "result" in message, f"call {i} failed: {message}"
            relay.drop_on_next_request()
            message = client.call_tool("remote__echo", {"message": f"after-{i}"})
            assert "result" in message, f"call {i} after the close failed: {message}"
            assert message["result"]["content"] == [{"type": "text", "text": f"Echo: after-{i}"}], message
    assert relay.accepted >= 20, f"only {relay.accepted} connections: the closes did not happen"
