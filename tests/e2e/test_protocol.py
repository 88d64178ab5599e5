"""The Streamable HTTP session lifecycle and the admin endpoints."""

from __future__ import annotations

import httpx
import pytest

from harness import LATEST_PROTOCOL, rpc_message


def test_admin_health_and_readiness(gateway):
    """/healthz and /readyz answer 200 on the admin listener once every upstream synced."""
    assert httpx.get(f"{gateway.admin_url}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{gateway.admin_url}/readyz", timeout=10)
    assert ready.status_code == 200
    servers = ready.json()["servers"]
    assert all(s["health"] == "ready" for s in servers.values()), servers
    # A stdio server names its child process, which really is a child of the gateway.
    assert servers["everything"]["pid"] in gateway.stdio_children("stdio"), servers


def test_initialize_returns_sluice_identity(gateway):
    """initialize answers with Sluice's own serverInfo, a tools capability and a session id."""
    client = gateway.client()
    try:
        response = client.initialize()
        result = rpc_message(response)["result"]
        assert result["serverInfo"]["name"] == "sluice", result
        assert isinstance(result["capabilities"].get("tools"), dict), result
        assert result["protocolVersion"] == LATEST_PROTOCOL, result
        assert client.session_id
    finally:
        client.close()


@pytest.mark.parametrize("version", ["2025-06-18", "2025-03-26"])
def test_older_protocol_versions_are_accepted(gateway, version):
    """A client on an older supported revision gets that revision back and can call tools."""
    client = gateway.client()
    try:
        client.initialize(version)
        assert client.protocol_version == version
        message = client.call_tool("remote__echo", {"message": version})
        assert message["result"]["content"] == [{"type": "text", "text": f"Echo: {version}"}], message
    finally:
        client.close()


def test_sessions_are_distinct(gateway):
    """Two initializations get two different session ids."""
    first, second = gateway.client(), gateway.client()
    try:
        first.initialize()
        second.initialize()
        assert first.session_id != second.session_id
    finally:
        first.close()
        second.close()


def test_notification_gets_202(raw):
    """A notification (no id) is accepted with HTTP 202."""
    response = raw.post(
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 12345, "reason": "test"}}
    )
    assert response.status_code == 202, f"HTTP {response.status_code}: {response.text}"
