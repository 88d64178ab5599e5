"""Upstreams of either era (issue 15): Sluice speaking MCP 2026-07-28 (stateless) to an HTTP
upstream.

The upstream is tests/fixtures/new_era_server.py, the official Python SDK's MCPServer over
Streamable HTTP, which serves 2026-07-28 requests (and, unless told to refuse `initialize`, the
session era too). With `era: stateless` Sluice probes only `server/discover`; with `era: auto` it
tries `initialize` first and falls back to `server/discover` when the server refuses it. Clients
of the old era (the official SDK's legacy session client) and of the new era (raw httpx) call the
upstream's tools through Sluice; the upstream's InputRequiredResult (MRTR) reaches a legacy client
as an ordinary `elicitation/create` request on the call's stream, and Sluice retries the upstream
request with the client's answer and the upstream's requestState.
"""

from __future__ import annotations

import re
from typing import Iterator

import anyio
import pytest

from harness import (
    DEFAULT_KEY,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL,
    NEW_ERA,
    NEW_ERA_TOOLS,
    Gateway,
    NewEraServer,
    StatelessMcp,
    fronted,
    http_upstream,
    sdk_http_session_with,
    wait_until,
    wire,
)

SERVER = "new"
SPEAKS = f"upstream speaks MCP {NEW_ERA}"
SPEAKS_LINE = re.compile(rf"upstream speaks MCP {re.escape(NEW_ERA)}.*server=\"?{SERVER}\b|server=\"?{SERVER}\b.*upstream speaks MCP {re.escape(NEW_ERA)}")
#: Every SDK call of a test is bounded by this many seconds.
SCENARIO_TIMEOUT = 60
ANSWERED_NAME = "Ada Lovelace"


def upstream_config(url: str, era: str) -> dict:
    return {**http_upstream(url), "era": era, "request_timeout": "30s"}


@pytest.fixture(scope="module")
def stateless_pair(tmp_path_factory) -> Iterator[tuple[Gateway, NewEraServer]]:
    """A dual-era upstream and a Sluice told to speak only the new era to it (`era: stateless`)."""
    tmp = tmp_path_factory.mktemp("stateless-upstream")
    upstream = NewEraServer(tmp, name="new-era-dual")
    start = lambda: Gateway(tmp / "gw", {SERVER: upstream_config(upstream.url, "stateless")},  # noqa: E731
                            name="sluice-era-stateless")
    with fronted(upstream, start) as gw:
        yield gw, upstream


@pytest.fixture(scope="module")
def auto_pair(tmp_path_factory) -> Iterator[tuple[Gateway, NewEraServer]]:
    """An upstream of the new era alone (it refuses `initialize`) and a Sluice with `era: auto`."""
    tmp = tmp_path_factory.mktemp("auto-upstream")
    upstream = NewEraServer(tmp, name="new-era-only", refuse_initialize=True)
    start = lambda: Gateway(tmp / "gw", {SERVER: upstream_config(upstream.url, "auto")},  # noqa: E731
                            name="sluice-era-auto")
    with fronted(upstream, start) as gw:
        yield gw, upstream


def text_of(result) -> str:
    return "".join(getattr(block, "text", "") or "" for block in result.content)


def run_sdk(gw: Gateway, scenario, **session_kwargs):
    """`scenario(session)` with a legacy (session-era) SDK client session on `gw`, bounded."""

    async def main():
        with anyio.fail_after(SCENARIO_TIMEOUT):
            async with sdk_http_session_with(gw.url, gw.key, **session_kwargs) as session:
                return await scenario(session)

    return anyio.run(main)


async def list_and_call(session):
    tools = (await session.list_tools()).tools
    added = await session.call_tool(f"{SERVER}__add", {"a": 19, "b": 23})
    greeted = await session.call_tool(f"{SERVER}__greet", {"name": "Grace"})
    return tools, added, greeted


def assert_list_and_call(tools, added, greeted) -> None:
    names = {tool.name for tool in tools}
    assert {f"{SERVER}__{t}" for t in NEW_ERA_TOOLS} <= names, sorted(names)
    by_name = {tool.name: wire(tool) for tool in tools}
    assert by_name[f"{SERVER}__add"]["inputSchema"]["required"] == ["a", "b"], by_name[f"{SERVER}__add"]
    for result in (added, greeted):
        assert not wire(result).get("isError", False), wire(result)
    assert text_of(added) == "42", wire(added)
    assert text_of(greeted) == "Hello, Grace!", wire(greeted)


def assert_speaks_new_era(gw: Gateway) -> None:
    wait_until(lambda: SPEAKS in gw.log(), 10, f"`{SPEAKS}` in {gw.name}'s log")
    lines = [line for line in gw.log().splitlines() if SPEAKS in line]
    assert any(SPEAKS_LINE.search(line) for line in lines), f"`{SPEAKS}` without server={SERVER}: {lines}"


def assert_new_era_requests(upstream: NewEraServer, methods: set[str]) -> None:
    """Every `methods` request Sluice sent the upstream was of the new era: the era's headers
    (MCP-Protocol-Version, Mcp-Method, Mcp-Name for tools/call) and `_meta` (protocol version,
    client capabilities with sampling/elicitation/roots, client info)."""
    posts = [p for p in upstream.posts() if p["method"] in methods]
    assert {p["method"] for p in posts} >= methods, f"the upstream did not get all of {methods}: {upstream.posts()}"
    for post in posts:
        assert post["protocol_header"] == NEW_ERA, post
        assert post["mcp_method"] == post["method"], post
        meta = post["meta"] or {}
        assert meta.get(META_PROTOCOL) == NEW_ERA, post
        capabilities = meta.get(META_CAPABILITIES)
        assert isinstance(capabilities, dict) and {"sampling", "elicitation", "roots"} <= set(capabilities), post
        assert isinstance(meta.get(META_CLIENT_INFO), dict) and meta[META_CLIENT_INFO].get("name"), post
    for post in posts:
        if post["method"] == "tools/call":
            assert post["mcp_name"] in NEW_ERA_TOOLS, post


# --------------------------------------------------------------------------- legacy client, era: stateless


def test_legacy_client_lists_and_calls_with_era_stateless(stateless_pair):
    gw, upstream = stateless_pair
    tools, added, greeted = run_sdk(gw, list_and_call)
    assert_list_and_call(tools, added, greeted)
    assert_speaks_new_era(gw)
    assert_new_era_requests(upstream, {"server/discover", "tools/list", "tools/call"})
    # `era: stateless` probes only server/discover, although this upstream would take initialize.
    assert not upstream.posts("initialize"), upstream.posts("initialize")
    calls = {(p["mcp_name"], p["method"]) for p in upstream.posts("tools/call")}
    assert {("add", "tools/call"), ("greet", "tools/call")} <= calls, calls


# --------------------------------------------------------------------------- legacy client, era: auto


def test_legacy_client_lists_and_calls_with_era_auto(auto_pair):
    gw, upstream = auto_pair
    tools, added, greeted = run_sdk(gw, list_and_call)
    assert_list_and_call(tools, added, greeted)
    assert_speaks_new_era(gw)
    # Sessions first: initialize was tried, refused, and server/discover followed.
    methods = [p["method"] for p in upstream.posts()]
    assert "initialize" in methods and "server/discover" in methods, methods
    assert methods.index("initialize") < methods.index("server/discover"), methods
    assert_new_era_requests(upstream, {"server/discover", "tools/list", "tools/call"})


# --------------------------------------------------------------------------- MRTR through the bridge


def test_input_required_reaches_a_legacy_client_as_elicitation(stateless_pair):
    gw, upstream = stateless_pair
    asked: list = []

    async def on_elicit(context, params):
        from mcp import types

        asked.append(params)
        return types.ElicitResult(action="accept", content={"name": ANSWERED_NAME})

    async def scenario(session):
        return await session.call_tool(f"{SERVER}__who_am_i", {})

    result = run_sdk(gw, scenario, elicitation_callback=on_elicit)
    assert len(asked) == 1, f"the elicitation callback ran {len(asked)} times: {asked}"
    question = wire(asked[0])
    assert question.get("message") == "What is your name?", question
    assert "name" in question.get("requestedSchema", {}).get("properties", {}), question
    assert not wire(result).get("isError", False), wire(result)
    assert text_of(result) == f"You are {ANSWERED_NAME}.", wire(result)

    rounds = upstream.entries("who_am_i")[-2:]
    assert [r["round"] for r in rounds] == [1, 2], upstream.entries("who_am_i")
    assert all(r["protocol_version"] == NEW_ERA for r in rounds), rounds
    # The retry carried the answer and echoed the upstream's (sealed) requestState.
    assert rounds[1]["request_state"] == "who_am_i:asked", rounds[1]
    assert rounds[1]["name"] == ANSWERED_NAME, rounds[1]
    calls = [p for p in upstream.posts("tools/call") if p["mcp_name"] == "who_am_i"][-2:]
    assert len(calls) == 2 and calls[0]["input_responses"] is None and calls[0]["request_state"] is None, calls
    assert set(calls[1]["input_responses"] or {}) == {"name"}, calls[1]
    assert isinstance(calls[1]["request_state"], str) and calls[1]["request_state"], calls[1]
    assert_new_era_requests(upstream, {"tools/call"})


# --------------------------------------------------------------------------- new-era client


@pytest.fixture
def new_era_client(stateless_pair) -> Iterator[StatelessMcp]:
    gw, _ = stateless_pair
    client = StatelessMcp(gw.url, key=DEFAULT_KEY)
    yield client
    client.close()


def test_new_era_client_calls_new_era_upstream(stateless_pair, new_era_client):
    _, upstream = stateless_pair
    listed = new_era_client.result("tools/list")
    names = {tool["name"] for tool in listed.get("tools", [])}
    assert f"{SERVER}__add" in names, sorted(names)
    result = new_era_client.result("tools/call", {"name": f"{SERVER}__add", "arguments": {"a": 2, "b": 40}})
    assert result.get("resultType") == "complete", result
    assert not result.get("isError", False), result
    assert "".join(b.get("text", "") for b in result.get("content", [])) == "42", result
    assert_new_era_requests(upstream, {"tools/call"})


def test_mcp_param_headers_reach_a_new_era_upstream(stateless_pair, new_era_client):
    """A new-era client's `Mcp-Param-*` headers (mirrored tool arguments) are passed on."""
    _, upstream = stateless_pair
    params = {"name": f"{SERVER}__greet", "arguments": {"name": "Ada"}}
    response, message = new_era_client.request(
        "tools/call", params, headers={"Mcp-Param-Name": "Ada"}
    )
    assert response.status_code == 200 and "result" in message, message
    calls = [p for p in upstream.posts() if p.get("method") == "tools/call"]
    assert calls and calls[-1].get("param_headers") == {"mcp-param-name": "Ada"}, calls[-1:]


def test_new_era_client_answers_new_era_upstreams_question(stateless_pair, new_era_client):
    """MRTR on both sides: the upstream's InputRequiredResult reaches the new-era client as an
    InputRequiredResult; the client's retry (its answer and Sluice's requestState) completes it."""
    _, upstream = stateless_pair
    response, message = new_era_client.call_tool(f"{SERVER}__who_am_i")
    assert response.status_code == 200, f"HTTP {response.status_code} {message}"
    first = message.get("result")
    assert first and first.get("resultType") == "input_required", message
    requests = first.get("inputRequests") or {}
    assert len(requests) == 1, requests
    key, request = next(iter(requests.items()))
    assert request["method"] == "elicitation/create", request
    assert request["params"]["message"] == "What is your name?", request
    state = first.get("requestState")
    assert isinstance(state, str) and state, first
    response, message = new_era_client.call_tool(
        f"{SERVER}__who_am_i",
        inputResponses={key: {"action": "accept", "content": {"name": "Grace Hopper"}}},
        requestState=state,
    )
    assert response.status_code == 200, f"HTTP {response.status_code} {message}"
    result = message.get("result")
    assert result and result.get("resultType") == "complete", message
    assert "".join(b.get("text", "") for b in result.get("content", [])) == "You are Grace Hopper.", result
    assert upstream.entries("who_am_i")[-1]["name"] == "Grace Hopper", upstream.entries("who_am_i")
