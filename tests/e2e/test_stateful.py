"""Stateful upstreams (issue 14): per server `session: shared | per_client`. With `per_client`
each downstream session gets its own upstream session (its own remembered value), closed with an
HTTP DELETE to the upstream when the downstream session is DELETEd; with `shared` (the default)
every caller shares one upstream session."""

from __future__ import annotations

from harness import Gateway, StatefulServer, http_upstream, wait_until


def text(message: dict) -> str:
    assert "result" in message, f"call failed: {message}"
    assert not message["result"].get("isError"), f"tool error: {message}"
    return message["result"]["content"][0]["text"]


def test_per_client_sessions_are_separate_and_closed_on_delete(e2e_tmp):
    tmp = e2e_tmp / "stateful-per-client"
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = StatefulServer(tmp)
    gw = None
    a = b = None
    try:
        gw = Gateway(tmp, {"st": {**http_upstream(upstream.url), "session": "per_client"}}, name="sluice-per-client")
        a, b = gw.client(), gw.client()
        a.initialize()
        b.initialize()

        assert text(a.call_tool("st__set_value", {"value": "alpha"})) == "set alpha"
        assert text(b.call_tool("st__get_value")) == "<unset>", "session B sees session A's value"
        assert text(b.call_tool("st__set_value", {"value": "beta"})) == "set beta"
        assert text(a.call_tool("st__get_value")) == "alpha"
        assert text(b.call_tool("st__get_value")) == "beta"
        upstream_a = text(a.call_tool("st__session_id"))
        upstream_b = text(b.call_tool("st__session_id"))
        assert upstream_a and upstream_b and upstream_a != upstream_b, (upstream_a, upstream_b)
        assert upstream_a != a.session_id, "Sluice passed its own session id upstream"
        # The same downstream session keeps its upstream session from call to call.
        assert text(a.call_tool("st__session_id")) == upstream_a

        deleted = a.delete()
        assert deleted.status_code in (200, 202, 204), f"DELETE: HTTP {deleted.status_code} {deleted.text}"
        wait_until(lambda: f"delete:{upstream_a}" in upstream.lines(), 30,
                   f"the upstream to see DELETE of session {upstream_a} (record: {upstream.lines()})")
        assert f"delete:{upstream_b}" not in upstream.lines(), "B's upstream session was closed too"

        # B is untouched.
        assert text(b.call_tool("st__get_value")) == "beta"
    finally:
        for client in (a, b):
            if client:
                client.close()
        if gw:
            gw.stop()
        upstream.stop()


def test_shared_session_is_seen_by_every_caller(e2e_tmp):
    tmp = e2e_tmp / "stateful-shared"
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = StatefulServer(tmp)
    gw = None
    a = b = None
    try:
        gw = Gateway(tmp, {"st": http_upstream(upstream.url)}, name="sluice-shared")
        a, b = gw.client(), gw.client()
        a.initialize()
        b.initialize()

        assert text(a.call_tool("st__set_value", {"value": "gamma"})) == "set gamma"
        assert text(b.call_tool("st__get_value")) == "gamma", "with `shared` the callers should share a session"
        assert text(a.call_tool("st__session_id")) == text(b.call_tool("st__session_id"))

        # Ending one downstream session does not close the shared upstream session.
        shared_id = text(a.call_tool("st__session_id"))
        assert a.delete().status_code in (200, 202, 204)
        assert text(b.call_tool("st__get_value")) == "gamma"
        assert f"delete:{shared_id}" not in upstream.lines(), upstream.lines()
    finally:
        for client in (a, b):
            if client:
                client.close()
        if gw:
            gw.stop()
        upstream.stop()


def test_explicit_shared_is_the_default(e2e_tmp):
    """`session: shared` spelled out behaves like the default."""
    tmp = e2e_tmp / "stateful-shared-explicit"
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = StatefulServer(tmp)
    gw = None
    a = b = None
    try:
        gw = Gateway(tmp, {"st": {**http_upstream(upstream.url), "session": "shared"}}, name="sluice-shared-explicit")
        a, b = gw.client(), gw.client()
        a.initialize()
        b.initialize()
        assert text(a.call_tool("st__set_value", {"value": "delta"})) == "set delta"
        assert text(b.call_tool("st__get_value")) == "delta"
    finally:
        for client in (a, b):
            if client:
                client.close()
        if gw:
            gw.stop()
        upstream.stop()


def test_per_client_session_closed_when_downstream_session_expires(e2e_tmp):
    """A downstream session that expires (`mcp.session_ttl`) closes its per-client upstream
    session too, without the client doing anything more; the expired session is refused."""
    tmp = e2e_tmp / "stateful-expiry"
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = StatefulServer(tmp)
    gw = None
    a = None
    try:
        gw = Gateway(tmp, {"st": {**http_upstream(upstream.url), "session": "per_client"}},
                     name="sluice-per-client-expiry", session_ttl="5s")
        a = gw.client()
        a.initialize()
        upstream_a = text(a.call_tool("st__session_id"))
        wait_until(lambda: f"delete:{upstream_a}" in upstream.lines(), 40,
                   f"the upstream to see DELETE of session {upstream_a} after the downstream session expired "
                   f"(record: {upstream.lines()})")
        response = a.post(a.request_body("tools/call", {"name": "st__get_value", "arguments": {}}))
        assert response.status_code == 404, f"an expired session was served: HTTP {response.status_code} {response.text}"
    finally:
        if a:
            a.close()
        if gw:
            gw.stop()
        upstream.stop()
