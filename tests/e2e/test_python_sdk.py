"""The official Python MCP SDK client talking to real upstream servers through Sluice."""

from __future__ import annotations

import base64

import anyio
import pytest

from harness import (
    EVERYTHING_JS,
    EVERYTHING_TOOLS,
    PY_SERVER,
    PY_TOOLS,
    PYTHON,
    Gateway,
    main_servers,
    node,
    sdk_http_session,
    sdk_stdio_session,
    wire,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def text_of(result) -> str:
    """The concatenated text blocks of a tools/call result."""
    return "".join(block.text for block in result.content if block.type == "text")


async def list_all_tools(session) -> list:
    """Every tool of an SDK session, following cursors."""
    from mcp.types import PaginatedRequestParams

    tools, cursor = [], None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = wire(page).get("nextCursor")
        if not cursor:
            return tools


def test_lists_merged_namespaced_tools(gateway):
    """tools/list merges every upstream's tools under `<server>__<tool>`, schemas unchanged."""

    async def scenario():
        async with sdk_http_session(gateway.url, gateway.key) as session:
            through = await list_all_tools(session)
        async with sdk_stdio_session(str(PYTHON), [str(PY_SERVER)]) as session:
            direct_py = await list_all_tools(session)
        async with sdk_stdio_session(node(), [str(EVERYTHING_JS), "stdio"]) as session:
            direct_everything = await list_all_tools(session)
        return through, direct_py, direct_everything

    through, direct_py, direct_everything = anyio.run(scenario)
    names = [tool.name for tool in through]
    assert len(names) == len(set(names)), f"duplicate tool names: {sorted(names)}"
    expected = (
        {f"everything__{t}" for t in EVERYTHING_TOOLS}
        | {f"remote__{t}" for t in EVERYTHING_TOOLS}
        | {f"py__{t}" for t in PY_TOOLS}
    )
    missing = expected - set(names)
    assert not missing, f"tools missing from the merged list: {sorted(missing)}; got {sorted(names)}"
    strays = [n for n in names if not n.startswith(("everything__", "remote__", "py__"))]
    assert not strays, f"tools without a server prefix: {strays}"

    by_name = {tool.name: wire(tool) for tool in through}
    for prefix, direct in (("py", direct_py), ("everything", direct_everything), ("remote", direct_everything)):
        for tool in direct:
            if f"{prefix}__{tool.name}" not in by_name:
                continue  # a capability-dependent tool the gateway's own client did not get
            seen, want = by_name[f"{prefix}__{tool.name}"], wire(tool)
            for key in ("description", "inputSchema", "outputSchema"):
                assert seen.get(key) == want.get(key), f"{prefix}__{tool.name}: {key} changed by the gateway"


def test_calls_stdio_and_http_upstream_tools(gateway):
    """tools/call is routed to the owning upstream, over stdio and over HTTP."""

    async def scenario():
        async with sdk_http_session(gateway.url, gateway.key) as session:
            return (
                await session.call_tool("everything__echo", {"message": "via stdio"}),
                await session.call_tool("remote__echo", {"message": "via http"}),
                await session.call_tool("remote__get-sum", {"a": 19, "b": 23}),
                await session.call_tool("py__whoami", {}),
            )

    stdio_echo, http_echo, http_sum, whoami = anyio.run(scenario)
    for result in (stdio_echo, http_echo, http_sum, whoami):
        assert not wire(result).get("isError", False), wire(result)
    assert text_of(stdio_echo) == "Echo: via stdio"
    assert text_of(http_echo) == "Echo: via http"
    assert "42" in text_of(http_sum), text_of(http_sum)
    assert "sluice-e2e-py-server" in text_of(whoami), text_of(whoami)


def test_image_content_arrives_unchanged(gateway, everything_http):
    """An image content block (type, mimeType, base64 data) passes through byte for byte."""

    async def scenario():
        async with sdk_http_session(everything_http.url) as session:
            direct = await session.call_tool("get-tiny-image", {})
        async with sdk_http_session(gateway.url, gateway.key) as session:
            via_http = await session.call_tool("remote__get-tiny-image", {})
            via_stdio = await session.call_tool("everything__get-tiny-image", {})
        return direct, via_http, via_stdio

    direct, via_http, via_stdio = anyio.run(scenario)
    for result in (via_http, via_stdio):
        assert wire(result.content) == wire(direct.content)
        images = [block for block in wire(result.content) if block["type"] == "image"]
        assert len(images) == 1, wire(result.content)
        assert images[0]["mimeType"] == "image/png"
        assert base64.b64decode(images[0]["data"], validate=True).startswith(PNG_SIGNATURE)


def test_structured_content_and_tool_errors_pass_through(gateway):
    """structuredContent and isError results from the Python upstream arrive unchanged."""

    async def scenario():
        async with sdk_http_session(gateway.url, gateway.key) as session:
            return (
                await session.call_tool("py__add", {"a": 2, "b": 40}),
                await session.call_tool("py__fail", {"reason": "kaboom-7"}),
            )

    added, failed = anyio.run(scenario)
    added_wire, failed_wire = wire(added), wire(failed)
    assert added_wire.get("structuredContent") == {"result": 42}, added_wire
    assert not added_wire.get("isError", False), added_wire
    assert text_of(added) == "42"
    assert failed_wire.get("isError") is True, failed_wire
    assert "kaboom-7" in text_of(failed), failed_wire


@pytest.fixture(scope="module")
def paged_gateway(e2e_tmp, everything_http):
    """A Sluice with the standard upstreams and only 5 tools per tools/list page."""
    gw = Gateway(e2e_tmp / "paged", main_servers(everything_http.url), name="sluice-paged", page_size=5)
    yield gw
    gw.stop()


def test_pagination_returns_every_tool_exactly_once(paged_gateway, gateway):
    """With page_size 5, walking nextCursor yields every tool once, at most 5 per page."""
    from mcp.types import PaginatedRequestParams

    async def scenario():
        pages, cursor = [], None
        async with sdk_http_session(paged_gateway.url, paged_gateway.key) as session:
            while len(pages) < 100:
                page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                pages.append([tool.name for tool in page.tools])
                cursor = wire(page).get("nextCursor")
                if not cursor:
                    break
        return pages

    pages = anyio.run(scenario)
    assert all(1 <= len(page) <= 5 for page in pages), f"page sizes: {[len(p) for p in pages]}"
    names = [name for page in pages for name in page]
    assert len(names) == len(set(names)), f"a tool came back twice: {names}"

    raw = gateway.client()
    try:
        raw.initialize()
        _, message = raw.request("tools/list", {})
    finally:
        raw.close()
    unpaged = {tool["name"] for tool in message["result"]["tools"]}
    assert "nextCursor" not in message["result"], "page_size 100 should fit every tool in one page"
    assert set(names) == unpaged
    assert len(pages) == -(-len(unpaged) // 5), f"{len(unpaged)} tools came in {len(pages)} pages of <= 5"
