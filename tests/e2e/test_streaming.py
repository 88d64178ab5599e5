"""server-everything behind Sluice, as a Streamable HTTP upstream and as a legacy HTTP+SSE
upstream, driven by the official Python SDK client with sampling and elicitation callbacks
(issue 14): resources, prompts, progress of a long-running operation, an elicitation and a
sampling request all work through the gateway."""

from __future__ import annotations

from typing import Iterator

import anyio
import pytest

from harness import (
    EverythingHttp,
    EverythingSse,
    Gateway,
    http_upstream,
    sdk_http_session_with,
    sse_upstream,
)

PREFIX = "ev"
SAMPLED_TEXT = "sampled answer from the e2e client 7f3a"
ELICITED_NAME = "Ada Lovelace e2e"


@pytest.fixture(scope="module", params=["http", "sse", "sse-found-by-probe"])
def everything_gateway(request, e2e_tmp) -> Iterator[Gateway]:
    """A Sluice fronting a fresh server-everything over the parametrized upstream transport;
    `sse-found-by-probe` configures the SSE server as `http:` and lets Sluice fall back to the
    HTTP+SSE transport when the POST is refused (issue 15)."""
    tmp = e2e_tmp / f"streaming-{request.param}"
    tmp.mkdir(parents=True, exist_ok=True)
    if request.param == "http":
        upstream = EverythingHttp(tmp, name="everything-http-streaming")
        spec = http_upstream(upstream.url)
    elif request.param == "sse":
        upstream = EverythingSse(tmp, name="everything-sse-streaming")
        spec = sse_upstream(upstream.url)
    else:
        upstream = EverythingSse(tmp, name="everything-sse-probed")
        spec = http_upstream(upstream.url)
    try:
        gw = Gateway(tmp, {PREFIX: {**spec, "request_timeout": "60s"}}, name=f"sluice-streaming-{request.param}")
    except BaseException:
        upstream.stop()
        raise
    yield gw
    gw.stop()
    upstream.stop()


def test_http_server_that_refuses_posts_is_spoken_to_over_sse(everything_gateway, request):
    """Only an `http:` server that refuses the POST is probed for the HTTP+SSE transport."""
    probed = "probe" in request.node.callspec.id
    log = everything_gateway.log()
    assert ("upstream speaks the HTTP+SSE transport" in log) == probed, log[-2000:]


def text_of(result) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def sampling_callback(context, params):
    from mcp import types

    sampling_requests.append(params)
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLED_TEXT),
        model="e2e-test-model",
        stop_reason="endTurn",
    )


async def elicitation_callback(context, params):
    from mcp import types

    elicitation_requests.append(params)
    return types.ElicitResult(action="accept", content={"name": ELICITED_NAME, "check": True})


sampling_requests: list = []
elicitation_requests: list = []


def run(gw: Gateway, scenario):
    """Run `scenario(session)` with an SDK session to `gw` that has both callbacks."""

    async def main():
        with anyio.fail_after(120):
            async with sdk_http_session_with(
                gw.url, gw.key, sampling_callback=sampling_callback, elicitation_callback=elicitation_callback
            ) as session:
                return await scenario(session)

    return anyio.run(main)


def test_resources_list_and_read(everything_gateway):
    async def scenario(session):
        listed = (await session.list_resources()).resources
        templates = (await session.list_resource_templates()).resource_templates
        assert listed, "resources/list is empty"
        first = listed[0]
        read = await session.read_resource(str(first.uri))
        dynamic = await session.read_resource(f"{PREFIX}+demo://resource/dynamic/text/1")
        return listed, templates, first, read, dynamic

    listed, templates, first, read, dynamic = run(everything_gateway, scenario)
    uris = [str(r.uri) for r in listed]
    assert all(u.startswith(f"{PREFIX}+") for u in uris), f"resource URIs not namespaced: {uris}"
    assert any("demo://resource/static/document/" in u for u in uris), uris
    assert read.contents, f"resources/read {first.uri}: no contents"
    assert any(getattr(c, "text", None) or getattr(c, "blob", None) for c in read.contents), read
    template_uris = [t.uri_template for t in templates]
    assert f"{PREFIX}+demo://resource/dynamic/text/{{resourceId}}" in template_uris, template_uris
    assert dynamic.contents and "1" in (dynamic.contents[0].text or ""), dynamic
    # The contents name the URI the client asked for (namespaced), not the upstream's own.
    assert str(dynamic.contents[0].uri) == f"{PREFIX}+demo://resource/dynamic/text/1", dynamic.contents[0].uri


def test_prompts_list_and_get(everything_gateway):
    async def scenario(session):
        prompts = (await session.list_prompts()).prompts
        simple = await session.get_prompt(f"{PREFIX}__simple-prompt")
        args = await session.get_prompt(f"{PREFIX}__args-prompt", {"city": "Lyon", "state": "Rhone"})
        return prompts, simple, args

    prompts, simple, args = run(everything_gateway, scenario)
    names = {p.name for p in prompts}
    assert {f"{PREFIX}__simple-prompt", f"{PREFIX}__args-prompt"} <= names, sorted(names)
    assert simple.messages, simple
    texts = " ".join(getattr(m.content, "text", "") for m in args.messages)
    assert "Lyon, Rhone" in texts, texts


def test_long_running_operation_reports_progress(everything_gateway):
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value, total, message):
        progress.append((value, total))

    async def scenario(session):
        return await session.call_tool(
            f"{PREFIX}__trigger-long-running-operation", {"duration": 2, "steps": 4}, progress_callback=on_progress
        )

    result = run(everything_gateway, scenario)
    assert not result.is_error, result
    assert "Long running operation completed" in text_of(result), text_of(result)
    assert [p for p, _ in progress] == [1, 2, 3, 4], f"progress seen by the client: {progress}"
    assert all(total == 4 for _, total in progress), progress


def test_elicitation_answer_reaches_the_tool(everything_gateway):
    elicitation_requests.clear()

    async def scenario(session):
        tools = {t.name for t in (await session.list_tools()).tools}
        assert f"{PREFIX}__trigger-elicitation-request" in tools, (
            f"server-everything did not register its elicitation tool behind Sluice: {sorted(tools)}")
        return await session.call_tool(f"{PREFIX}__trigger-elicitation-request", {})

    result = run(everything_gateway, scenario)
    assert len(elicitation_requests) == 1, elicitation_requests
    assert not result.is_error, result
    assert ELICITED_NAME in text_of(result), text_of(result)


def test_sampling_answer_reaches_the_tool(everything_gateway):
    sampling_requests.clear()

    async def scenario(session):
        tools = {t.name for t in (await session.list_tools()).tools}
        assert f"{PREFIX}__trigger-sampling-request" in tools, (
            f"server-everything did not register its sampling tool behind Sluice: {sorted(tools)}")
        return await session.call_tool(f"{PREFIX}__trigger-sampling-request", {"prompt": "say hi", "maxTokens": 20})

    result = run(everything_gateway, scenario)
    assert len(sampling_requests) == 1, sampling_requests
    assert "say hi" in sampling_requests[0].messages[0].content.text
    assert not result.is_error, result
    assert SAMPLED_TEXT in text_of(result), text_of(result)


# ------------------------------------------------ the relay itself, with an upstream that always asks
#
# server-everything registers its elicitation and sampling tools only when *its* client (Sluice)
# declared those capabilities. The Python fixture's `ask` and `sample` tools send the requests
# whatever was declared, so these tests exercise Sluice's relay on their own.


@pytest.fixture(scope="module", params=["stdio", "http", "sse"])
def live_gateway(request, e2e_tmp) -> Iterator[Gateway]:
    """A Sluice fronting the live fixture over the parametrized upstream transport."""
    from harness import LiveHttp, LiveSse, stdio_live

    tmp = e2e_tmp / f"streaming-live-{request.param}"
    tmp.mkdir(parents=True, exist_ok=True)
    record = tmp / "live-record.txt"
    upstream = None
    if request.param == "stdio":
        spec = stdio_live(record)
    elif request.param == "http":
        upstream = LiveHttp(tmp, record_file=record)
        spec = http_upstream(upstream.url)
    else:
        upstream = LiveSse(tmp, record_file=record)
        spec = sse_upstream(upstream.url)
    try:
        gw = Gateway(tmp, {"live": spec}, name=f"sluice-streaming-live-{request.param}")
    except BaseException:
        if upstream:
            upstream.stop()
        raise
    yield gw
    gw.stop()
    if upstream:
        upstream.stop()


def test_relayed_elicitation(live_gateway):
    elicitation_requests.clear()

    async def scenario(session):
        return await session.call_tool("live__ask", {"question": "Who are you?"})

    result = run(live_gateway, scenario)
    assert len(elicitation_requests) == 1 and elicitation_requests[0].message == "Who are you?", elicitation_requests
    assert text_of(result) == f"accept:{ELICITED_NAME}", result


def test_relayed_sampling(live_gateway):
    sampling_requests.clear()

    async def scenario(session):
        return await session.call_tool("live__sample", {"prompt": "complete me"})

    result = run(live_gateway, scenario)
    assert len(sampling_requests) == 1 and sampling_requests[0].messages[0].content.text == "complete me"
    assert text_of(result) == f"sampled:{SAMPLED_TEXT}", result


def test_client_without_capability_gets_an_error_not_a_hang(live_gateway):
    """A raw client that declared no capabilities: the upstream's elicitation is refused by
    Sluice, and the call ends (with the tool's error) instead of hanging."""
    import httpx

    client = live_gateway.client()
    client.http = httpx.Client(timeout=httpx.Timeout(10, read=60))
    try:
        client.initialize()
        response, message = client.request("tools/call", {"name": "live__ask", "arguments": {"question": "hello?"}})
        assert response.status_code == 200, response.text
        # No elicitation/create may reach a client that did not declare elicitation.
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert "elicitation/create" not in response.text, response.text
        outcome = message.get("error") or message["result"]
        assert "error" in message or message["result"].get("isError"), f"the refused elicitation did not fail the call: {message}"
        print(f"outcome without the capability: {outcome}")
    finally:
        client.close()
