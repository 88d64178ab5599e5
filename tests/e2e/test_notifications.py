"""The GET notification stream (issue 14): a client with `GET /mcp` open hears
`notifications/tools/list_changed` when what it can see changes (an upstream changed its tools
at run time, a server was added by SIGHUP), and then lists the new tools."""

from __future__ import annotations

import copy

import anyio
import pytest

from harness import (
    Gateway,
    LiveHttp,
    http_upstream,
    NotificationStream,
    sdk_http_session,
    stdio_live,
    stdio_py,
    wait_until,
)

LIST_CHANGED = "notifications/tools/list_changed"


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_raw_get_stream_hears_upstream_tool_change(e2e_tmp, transport):
    """An upstream (stdio, or Streamable HTTP announcing on its own GET stream) registers a tool
    and announces it: the GET stream carries list_changed and the new tool is listed and
    callable through Sluice."""
    tmp = e2e_tmp / f"notify-upstream-{transport}"
    tmp.mkdir(parents=True, exist_ok=True)
    upstream = None
    if transport == "stdio":
        spec = stdio_live(tmp / "live-record.txt")
    else:
        upstream = LiveHttp(tmp, record_file=tmp / "live-record.txt")
        spec = http_upstream(upstream.url)
    try:
        gw = Gateway(tmp, {"live": spec}, name=f"sluice-notify-upstream-{transport}")
    except BaseException:
        if upstream:
            upstream.stop()
        raise
    client = gw.client()
    stream = None
    try:
        client.initialize()
        assert "live__grow" in client.tool_names()
        assert "live__sprout" not in client.tool_names()
        stream = NotificationStream(client)
        assert (stream.content_type or "").startswith("text/event-stream"), stream.content_type
        wait_until(lambda: gw.metrics().sum("sluice_notification_streams") >= 1, 10,
                   "sluice_notification_streams to count the open GET stream")

        grown = client.call_tool("live__grow", {"name": "sprout"})
        assert "result" in grown and not grown["result"].get("isError"), grown
        notice = stream.wait_for(LIST_CHANGED, 30)
        assert notice.get("jsonrpc") == "2.0" and "id" not in notice, notice

        assert "live__sprout" in client.tool_names(), "the new tool is not listed after list_changed"
        called = client.call_tool("live__sprout")
        assert called["result"]["content"][0]["text"] == "grown sprout", called
    finally:
        if stream:
            stream.close()
        client.close()
        gw.stop()
        if upstream:
            upstream.stop()


def test_raw_get_stream_hears_server_added_by_sighup(e2e_tmp):
    """A server added by SIGHUP: the open GET stream carries list_changed, then the new
    server's tools are listed and callable."""
    tmp = e2e_tmp / "notify-reload"
    gw = Gateway(tmp, {"live": stdio_live()}, name="sluice-notify-reload")
    client = gw.client()
    stream = None
    try:
        client.initialize()
        assert not any(n.startswith("py__") for n in client.tool_names())
        stream = NotificationStream(client)
        before = len(stream.messages)

        config = copy.deepcopy(gw.config)
        config["mcp"]["servers"].append({"name": "py", **stdio_py()})
        gw.reload(config)
        stream.wait_for(LIST_CHANGED, 30, after=before)

        assert "py__add" in client.tool_names(), "the added server's tools are not listed after list_changed"
        added = client.call_tool("py__add", {"a": 2, "b": 3})
        assert added["result"]["structuredContent"] == {"result": 5}, added
    finally:
        if stream:
            stream.close()
        client.close()
        gw.stop()


def test_sdk_client_hears_list_changed(e2e_tmp):
    """The official Python SDK client (which opens the GET stream itself after initialize)
    receives list_changed through its message handler for both causes."""
    from mcp import types

    tmp = e2e_tmp / "notify-sdk"
    gw = Gateway(tmp, {"live": stdio_live(tmp / "live-record.txt")}, name="sluice-notify-sdk")
    seen: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, types.ServerNotification):
            message = message.root if hasattr(message, "root") else message
        method = getattr(message, "method", None)
        if method:
            seen.append(method)

    async def wait_seen(count: int, what: str) -> None:
        with anyio.fail_after(30):
            while seen.count(LIST_CHANGED) < count:
                await anyio.sleep(0.1)

    async def scenario() -> tuple[set[str], set[str]]:
        from mcp import ClientSession
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {gw.key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
            async with streamable_http_client(gw.url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1], message_handler=on_message) as session:
                    await session.initialize()
                    # The SDK opens its GET stream in the background: wait until Sluice counts it.
                    with anyio.fail_after(15):
                        while gw.metrics().sum("sluice_notification_streams") < 1:
                            await anyio.sleep(0.1)
                    await session.call_tool("live__grow", {"name": "bud"})
                    await wait_seen(1, "list_changed after live__grow")
                    after_grow = {t.name for t in (await session.list_tools()).tools}

                    config = copy.deepcopy(gw.config)
                    config["mcp"]["servers"].append({"name": "py", **stdio_py()})
                    await anyio.to_thread.run_sync(gw.reload, config)
                    await wait_seen(2, "list_changed after SIGHUP")
                    after_reload = {t.name for t in (await session.list_tools()).tools}
                    return after_grow, after_reload

    try:
        after_grow, after_reload = anyio.run(scenario)
        assert "live__bud" in after_grow, sorted(after_grow)
        assert "py__add" in after_reload, sorted(after_reload)
    finally:
        gw.stop()


def test_resource_subscription_updates_reach_the_get_stream(e2e_tmp):
    """resources/subscribe to a namespaced URI of server-everything (stdio), then start its
    simulated updates: notifications/resources/updated arrives on the subscriber's GET stream,
    with the URI namespaced as the client knows it."""
    from harness import stdio_everything

    tmp = e2e_tmp / "notify-subscribe"
    gw = Gateway(tmp, {"ev": stdio_everything()}, name="sluice-notify-subscribe")
    client = gw.client()
    stream = None
    try:
        client.initialize()
        _, listed = client.request("resources/list")
        uris = [r["uri"] for r in listed["result"]["resources"]]
        static = [u for u in uris if "demo://resource/static/document/" in u]
        assert static, f"no static document resource listed: {uris}"
        uri = static[0]
        assert uri.startswith("ev+"), uri
        stream = NotificationStream(client)

        _, subscribed = client.request("resources/subscribe", {"uri": uri})
        assert "result" in subscribed, subscribed
        toggled = client.call_tool("ev__toggle-subscriber-updates")
        assert "result" in toggled, toggled
        updated = stream.wait_for("notifications/resources/updated", 30)
        assert updated["params"]["uri"] == uri, updated

        client.call_tool("ev__toggle-subscriber-updates")  # stop the simulated updates
        _, unsubscribed = client.request("resources/unsubscribe", {"uri": uri})
        assert "result" in unsubscribed, unsubscribed
    finally:
        if stream:
            stream.close()
        client.close()
        gw.stop()
