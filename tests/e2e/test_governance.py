"""Governance: virtual keys, tool grants, rate limits, the audit log, metrics and reload.

Real gateway, real upstreams (the HTTP server-everything as `remote`, the Python fixture
server as `py`), real clients (the official Python SDK and raw httpx). The Python server's
`record` and `hold` tools append to a file, which shows exactly which calls reached it.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import threading
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest

from harness import (
    ACCEPT,
    DEFAULT_KEY,
    LATEST_PROTOCOL,
    PY_TOOLS,
    Gateway,
    bearer,
    http_upstream,
    rpc_message,
    sdk_http_session,
    stdio_py,
    wait_until,
    wire,
)

INVALID_PARAMS = -32602

ALICE_KEY = "alice-secret-key-0001"
BOB_KEY = "bob-secret-key-0002"
CAROL_KEY = "carol-secret-key-0003"  # disabled
DAVE_KEY = "dave-secret-key-0004"  # expired
ERIN_KEY = "erin-secret-key-0005"  # configured only by its SHA-256
LIMITED_KEY = "limited-secret-key-0006"  # 3 requests per minute
METERED_KEY = "metered-secret-key-0007"  # 2 requests per minute (the metrics test)
WRONG_KEY = "not-a-configured-key-9999"

LIMITED_RPM = 3
METERED_RPM = 2

GROUPS = {
    "readers": ["remote__get-*", "py__whoami"],
    "writers": ["py__record", "py__add", "py__fail"],
}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


KEYS = [
    {"name": "alice", "key": ALICE_KEY, "tools": ["remote__echo"], "tool_groups": ["readers"]},
    {"name": "bob", "key": BOB_KEY, "tool_groups": ["writers"]},
    {"name": "carol", "key": CAROL_KEY, "tools": ["*"], "disabled": True},
    {"name": "dave", "key": DAVE_KEY, "tools": ["*"], "expires_at": "2001-01-01T00:00:00Z"},
    {"name": "erin", "key_sha256": sha256_hex(ERIN_KEY), "tools": ["py__whoami", "remote__echo"]},
    {"name": "limited", "key": LIMITED_KEY, "tools": ["py__add"], "rate_limit": {"requests_per_minute": LIMITED_RPM}},
    {"name": "metered", "key": METERED_KEY, "tools": ["py__add"], "rate_limit": {"requests_per_minute": METERED_RPM}},
]
SECRETS = [DEFAULT_KEY, ALICE_KEY, BOB_KEY, CAROL_KEY, DAVE_KEY, ERIN_KEY, LIMITED_KEY, METERED_KEY, WRONG_KEY]

BOB_TOOLS = {"py__record", "py__add", "py__fail"}


# --------------------------------------------------------------------------- fixtures and helpers


def governed(
    tmp: Path, remote_url: str, name: str, groups: dict[str, list[str]] = GROUPS, **kwargs
) -> tuple[Gateway, Path]:
    """A Sluice with the `remote` and `py` upstreams, `groups` and KEYS; and the py record file."""
    record_file = tmp / f"{name}-py-calls.txt"
    tmp.mkdir(parents=True, exist_ok=True)
    record_file.write_text("")
    gw = Gateway(
        tmp,
        {"remote": http_upstream(remote_url), "py": stdio_py(record_file)},
        name=name,
        keys=copy.deepcopy(KEYS),
        tool_groups=copy.deepcopy(groups),
        **kwargs,
    )
    return gw, record_file


@pytest.fixture(scope="module")
def gov(e2e_tmp, everything_http):
    """A governed Sluice shared by the tests of this module that do not stop or reload it."""
    gw, record_file = governed(e2e_tmp / "governance", everything_http.url, "sluice-gov")
    gw.record_file = record_file
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def all_tools(gov) -> set[str]:
    """Every tool of the catalog, as the `*` key sees it."""
    client = gov.client()
    try:
        client.initialize()
        names = client.tool_names()
    finally:
        client.close()
    assert {f"py__{t}" for t in PY_TOOLS} <= names, sorted(names)
    return names


def granted(all_tools: set[str], patterns: list[str]) -> set[str]:
    """The catalog tools matched by `patterns` (exact names or `*` globs)."""
    return {name for name in all_tools if any(fnmatch.fnmatchcase(name, p) for p in patterns)}


@pytest.fixture(scope="module")
def alice_tools(all_tools) -> set[str]:
    tools = granted(all_tools, GROUPS["readers"] + ["remote__echo"])
    # The glob really matched server-everything's get-* tools.
    assert {"remote__get-sum", "remote__get-env", "remote__get-tiny-image"} <= tools, sorted(tools)
    assert not tools & BOB_TOOLS
    return tools


def records(record_file: Path) -> list[str]:
    """Lines the Python upstream's `record`/`hold` tools wrote."""
    return record_file.read_text().splitlines()


def keyed(key: str | None, header: str = "Authorization") -> dict[str, str]:
    if key is None:
        return {}
    return bearer(key) if header == "Authorization" else {header: key}


def post_initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LATEST_PROTOCOL, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}},
    }
    return httpx.post(
        url,
        content=json.dumps(body),
        headers={"Accept": ACCEPT, "Content-Type": "application/json", **headers},
        timeout=30,
    )


def assert_401(response: httpx.Response, *words: str) -> str:
    """A 401 with `WWW-Authenticate: Bearer ...` and a JSON-RPC error naming `words`; its message."""
    assert response.status_code == 401, f"want HTTP 401, got {response.status_code}: {response.text}"
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer") and 'realm="sluice"' in challenge, (
        f"WWW-Authenticate is {challenge!r}; headers {dict(response.headers)}"
    )
    message = rpc_message(response)
    assert message.get("jsonrpc") == "2.0" and isinstance(message.get("error"), dict), message
    assert isinstance(message["error"].get("code"), int), message
    text = message["error"].get("message", "")
    for word in words:
        assert word in text, f"the 401 message should mention {word!r}: {text!r}"
    for secret in SECRETS:
        assert secret not in response.text, f"the 401 body echoes key material: {response.text}"
    return text


def assert_denied(message: dict, tool: str, key: str) -> None:
    """A JSON-RPC error (not a result) that names the tool and the key."""
    assert "error" in message and "result" not in message, f"{tool} was not refused for {key}: {message}"
    assert message["error"]["code"] == INVALID_PARAMS, message
    text = message["error"]["message"]
    assert f"`{tool}`" in text and f"`{key}`" in text, f"the refusal should name tool {tool} and key {key}: {text}"


def text_of(result: dict) -> str:
    return "".join(block.get("text", "") for block in result.get("content", []) if block.get("type") == "text")


async def sdk_tool_names(session) -> list[str]:
    """Every tool name of an SDK session, following cursors."""
    from mcp.types import PaginatedRequestParams

    names, cursor = [], None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        names += [tool.name for tool in page.tools]
        cursor = wire(page).get("nextCursor")
        if not cursor:
            return names


# --------------------------------------------------------------------------- keys and grants


def test_sdk_clients_see_and_call_exactly_their_tools(gov, all_tools, alice_tools):
    """Two official-SDK clients with keys of different groups: each lists exactly its tools;
    a call outside the grant fails naming tool and key and never reaches the upstream."""
    from mcp import MCPError

    async def scenario():
        out = {}
        async with sdk_http_session(gov.url, ALICE_KEY) as alice, sdk_http_session(gov.url, BOB_KEY) as bob:
            out["alice_names"] = await sdk_tool_names(alice)
            out["bob_names"] = await sdk_tool_names(bob)
            out["alice_sum"] = await alice.call_tool("remote__get-sum", {"a": 40, "b": 2})
            try:
                await alice.call_tool("py__record", {"tag": "sdk-denied-alice"})
                out["alice_denied"] = None
            except MCPError as e:
                out["alice_denied"] = e
            try:
                await bob.call_tool("remote__echo", {"message": "not for bob"})
                out["bob_denied"] = None
            except MCPError as e:
                out["bob_denied"] = e
            out["bob_record"] = await bob.call_tool("py__record", {"tag": "sdk-allowed-bob"})
        return out

    out = anyio.run(scenario)
    assert len(out["alice_names"]) == len(set(out["alice_names"])), out["alice_names"]
    assert set(out["alice_names"]) == alice_tools, (
        f"alice: extra {sorted(set(out['alice_names']) - alice_tools)}, missing {sorted(alice_tools - set(out['alice_names']))}"
    )
    assert sorted(out["bob_names"]) == sorted(BOB_TOOLS), out["bob_names"]

    assert not wire(out["alice_sum"]).get("isError", False), wire(out["alice_sum"])
    assert "42" in "".join(b.text for b in out["alice_sum"].content if b.type == "text")

    for error, tool, key in ((out["alice_denied"], "py__record", "alice"), (out["bob_denied"], "remote__echo", "bob")):
        assert error is not None, f"{key} was allowed to call {tool}"
        assert error.code == INVALID_PARAMS, (error.code, error.message)
        assert f"`{tool}`" in error.message and f"`{key}`" in error.message, error.message

    assert not wire(out["bob_record"]).get("isError", False), wire(out["bob_record"])
    # bob's allowed call came after alice's denied one, over the same stdio pipe: had alice's
    # call been forwarded, its tag would be in the file before bob's.
    seen = records(gov.record_file)
    assert "sdk-allowed-bob" in seen, seen
    assert "sdk-denied-alice" not in seen, f"a denied call reached the upstream: {seen}"


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


@pytest.mark.parametrize("key", [None, WRONG_KEY, CAROL_KEY], ids=["no-key", "wrong-key", "disabled-key"])
def test_sdk_client_without_a_usable_key_gets_the_gateway_explanation(gov, key):
    """The SDK client fails at initialize, and its error carries the gateway's 401 message."""
    from mcp import MCPError

    async def scenario():
        async with sdk_http_session(gov.url, key) as session:
            return await session.list_tools()

    with pytest.raises(BaseException) as caught:
        anyio.run(scenario)
    errors = [e for e in leaves(caught.value) if isinstance(e, MCPError)]
    assert errors, f"no MCPError from the SDK: {caught.value!r}"
    want = {None: "no virtual key", WRONG_KEY: "not valid", CAROL_KEY: "disabled"}[key]
    assert any(want in e.message for e in errors), [e.message for e in errors]


@pytest.mark.parametrize(
    "headers, words",
    [
        ({}, ["no virtual key", "Authorization: Bearer"]),
        (bearer(WRONG_KEY), ["not valid"]),
        ({"x-api-key": WRONG_KEY}, ["not valid"]),
        ({"Authorization": f"Basic {ALICE_KEY}"}, ["no virtual key"]),
        (bearer(CAROL_KEY), ["carol", "disabled"]),
        ({"x-sluice-key": CAROL_KEY}, ["carol", "disabled"]),
        (bearer(DAVE_KEY), ["dave", "expired"]),
        ({"x-api-key": DAVE_KEY}, ["dave", "expired"]),
    ],
    ids=["no-key", "wrong-bearer", "wrong-x-api-key", "basic-scheme", "disabled", "disabled-x-sluice-key", "expired",
         "expired-x-api-key"],
)
def test_initialize_without_a_usable_key_is_401(gov, headers, words):
    assert_401(post_initialize(gov.url, headers), *words)


def test_requests_in_a_session_need_the_key_too(gov, alice_tools):
    """A valid session id is no credential: without the key, or with a wrong one, it is 401."""
    alice = gov.client(ALICE_KEY)
    try:
        alice.initialize()
        for headers in ({}, bearer(WRONG_KEY)):
            body = alice.request_body("tools/list", {})
            session_headers = {
                "Accept": ACCEPT,
                "Content-Type": "application/json",
                "Mcp-Session-Id": alice.session_id,
                "MCP-Protocol-Version": alice.protocol_version,
                **headers,
            }
            assert_401(alice.http.post(alice.url, content=json.dumps(body), headers=session_headers))
        assert alice.tool_names() == alice_tools
    finally:
        alice.close()


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "x-sluice-key"])
def test_each_key_header_form_works(gov, alice_tools, header):
    client = gov.client(ALICE_KEY, key_header=header)
    try:
        client.initialize()
        assert client.tool_names() == alice_tools
        message = client.call_tool("remote__echo", {"message": f"via {header}"})
        assert text_of(message.get("result", {})) == f"Echo: via {header}", message
        assert_denied(client.call_tool("py__add", {"a": 1, "b": 2}), "py__add", "alice")
    finally:
        client.close()


def test_key_configured_by_sha256(gov):
    """`key_sha256` keys authenticate with the secret whose hash is configured."""
    client = gov.client(ERIN_KEY, key_header="x-api-key")
    try:
        client.initialize()
        assert client.tool_names() == {"py__whoami", "remote__echo"}
        message = client.call_tool("py__whoami")
        assert "sluice-e2e-py-server" in text_of(message.get("result", {})), message
    finally:
        client.close()
    assert_401(post_initialize(gov.url, bearer(sha256_hex(ERIN_KEY))), "not valid")


def test_session_is_bound_to_its_key(gov):
    """A session opened with alice's key is unknown (404) to any other key, even `*`."""
    alice = gov.client(ALICE_KEY)
    try:
        alice.initialize()
        body = alice.request_body("tools/list", {})
        for other in (BOB_KEY, DEFAULT_KEY):
            response = alice.post(body, headers=alice.headers(Authorization=f"Bearer {other}"))
            assert response.status_code == 404, f"alice's session with another key: HTTP {response.status_code} {response.text}"
            message = rpc_message(response)
            assert isinstance(message.get("error"), dict), message
            call = alice.request_body("tools/call", {"name": "remote__echo", "arguments": {"message": "hijack"}})
            response = alice.post(call, headers=alice.headers(Authorization=f"Bearer {other}"))
            assert response.status_code == 404, f"HTTP {response.status_code} {response.text}"
        # The owner still uses it.
        message = alice.call_tool("remote__echo", {"message": "mine"})
        assert text_of(message["result"]) == "Echo: mine", message
    finally:
        alice.close()


def test_x_sluice_tools_narrows_and_never_widens(gov, all_tools, alice_tools):
    tester = gov.client()
    alice = gov.client(ALICE_KEY)
    try:
        tester.initialize()
        alice.initialize()
        py_only = {"x-sluice-tools": "py__*"}
        assert tester.tool_names(py_only) == {f"py__{t}" for t in PY_TOOLS}
        two = {"x-sluice-tools": "py__add, remote__echo"}
        assert tester.tool_names(two) == {"py__add", "remote__echo"}
        assert tester.tool_names() == all_tools, "narrowing must last one request only"

        assert_denied(tester.call_tool("remote__get-sum", {"a": 1, "b": 1}, headers=py_only), "remote__get-sum", "tester")
        ok = tester.call_tool("py__add", {"a": 1, "b": 1}, headers=py_only)
        assert ok.get("result", {}).get("structuredContent") == {"result": 2}, ok

        # alice asks for more than she has: she gets the intersection, nothing more.
        wide = {"x-sluice-tools": "py__*, remote__echo, remote__get-sum"}
        assert alice.tool_names(wide) == {"py__whoami", "remote__echo", "remote__get-sum"}
        assert alice.tool_names({"x-sluice-tools": "*"}) == alice_tools
        assert_denied(alice.call_tool("py__add", {"a": 1, "b": 2}, headers={"x-sluice-tools": "py__add"}), "py__add", "alice")
    finally:
        tester.close()
        alice.close()


def test_auth_off_lets_a_keyless_client_in(e2e_tmp):
    """With `enforce_auth: false` and no keys at all, a client without a key gets every tool."""
    record_file = e2e_tmp / "auth-off-py-calls.txt"
    gw = Gateway(
        e2e_tmp / "auth-off",
        {"py": stdio_py(record_file)},
        name="sluice-auth-off",
        default_key=False,
        top={"enforce_auth": False},
    )
    try:
        client = gw.client(None)
        try:
            client.initialize()
            assert client.tool_names() == {f"py__{t}" for t in PY_TOOLS}
            message = client.call_tool("py__add", {"a": 20, "b": 22})
            assert message.get("result", {}).get("structuredContent") == {"result": 42}, message
        finally:
            client.close()
    finally:
        gw.stop()


# --------------------------------------------------------------------------- rate limit


def test_request_over_the_rate_limit_is_429_with_retry_after(gov):
    """`limited` may send 3 requests a minute: initialize, notifications/initialized and one call
    pass, the next request is refused with 429 and a Retry-After in whole seconds."""
    client = gov.client(LIMITED_KEY)
    tester = gov.client()
    try:
        client.initialize()  # requests 1 and 2
        message = client.call_tool("py__add", {"a": 1, "b": 2})  # request 3
        assert message.get("result", {}).get("structuredContent") == {"result": 3}, message

        response = client.post(client.request_body("tools/call", {"name": "py__add", "arguments": {"a": 2, "b": 2}}))
        assert response.status_code == 429, f"request {LIMITED_RPM + 1}: HTTP {response.status_code} {response.text}"
        retry_after = response.headers.get("retry-after")
        assert retry_after is not None and re.fullmatch(r"[0-9]+", retry_after), f"Retry-After: {retry_after!r}"
        assert 1 <= int(retry_after) <= 60, retry_after
        error = rpc_message(response).get("error")
        assert isinstance(error, dict) and isinstance(error.get("code"), int), response.text
        assert "limited" in error["message"], error

        # Other keys are not affected.
        tester.initialize()
        assert "result" in tester.call_tool("py__add", {"a": 1, "b": 1})
    finally:
        client.close()
        tester.close()


# --------------------------------------------------------------------------- metrics


def test_metrics_count_exactly_what_happened(gov, all_tools):
    """Scrape, do a known set of requests, scrape again: every counter moved by exactly that."""
    before = gov.metrics()
    tester, alice, metered = gov.client(), gov.client(ALICE_KEY), gov.client(METERED_KEY)
    try:
        tester.initialize()  # 200 + 202
        for i in range(3):  # 3 x 200, py__add ok
            assert "result" in tester.call_tool("py__add", {"a": i, "b": 1})
        failed = tester.call_tool("py__fail", {"reason": "metrics"})  # 200, tool_error
        assert failed["result"].get("isError") is True, failed
        assert "result" in tester.call_tool("remote__echo", {"message": "metrics"})  # 200, ok
        assert "error" in tester.call_tool("py__no-such-tool", {})  # 200, error

        alice.initialize()  # 200 + 202
        for _ in range(2):  # 2 x 200, denied
            assert_denied(alice.call_tool("py__add", {"a": 1, "b": 1}), "py__add", "alice")

        assert_401(post_initialize(gov.url, {}))  # 401
        assert_401(post_initialize(gov.url, bearer(WRONG_KEY)))  # 401

        metered.initialize()  # 200 + 202: METERED_RPM (2) spent
        refused = metered.post(metered.request_body("tools/list", {}))
        assert refused.status_code == 429, f"HTTP {refused.status_code} {refused.text}"

        deleted = tester.delete()  # 200
        assert deleted.status_code == 200, deleted.text
    finally:
        tester.close()
        alice.close()
        metered.close()
    requests = {"200": 1 + 3 + 1 + 1 + 1 + 1 + 2 + 1 + 1, "202": 3, "401": 2, "429": 1}
    total = sum(requests.values())

    # Requests are counted when their response is done, which may be just after the client
    # has it: wait until the counts got there, then demand they are exact.
    def scraped():
        m = gov.metrics()
        got = m.sum("sluice_gateway_overhead_seconds_count", route="mcp") - before.sum(
            "sluice_gateway_overhead_seconds_count", route="mcp"
        )
        return m if got >= total else None

    after = wait_until(scraped, 10, "the request counters to catch up")

    def delta(name: str, **labels: str) -> float:
        return after.sum(name, **labels) - before.sum(name, **labels)

    for status, count in requests.items():
        assert delta("sluice_requests_total", route="mcp", status=status) == count, (status, after.text)
    assert delta("sluice_requests_total", route="mcp") == total

    calls = "sluice_tool_calls_total"
    assert delta(calls, server="py", tool="py__add", outcome="ok") == 3
    assert delta(calls, server="py", tool="py__fail", outcome="tool_error") == 1
    assert delta(calls, server="remote", tool="remote__echo", outcome="ok") == 1
    assert delta(calls, server="py", tool="py__add", outcome="denied") == 2
    assert delta(calls, outcome="error") == 1
    assert delta(calls) == 8, "no other tool call was counted"

    assert delta("sluice_rate_limited_total", key="metered") == 1
    assert delta("sluice_rate_limited_total") == 1
    assert delta("sluice_auth_failures_total") == 2
    assert delta("sluice_active_sessions") == 3 - 1

    # Histograms: one overhead observation per /mcp request; one upstream observation per call
    # that reached an upstream (not the denied ones, not the unknown tool).
    assert delta("sluice_gateway_overhead_seconds_count", route="mcp") == total
    assert after.value("sluice_gateway_overhead_seconds_bucket", route="mcp", le="+Inf") == after.value(
        "sluice_gateway_overhead_seconds_count", route="mcp"
    )
    assert delta("sluice_gateway_overhead_seconds_sum", route="mcp") > 0
    assert delta("sluice_upstream_duration_seconds_count", server="py") == 4
    assert delta("sluice_upstream_duration_seconds_count", server="remote") == 1
    assert delta("sluice_upstream_duration_seconds_count") == 5
    assert delta("sluice_upstream_duration_seconds_sum", server="py") > 0

    assert after.value("sluice_upstream_up", server="py") == 1
    assert after.value("sluice_upstream_up", server="remote") == 1
    assert after.value("sluice_catalog_tools") == len(all_tools)
    for secret in SECRETS:
        assert secret not in after.text, "key material in /metrics"


# --------------------------------------------------------------------------- audit log


AUDIT_FIELDS = {
    "time": str,
    "request_id": str,
    "session": str,
    "key": str,
    "method": str,
    "server": (str, type(None)),
    "tool": (str, type(None)),
    "argument_bytes": int,
    "status": str,
    "upstream_ms": (int, float, type(None)),
    "total_ms": (int, float),
}


@pytest.mark.parametrize("include_arguments", [False, True], ids=["sizes-only", "with-arguments"])
def test_audit_log_has_one_record_per_tool_call(e2e_tmp, everything_http, include_arguments):
    """N tool calls (ok, tool_error, denied, error), then SIGTERM: exactly N well-formed
    records with the right status, and no key material anywhere in the file."""
    name = f"sluice-audit-{'args' if include_arguments else 'sizes'}"
    gw, record_file = governed(
        e2e_tmp / name, everything_http.url, name, top={"audit": {"include_arguments": include_arguments}}
    )
    try:
        assert gw.config["audit"]["include_arguments"] is include_arguments
        tester, alice, bob = gw.client(), gw.client(ALICE_KEY, key_header="x-api-key"), gw.client(BOB_KEY)
        clients = {"tester": tester, "alice": alice, "bob": bob}
        for client in clients.values():
            client.initialize()
        # Requests that are not tool calls leave no record.
        assert tester.tool_names()
        assert "result" in tester.request("ping")[1]
        assert_401(post_initialize(gw.url, bearer(WRONG_KEY)))

        plan = [
            ("tester", "py", "py__add", {"a": 1, "b": 2}, "ok"),
            ("tester", "remote", "remote__echo", {"message": "audit \u00e9 \"quoted\""}, "ok"),
            ("tester", "py", "py__fail", {"reason": "audit-fail"}, "tool_error"),
            ("alice", "py", "py__record", {"tag": "audit-denied-alice"}, "denied"),
            ("bob", "py", "py__record", {"tag": "audit-allowed-bob"}, "ok"),
            ("alice", "remote", "remote__get-sum", {"a": 2, "b": 3}, "ok"),
            ("bob", "remote", "remote__echo", {"message": "not bob's"}, "denied"),
            ("tester", None, "py__no-such-tool", {"x": 1}, "error"),
        ]
        sent = []
        for key, server, tool, arguments, status in plan:
            client = clients[key]
            body = client.request_body("tools/call", {"name": tool, "arguments": arguments})
            response = client.post(body)
            assert response.status_code == 200, response.text
            message = rpc_message(response)
            if status == "ok":
                assert "result" in message and not message["result"].get("isError"), message
            elif status == "tool_error":
                assert message.get("result", {}).get("isError") is True, message
            else:
                assert "error" in message, message
            sent.append((body["id"], key, server, tool, arguments, status, client.session_id))
        assert records(record_file) == ["audit-allowed-bob"]
        session_ids = [c.session_id for c in clients.values()]
        for client in clients.values():
            client.close()

        code = gw.terminate()
        assert code == 0, f"sluice exited {code} after SIGTERM:\n{gw.log(30)}"
    finally:
        gw.stop()

    raw_text = gw.audit_path.read_text(encoding="utf-8")
    lines = raw_text.splitlines()
    assert len(lines) == len(plan), f"want {len(plan)} audit records, got {len(lines)}:\n{raw_text}"
    audit = [json.loads(line) for line in lines]

    fingerprints = {}
    for record, (rid, key, server, tool, arguments, status, session_id) in zip(audit, sent):
        for field, kind in AUDIT_FIELDS.items():
            assert field in record, f"record lacks `{field}`: {record}"
            assert isinstance(record[field], kind) and not isinstance(record[field], bool), (field, record)
        assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).tzinfo is not None, record
        assert record["request_id"] == str(rid), record
        assert record["key"] == key, record
        assert record["method"] == "tools/call", record
        assert record["tool"] == tool, record
        assert record["server"] == server, record
        assert record["status"] == status, record
        assert record["argument_bytes"] == len(json.dumps(arguments).encode()), record
        if include_arguments:
            assert record.get("arguments") == arguments, record
        else:
            assert "arguments" not in record, f"arguments recorded without include_arguments: {record}"
        if status in ("denied", "error"):
            assert isinstance(record.get("error"), str) and record["error"], record
            assert record["upstream_ms"] is None, f"a {status} call has upstream time: {record}"
        else:
            assert record.get("error") is None, record
            assert record["upstream_ms"] is not None and record["upstream_ms"] >= 0, record
            assert record["total_ms"] >= record["upstream_ms"], record
        if status == "denied":
            assert f"`{tool}`" in record["error"] and f"`{key}`" in record["error"], record
        assert record["total_ms"] >= 0, record
        assert re.fullmatch(r"[0-9a-f]{8,}", record["session"]), record
        fingerprints.setdefault(session_id, set()).add(record["session"])
    # One fingerprint per session, distinct between sessions.
    assert all(len(prints) == 1 for prints in fingerprints.values()), fingerprints
    assert len({next(iter(p)) for p in fingerprints.values()}) == len(fingerprints), fingerprints

    for secret in SECRETS:
        assert secret not in raw_text, f"key material ({secret[:6]}...) in the audit log"
        assert sha256_hex(secret) not in raw_text, "a key hash in the audit log"
    assert "Bearer" not in raw_text
    for session_id in session_ids:
        assert session_id not in raw_text, "a raw session id in the audit log"


# --------------------------------------------------------------------------- reload


def test_sighup_reload_applies_to_next_request_and_spares_calls_in_flight(e2e_tmp, everything_http):
    """SIGHUP: a tool removed from a group is gone from the next tools/list and refused on the
    next tools/call, a disabled key and a new key's limit apply at once, while a call in flight
    since before the reload completes; an invalid file is refused and the old policy stays."""
    # alice's group grants `py__hold`, so that one of her calls can be in flight across the reload.
    groups = {"readers": ["remote__echo", "py__whoami", "py__add", "py__hold"], "writers": list(GROUPS["writers"])}
    gw, record_file = governed(e2e_tmp / "reload", everything_http.url, "sluice-reload", groups=groups)
    holder = alice = bob = None
    try:
        alice = gw.client(ALICE_KEY)
        alice.initialize()
        bob = gw.client(BOB_KEY)
        bob.initialize()
        before = alice.tool_names()
        assert {"py__add", "py__hold", "py__whoami", "remote__echo"} <= before, sorted(before)

        # A call that stays in flight until the test releases it.
        holder = gw.client(ALICE_KEY)
        holder.initialize()
        held: dict = {}

        def hold() -> None:
            try:
                held["message"] = holder.call_tool("py__hold", {"tag": "inflight", "timeout": 60})
            except BaseException as e:  # reported by the main thread
                held["error"] = e

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        wait_until(lambda: "hold-start:inflight" in records(record_file), 30, "the held call to reach the upstream")

        # Reload: py__add and py__hold leave alice's group; bob is disabled; a new key appears,
        # with a limit of 2 requests a minute.
        new = copy.deepcopy(gw.config)
        new["mcp"]["tool_groups"]["readers"] = ["remote__echo", "py__whoami"]
        for key in new["keys"]:
            if key["name"] == "bob":
                key["disabled"] = True
        new["keys"].append(
            {"name": "newbie", "key": "newbie-secret-key-0008", "tools": ["remote__echo"], "rate_limit": {"requests_per_minute": 2}}
        )
        gw.reload(new)
        assert thread.is_alive(), f"the held call ended before it was released: {held}"

        # The next requests see the new policy, in the sessions opened before the reload too.
        after = alice.tool_names()
        assert after == before - {"py__add", "py__hold"}, sorted(after)
        assert_denied(alice.call_tool("py__add", {"a": 1, "b": 2}), "py__add", "alice")
        assert_denied(alice.call_tool("py__hold", {"tag": "after-reload", "timeout": 1}), "py__hold", "alice")
        assert "hold-start:after-reload" not in records(record_file)
        assert text_of(alice.call_tool("remote__echo", {"message": "still"})["result"]) == "Echo: still"
        response = bob.post(bob.request_body("tools/list", {}))
        assert_401(response, "bob", "disabled")
        newbie = gw.client("newbie-secret-key-0008")
        newbie.initialize()  # 2 requests: the new limit is spent
        over = newbie.post(newbie.request_body("tools/list", {}))
        assert over.status_code == 429, f"the reloaded limit did not apply: HTTP {over.status_code} {over.text}"
        newbie.close()

        # The call in flight since before the reload completes normally.
        with record_file.open("a") as f:
            f.write("release:inflight\n")
        thread.join(60)
        assert not thread.is_alive(), "the held call never finished"
        assert "error" not in held, f"the held call failed: {held['error']!r}"
        message = held["message"]
        assert "result" in message and not message["result"].get("isError"), message
        assert text_of(message["result"]) == "released inflight", message

        # An invalid configuration (a key naming an undefined group) is refused; the running
        # policy stays, and the key it would have added is unknown.
        broken = copy.deepcopy(new)
        broken["keys"].append({"name": "eve", "key": "eve-secret-key-0009", "tool_groups": ["no-such-group"]})
        broken["mcp"]["tool_groups"]["readers"] = ["*"]
        gw.reload(broken, expect="configuration reload refused")
        assert gw.alive()
        assert alice.tool_names() == after
        assert_denied(alice.call_tool("py__add", {"a": 1, "b": 2}), "py__add", "alice")
        assert text_of(alice.call_tool("py__whoami")["result"]).startswith("sluice-e2e-py-server")
        assert_401(post_initialize(gw.url, bearer("eve-secret-key-0009")), "not valid")
        assert_401(post_initialize(gw.url, bearer(BOB_KEY)), "bob", "disabled")

        # Text that is not even YAML is refused the same way.
        gw.reload("listen: [this is: not yaml\n", expect="configuration reload refused")
        assert alice.tool_names() == after
    finally:
        for client in (holder, alice, bob):
            if client is not None:
                client.close()
        gw.stop()
