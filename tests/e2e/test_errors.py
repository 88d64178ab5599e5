"""Every error case of /mcp: HTTP status, JSON-RPC code and message; the gateway keeps serving.

Tests run in file order; the upstream-down test kills an upstream that only
this module uses, and the last test checks the gateway still serves normally.
"""

from __future__ import annotations

import json

import httpx
import pytest

from harness import ACCEPT, EverythingHttp, Gateway, RawMcp, http_upstream, rpc_message

MAX_BODY = 64 * 1024
ALLOWED_ORIGIN = "https://app.example.com"

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603


@pytest.fixture(scope="module")
def doomed(e2e_tmp):
    """An HTTP server-everything that the upstream-down test kills."""
    server = EverythingHttp(e2e_tmp, name="everything-doomed")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(e2e_tmp, everything_http, doomed):
    """A Sluice with a small body limit, one extra allowed origin and a doomed upstream."""
    gateway = Gateway(
        e2e_tmp / "errors",
        {"remote": http_upstream(everything_http.url), "doomed": http_upstream(doomed.url)},
        name="sluice-errors",
        max_body_bytes=MAX_BODY,
        allowed_origins=[ALLOWED_ORIGIN],
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw):
    """A raw client with an initialized session."""
    c = gw.client()
    c.initialize()
    yield c
    c.close()


def rpc_error(response: httpx.Response, status: int, code: int) -> dict:
    """Assert the HTTP status and the JSON-RPC error code; return the error object."""
    assert response.status_code == status, f"want HTTP {status}, got {response.status_code}: {response.text}"
    message = rpc_message(response)
    assert message.get("jsonrpc") == "2.0", message
    error = message.get("error")
    assert isinstance(error, dict), f"no JSON-RPC error object: {message}"
    assert error.get("code") == code, f"want code {code}: {message}"
    assert isinstance(error.get("message"), str) and error["message"].strip(), f"empty error message: {message}"
    return message


def http_error(response: httpx.Response, status: int) -> None:
    """Assert the HTTP status and that the body explains the refusal."""
    assert response.status_code == status, f"want HTTP {status}, got {response.status_code}: {response.text}"
    assert response.text.strip(), f"HTTP {status} with an empty body"
    try:
        body = response.json()
    except ValueError:
        return  # a plain-text explanation is fine
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        assert isinstance(error, dict) and isinstance(error.get("code"), int), body
        assert isinstance(error.get("message"), str) and error["message"].strip(), body


def send(client: RawMcp, body: bytes | str | dict, drop: tuple[str, ...] = (), **headers: str) -> httpx.Response:
    """POST with the session's headers, `headers` overriding and `drop` removing some."""
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    request = client.http.build_request("POST", client.url, content=content, headers=client.headers(**headers))
    for name in drop:
        if name in request.headers:
            del request.headers[name]
    return client.http.send(request)


def tools_list(client: RawMcp) -> dict:
    return client.request_body("tools/list", {})


# --------------------------------------------------------------------------- JSON-RPC level


def test_body_not_json_is_parse_error(client):
    message = rpc_error(send(client, b'{"jsonrpc": "2.0", "id": 1, "method": '), 400, PARSE_ERROR)
    assert message.get("id") is None, message


@pytest.mark.parametrize(
    "body",
    [
        {"foo": 1},
        {"jsonrpc": "1.0", "id": 7, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 8},
        [{"jsonrpc": "2.0", "id": 9, "method": "tools/list"}],
        "just a string",
    ],
    ids=["not-jsonrpc", "jsonrpc-1.0", "no-method", "batch", "json-string"],
)
def test_json_that_is_not_a_request_is_invalid_request(client, body):
    rpc_error(send(client, json.dumps(body)), 400, INVALID_REQUEST)


def test_unknown_method(client):
    body = client.request_body("tools/frobnicate", {})
    message = rpc_error(send(client, body), 200, METHOD_NOT_FOUND)
    assert message.get("id") == body["id"], message


def test_tools_call_without_name_is_invalid_params(client):
    rpc_error(send(client, client.request_body("tools/call", {"arguments": {}})), 200, INVALID_PARAMS)


@pytest.mark.parametrize("tool", ["remote__no-such-tool", "nosuchserver__echo", "echo"])
def test_unknown_tool_is_invalid_params_naming_it(client, tool):
    response = send(client, client.request_body("tools/call", {"name": tool, "arguments": {}}))
    message = rpc_error(response, 200, INVALID_PARAMS)
    assert tool in message["error"]["message"], message


# --------------------------------------------------------------------------- HTTP level


def test_missing_session_header_is_400(client):
    http_error(send(client, tools_list(client), drop=("Mcp-Session-Id",)), 400)


@pytest.mark.parametrize("session", ["forged-session-0000", "00000000-0000-0000-0000-000000000000"])
def test_unknown_session_is_404(client, session):
    http_error(send(client, tools_list(client), **{"Mcp-Session-Id": session}), 404)


def test_deleted_session_is_404(client):
    deleted = client.delete()
    assert deleted.status_code == 200, f"DELETE: HTTP {deleted.status_code}: {deleted.text}"
    http_error(send(client, tools_list(client)), 404)


def test_missing_accept_is_406(client):
    http_error(send(client, tools_list(client), drop=("Accept",)), 406)


def test_accept_without_json_is_406(client):
    http_error(send(client, tools_list(client), Accept="text/html"), 406)


def test_accept_json_alone_is_enough(client):
    response = send(client, tools_list(client), Accept="application/json")
    assert response.status_code == 200, response.text
    assert "result" in rpc_message(response)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, content_type):
    if content_type is None:
        response = send(client, tools_list(client), drop=("Content-Type",))
    else:
        response = send(client, tools_list(client), **{"Content-Type": content_type})
    http_error(response, 415)


def test_content_type_with_charset_is_accepted(client):
    response = send(client, tools_list(client), **{"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_body_over_the_limit_is_413(client):
    body = client.request_body("tools/call", {"name": "remote__echo", "arguments": {"message": "x" * MAX_BODY}})
    http_error(send(client, body), 413)


def test_body_under_the_limit_is_served(client):
    text = "y" * (MAX_BODY - 1024)
    message = client.call_tool("remote__echo", {"message": text})
    assert message.get("result", {}).get("content") == [{"type": "text", "text": f"Echo: {text}"}]


@pytest.mark.parametrize("with_session", [True, False], ids=["request", "initialize"])
def test_disallowed_origin_is_403(client, with_session):
    if with_session:
        response = send(client, tools_list(client), Origin="http://evil.example")
    else:
        init = client.request_body(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "evil", "version": "0"}},
        )
        response = client.http.post(
            client.url,
            content=json.dumps(init),
            headers={
                "Accept": ACCEPT,
                "Content-Type": "application/json",
                "Origin": "http://evil.example",
                **client.key_headers(),
            },
        )
    http_error(response, 403)


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1", "https://localhost", ALLOWED_ORIGIN])
def test_allowed_origins_are_served(client, origin):
    response = send(client, tools_list(client), Origin=origin)
    assert response.status_code == 200, f"Origin {origin}: HTTP {response.status_code} {response.text}"


def test_get_opens_the_notification_stream(client):
    headers = {"Accept": "text/event-stream", "Mcp-Session-Id": client.session_id, **client.key_headers()}
    with client.http.stream("GET", client.url, headers=headers, timeout=5) as response:
        assert response.status_code == 200, f"GET /mcp: HTTP {response.status_code}"
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(response.iter_raw())
        assert first.startswith(b":"), first


def test_get_needs_a_session_and_an_event_stream(client):
    response = client.http.get(client.url, headers={"Accept": "text/event-stream", **client.key_headers()})
    assert response.status_code == 400, response.text
    assert "Mcp-Session-Id" in response.json()["error"]["message"]
    response = client.http.get(
        client.url, headers={"Accept": "application/json", "Mcp-Session-Id": client.session_id, **client.key_headers()}
    )
    assert response.status_code == 406, response.text
    assert "text/event-stream" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- upstream down, then recovery


def test_upstream_down_is_internal_error_naming_it(client, doomed, gw):
    names = {tool["name"] for tool in client.list_tools()}
    assert "doomed__echo" in names, sorted(names)
    doomed.stop()
    response = send(client, client.request_body("tools/call", {"name": "doomed__echo", "arguments": {"message": "hi"}}))
    message = rpc_error(response, 200, INTERNAL_ERROR)
    assert "doomed" in message["error"]["message"], message
    # The failed call shows in the server's health at once, not only at the next sync.
    servers = httpx.get(f"{gw.admin_url}/readyz", timeout=5).json()["servers"]
    assert servers["doomed"]["health"] == "failed", servers
    assert "doomed" in servers["doomed"]["error"], servers


def test_gateway_still_serves_after_errors(gw):
    """After all the errors above, a new session lists tools and calls one normally."""
    assert gw.alive(), f"the gateway exited: {gw.log(50)}"
    c = gw.client()
    try:
        c.initialize()
        names = {tool["name"] for tool in c.list_tools()}
        assert "remote__echo" in names, sorted(names)
        message = c.call_tool("remote__echo", {"message": "still here"})
        assert message.get("result", {}).get("content") == [{"type": "text", "text": "Echo: still here"}], message
    finally:
        c.close()
