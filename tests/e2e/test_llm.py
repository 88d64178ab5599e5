"""Sluice's LLM routes end to end: `/v1/messages`, `/v1/messages/count_tokens`,
`/v1/chat/completions` and `/v1/models`, driven by the official `anthropic` and `openai` SDKs,
served by the fake providers of tests/fixtures/fake_llm.py (Anthropic, OpenAI, Azure OpenAI,
Bedrock with SigV4, Vertex) in their real wire formats. Nothing inside Sluice is mocked.

Every test checks, on the way out, that no provider saw a virtual key and that each saw its own
credential (`llm_support.check_forwarding`).

Most tests share one gateway (`llm`); those that script faults, budgets or cooldowns get their
own (`fresh`), so that failures counted by one test cannot cool a target down for another.
"""

from __future__ import annotations

import json
import math
import socket

import anthropic
import httpx
import openai
import pytest

from harness import free_port
from llm_support import (
    ALICE_KEY,
    AZURE_API_VERSION,
    AZURE_DEPLOYMENT,
    BACKUP_MODEL,
    BEDROCK_ALIAS,
    BEDROCK_MODEL,
    BOB_KEY,
    CAROL_KEY,
    CLAUDE,
    DEFAULT_ANTHROPIC_KEY,
    DEFAULT_OPENAI_KEY,
    GPT,
    MESSAGES,
    OPENAI_WEATHER_TOOL,
    OUTPUT_TOKENS,
    PROMPT,
    PROMPT_TOKENS,
    STANDARD_KEYS,
    VERTEX_ALIAS,
    VERTEX_MODEL,
    VERTEX_PROJECT,
    VERTEX_REGION,
    WEATHER_TOOL,
    AZURE_ALIAS,
    FakeLlm,
    base_url,
    check_forwarding,
    claude_cost,
    hello,
    input_tokens,
    key,
    kill,
    llm_records,
    only_request,
    sluice_anthropic,
    sluice_openai,
    start_gateway,
    text_of,
    unquoted_path,
    wait_record,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One fake and one gateway (standard providers, routes and keys) for the module."""
    tmp = tmp_path_factory.mktemp("llm-shared")
    with FakeLlm() as fake:
        gateway = start_gateway(tmp, fake, extra_routes=[
            {"models": ["team-*"], "headers": {"x-team": "blue"}, "targets": [{"provider": "backup"}]},
            {"models": ["vip-*"], "keys": ["carol"], "targets": [{"provider": "backup"}]},
        ], keys=STANDARD_KEYS + [key("zed", "sk-sluice-zed-0004", ["*"])])
        try:
            yield gateway, fake
        finally:
            kill(gateway)


@pytest.fixture
def llm(shared):
    """The shared gateway and fake, with the fake's records and faults cleared."""
    gateway, fake = shared
    fake.clear()
    fake.clear_faults()
    yield gateway, fake
    check_forwarding(fake)


@pytest.fixture
def fresh(tmp_path):
    """A fake of its own, and a function starting gateways (`start(**llm_top options)`) on it."""
    with FakeLlm() as fake:
        started = []

        def start(**kwargs):
            gateway = start_gateway(tmp_path / f"gw{len(started)}", fake, **kwargs)
            started.append(gateway)
            return gateway

        try:
            yield fake, start
        finally:
            for gateway in started:
                kill(gateway)
    check_forwarding(fake)


def anthropic_stream(client: anthropic.Anthropic, model: str = CLAUDE, messages=MESSAGES, **kwargs):
    """Stream a Messages request; (text pieces, final message, response headers, event types)."""
    with client.messages.stream(model=model, max_tokens=200, messages=messages, **kwargs) as stream:
        events = []
        pieces = []
        for event in stream:
            events.append(event.type)
            if event.type == "text":
                pieces.append(event.text)
        message = stream.get_final_message()
        headers = stream.response.headers
    return pieces, message, headers, events


def openai_stream(client: openai.OpenAI, model: str, messages=MESSAGES, **kwargs):
    """Stream a chat completion with usage; (chunks, text, response headers)."""
    with client.chat.completions.with_streaming_response.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs) as response:
        headers = response.headers
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text, headers


def served_by(headers, provider: str, *models: str) -> None:
    """The response names who served it (`x-sluice-provider`) and the model used there
    (`x-sluice-model`, one of `models`)."""
    assert headers.get("x-sluice-provider") == provider, f"x-sluice-provider: {headers.get('x-sluice-provider')!r}"
    assert headers.get("x-sluice-model") in models, f"x-sluice-model: {headers.get('x-sluice-model')!r}"


# --------------------------------------------------------------------------- Anthropic clients, Anthropic provider


def test_anthropic_sdk_to_anthropic_json(llm):
    gateway, fake = llm
    raw = sluice_anthropic(gateway).messages.with_raw_response.create(model=CLAUDE, max_tokens=200, messages=MESSAGES)
    message = raw.parse()
    assert text_of(message) == hello("anthropic", CLAUDE)
    assert message.usage.input_tokens == PROMPT_TOKENS and message.usage.output_tokens == OUTPUT_TOKENS
    served_by(raw.headers, "primary", CLAUDE)
    request = only_request(fake, "anthropic")
    assert request["path"] == "/v1/messages"
    assert request["body"]["model"] == CLAUDE and request["body"]["messages"] == MESSAGES
    assert request["headers"].get("anthropic-version")


def test_anthropic_sdk_to_anthropic_stream(llm):
    gateway, fake = llm
    pieces, message, headers, events = anthropic_stream(sluice_anthropic(gateway))
    assert len(pieces) > 1 and "".join(pieces) == hello("anthropic", CLAUDE) == text_of(message)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == OUTPUT_TOKENS and message.usage.input_tokens == PROMPT_TOKENS
    served_by(headers, "primary", CLAUDE)
    assert only_request(fake, "anthropic")["body"]["stream"] is True


def test_x_api_key_header_is_accepted(llm):
    gateway, fake = llm
    response = httpx.post(f"{base_url(gateway)}/v1/messages", timeout=30, json={
        "model": CLAUDE, "max_tokens": 50, "messages": MESSAGES,
    }, headers={"x-api-key": ALICE_KEY, "anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == hello("anthropic", CLAUDE)
    assert only_request(fake, "anthropic")["headers"]["anthropic-version"] == "2023-06-01"


def test_beta_query_and_anthropic_beta_header_pass_through(llm):
    gateway, fake = llm
    message = sluice_anthropic(gateway).beta.messages.create(
        model=CLAUDE, max_tokens=50, messages=MESSAGES, betas=["interleaved-thinking-2025-05-14"])
    assert text_of(message) == hello("anthropic", CLAUDE)
    request = only_request(fake, "anthropic")
    assert request["path"] == "/v1/messages"
    assert request["headers"].get("anthropic-beta") == "interleaved-thinking-2025-05-14"
    fake.clear()
    response = httpx.post(f"{base_url(gateway)}/v1/messages?beta=true", timeout=30, json={
        "model": CLAUDE, "max_tokens": 50, "messages": MESSAGES,
    }, headers={"authorization": f"Bearer {ALICE_KEY}", "anthropic-version": "2023-06-01",
                "anthropic-beta": "token-efficient-tools-2025-02-19,prompt-caching-2024-07-31"})
    assert response.status_code == 200, response.text
    request = only_request(fake, "anthropic")
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["headers"]["anthropic-beta"].replace(" ", "") == \
        "token-efficient-tools-2025-02-19,prompt-caching-2024-07-31"


# --------------------------------------------------------------------------- OpenAI clients


def test_openai_sdk_to_openai_json(llm):
    gateway, fake = llm
    raw = sluice_openai(gateway).chat.completions.with_raw_response.create(model=GPT, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == hello("openai", GPT)
    assert completion.usage.prompt_tokens == PROMPT_TOKENS and completion.usage.completion_tokens == OUTPUT_TOKENS
    served_by(raw.headers, "backup", GPT)
    request = only_request(fake, "openai")
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == GPT


def test_openai_sdk_to_openai_stream(llm):
    gateway, fake = llm
    chunks, text, headers = openai_stream(sluice_openai(gateway), GPT)
    assert text == hello("openai", GPT)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == OUTPUT_TOKENS
    served_by(headers, "backup", GPT)
    assert only_request(fake, "openai")["body"]["stream"] is True


def test_openai_sdk_to_claude_translated_stream(llm):
    gateway, fake = llm
    chunks, text, headers = openai_stream(sluice_openai(gateway), CLAUDE,
                                          messages=[{"role": "system", "content": "Be brief"}, *MESSAGES])
    assert text == hello("anthropic", CLAUDE)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None, "include_usage asked for a final usage chunk"
    assert usage.completion_tokens == OUTPUT_TOKENS
    assert usage.prompt_tokens == input_tokens(["Be brief", PROMPT])
    served_by(headers, "primary", CLAUDE)
    request = only_request(fake, "anthropic")
    assert request["path"] == "/v1/messages"
    body = request["body"]
    assert body["model"] == CLAUDE and body["stream"] is True and isinstance(body["max_tokens"], int)
    assert "Be brief" in json.dumps(body.get("system")), "the system message becomes Anthropic's `system`"
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_openai_sdk_to_claude_translated_json_with_tool_round_trip(llm):
    gateway, fake = llm
    client = sluice_openai(gateway)
    ask = [{"role": "user", "content": 'What is the weather? CALL get_weather {"city": "Paris"}'}]
    completion = client.chat.completions.create(model=CLAUDE, messages=ask, tools=[OPENAI_WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    request = only_request(fake, "anthropic")
    assert request["body"]["tools"][0]["name"] == "get_weather"
    assert request["body"]["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]
    # The tool's result goes back as an OpenAI `tool` message; the provider gets a tool_result.
    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = client.chat.completions.create(model=CLAUDE, messages=follow, tools=[OPENAI_WEATHER_TOOL])
    assert answer.choices[0].message.content == hello("anthropic", CLAUDE) + "; tool result: sunny"
    last = fake.of("anthropic")[-1]["body"]["messages"]
    assert any(b.get("type") == "tool_result" and b.get("tool_use_id") == call.id
               for m in last if isinstance(m["content"], list) for b in m["content"])


def test_anthropic_sdk_to_openai_provider_tool_stream(llm):
    gateway, fake = llm
    client = sluice_anthropic(gateway)
    ask = [{"role": "user", "content": 'CALL get_weather {"city": "Oslo"}'}]
    _, message, headers, _ = anthropic_stream(client, GPT, messages=ask, tools=[WEATHER_TOOL])
    served_by(headers, "backup", GPT)
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Oslo"}
    request = only_request(fake, "openai")
    assert request["body"]["tools"][0]["function"]["name"] == "get_weather"
    follow = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}]}]
    _, final, _, _ = anthropic_stream(client, GPT, messages=follow, tools=[WEATHER_TOOL])
    assert text_of(final) == hello("openai", GPT) + "; tool result: rainy"
    assert final.usage.output_tokens == OUTPUT_TOKENS


# --------------------------------------------------------------------------- Bedrock, Vertex, Azure


def test_bedrock_json(llm):
    gateway, fake = llm
    raw = sluice_anthropic(gateway).messages.with_raw_response.create(model=BEDROCK_ALIAS, max_tokens=100, messages=MESSAGES)
    message = raw.parse()
    assert text_of(message) == hello("bedrock", BEDROCK_MODEL)
    assert message.usage.output_tokens == OUTPUT_TOKENS and message.usage.input_tokens == PROMPT_TOKENS
    served_by(raw.headers, "bedrock", BEDROCK_MODEL)
    request = only_request(fake, "bedrock")
    assert request["status"] == 200, f"the fake refused the SigV4 signature: {request.get('refused')}"
    assert unquoted_path(request) == f"/model/{BEDROCK_MODEL}/invoke"
    assert request["body"]["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in request["body"] and "stream" not in request["body"]


def test_bedrock_stream(llm):
    gateway, fake = llm
    pieces, message, headers, _ = anthropic_stream(sluice_anthropic(gateway), BEDROCK_ALIAS)
    assert "".join(pieces) == hello("bedrock", BEDROCK_MODEL) == text_of(message)
    assert message.usage.output_tokens == OUTPUT_TOKENS and message.usage.input_tokens == PROMPT_TOKENS
    served_by(headers, "bedrock", BEDROCK_MODEL)
    request = only_request(fake, "bedrock")
    assert request["status"] == 200, f"the fake refused the SigV4 signature: {request.get('refused')}"
    assert unquoted_path(request) == f"/model/{BEDROCK_MODEL}/invoke-with-response-stream"


def test_openai_sdk_to_bedrock_stream(llm):
    gateway, fake = llm
    chunks, text, headers = openai_stream(sluice_openai(gateway), BEDROCK_ALIAS)
    assert text == hello("bedrock", BEDROCK_MODEL)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == OUTPUT_TOKENS
    served_by(headers, "bedrock", BEDROCK_MODEL)
    assert only_request(fake, "bedrock")["status"] == 200


def test_vertex_json_and_stream(llm):
    gateway, fake = llm
    client = sluice_anthropic(gateway)
    raw = client.messages.with_raw_response.create(model=VERTEX_ALIAS, max_tokens=100, messages=MESSAGES)
    assert text_of(raw.parse()) == hello("vertex", VERTEX_MODEL)
    served_by(raw.headers, "vertex", VERTEX_MODEL)
    pieces, message, headers, _ = anthropic_stream(client, VERTEX_ALIAS)
    assert "".join(pieces) == hello("vertex", VERTEX_MODEL) and message.usage.output_tokens == OUTPUT_TOKENS
    served_by(headers, "vertex", VERTEX_MODEL)
    first, second = fake.of("vertex")
    prefix = f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/anthropic/models/{VERTEX_MODEL}"
    assert unquoted_path(first) == f"{prefix}:rawPredict"
    assert unquoted_path(second) == f"{prefix}:streamRawPredict"
    for request in (first, second):
        assert request["status"] == 200
        assert request["body"]["anthropic_version"] == "vertex-2023-10-16" and "model" not in request["body"]


def test_azure_via_openai_sdk(llm):
    gateway, fake = llm
    client = sluice_openai(gateway)
    raw = client.chat.completions.with_raw_response.create(model=AZURE_ALIAS, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == hello("azure", AZURE_DEPLOYMENT)
    served_by(raw.headers, "azure", "gpt-4o", AZURE_DEPLOYMENT)
    chunks, text, _ = openai_stream(client, AZURE_ALIAS)
    assert text == hello("azure", AZURE_DEPLOYMENT)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == OUTPUT_TOKENS
    for request in fake.of("azure"):
        assert request["path"] == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
        assert request["query"].get("api-version") == AZURE_API_VERSION
        assert "authorization" not in request["headers"]
    assert len(fake.of()) == 2


def test_anthropic_sdk_to_azure_stream(llm):
    """Azure's stream starts with a chunk whose `choices` is empty (prompt filter results)."""
    gateway, fake = llm
    pieces, message, headers, _ = anthropic_stream(sluice_anthropic(gateway), AZURE_ALIAS)
    assert "".join(pieces) == hello("azure", AZURE_DEPLOYMENT) and message.usage.output_tokens == OUTPUT_TOKENS
    served_by(headers, "azure", "gpt-4o", AZURE_DEPLOYMENT)
    assert only_request(fake, "azure")["status"] == 200


# --------------------------------------------------------------------------- fallback and cooldown


def test_fallback_429_to_openai_streamed(fresh):
    """The acceptance test: primary answers 429; the Anthropic SDK (streaming) gets a valid
    Anthropic stream from the OpenAI backup."""
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 429, retry_after=1)
    pieces, message, headers, events = anthropic_stream(sluice_anthropic(gateway))
    assert "".join(pieces) == hello("openai", BACKUP_MODEL) == text_of(message)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    assert message.usage.output_tokens == OUTPUT_TOKENS and message.usage.input_tokens == PROMPT_TOKENS
    served_by(headers, "backup", BACKUP_MODEL)
    first, second = fake.of()
    assert first["kind"] == "anthropic" and first["status"] == 429
    assert second["kind"] == "openai" and second["path"] == "/v1/chat/completions"
    assert second["headers"]["authorization"] == f"Bearer {DEFAULT_OPENAI_KEY}"
    assert second["body"]["model"] == BACKUP_MODEL and second["body"]["stream"] is True
    assert second["body"]["messages"][-1]["content"] in (PROMPT, [{"type": "text", "text": PROMPT}])
    record = wait_record(gateway, lambda r: r["method"] == "llm/messages")
    assert record["provider"] == "backup" and record["provider_model"] == BACKUP_MODEL
    assert [(a["provider"], a.get("status")) for a in record["attempts"]] == [("primary", 429), ("backup", 200)]


def test_fallback_of_a_body_larger_than_pingoras_retry_buffer(fresh):
    """A request body over 64 KiB (Claude Code's are) cannot be replayed from Pingora's retry
    buffer: its attempts run as subrequests given the body Sluice kept. Primary 429, backup
    answers the whole body, streamed."""
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 429)
    filler = "lorem ipsum " * 8000  # about 96 KB
    big = [{"role": "user", "content": f"{filler}{PROMPT}"}]
    pieces, message, headers, events = anthropic_stream(sluice_anthropic(gateway), messages=big)
    assert "".join(pieces) == hello("openai", BACKUP_MODEL)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    served_by(headers, "backup", BACKUP_MODEL)
    first, second = fake.of()
    assert first["kind"] == "anthropic" and first["status"] == 429
    assert second["kind"] == "openai"
    sent = second["body"]["messages"][-1]["content"]
    sent = sent if isinstance(sent, str) else "".join(p["text"] for p in sent)
    assert sent == f"{filler}{PROMPT}", "the fallback got the whole body"


def test_fallback_529_json(fresh):
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 529)
    raw = sluice_anthropic(gateway).messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=MESSAGES)
    assert text_of(raw.parse()) == hello("openai", BACKUP_MODEL)
    served_by(raw.headers, "backup", BACKUP_MODEL)
    assert [(r["kind"], r["status"]) for r in fake.of()] == [("anthropic", 529), ("openai", 200)]


def test_fallback_500_openai_client(fresh):
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 500)
    chunks, text, headers = openai_stream(sluice_openai(gateway), CLAUDE)
    assert text == hello("openai", BACKUP_MODEL)
    served_by(headers, "backup", BACKUP_MODEL)
    assert [(r["kind"], r["status"]) for r in fake.of()] == [("anthropic", 500), ("openai", 200)]


def test_fallback_on_connect_error_and_timeout(fresh):
    fake, start = fresh
    dead = {"name": "dead", "kind": "anthropic", "base_url": f"http://127.0.0.1:{free_port()}",
            "api_key": DEFAULT_ANTHROPIC_KEY, "connect_timeout": "2s"}
    gateway = start(extra_providers=[dead], provider_overrides={"primary": {"timeout": "1s"}}, extra_routes=[
        {"models": ["claude-dead"], "targets": [{"provider": "dead"}, {"provider": "backup", "model": BACKUP_MODEL}]},
    ])
    client = sluice_anthropic(gateway)
    raw = client.messages.with_raw_response.create(model="claude-dead", max_tokens=50, messages=MESSAGES)
    assert text_of(raw.parse()) == hello("openai", BACKUP_MODEL)
    served_by(raw.headers, "backup", BACKUP_MODEL)
    assert [r["kind"] for r in fake.of()] == ["openai"]
    fake.clear()
    fake.delay_next("anthropic", 5)
    message = client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    assert text_of(message) == hello("openai", BACKUP_MODEL)
    assert [r["kind"] for r in fake.of()] == ["anthropic", "openai"]


def test_provider_by_host_name(fresh):
    """A provider named by host name (as real ones are) is looked up and served; the name is
    cached, so repeated requests keep working (`filters/src/llm/resolve.rs`)."""
    if socket.getaddrinfo("localhost", None)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    fake, start = fresh
    named = {"name": "named", "kind": "anthropic",
             "base_url": fake.base_url.replace("127.0.0.1", "localhost"),
             "api_key": DEFAULT_ANTHROPIC_KEY}
    assert "localhost" in named["base_url"]
    gateway = start(extra_providers=[named], extra_routes=[
        {"models": ["claude-named"], "targets": [{"provider": "named"}]},
    ])
    client = sluice_anthropic(gateway)
    for _ in range(3):
        raw = client.messages.with_raw_response.create(model="claude-named", max_tokens=50,
                                                       messages=MESSAGES)
        served_by(raw.headers, "named", "claude-named")
        assert text_of(raw.parse())
    assert [r["kind"] for r in fake.of()] == ["anthropic"] * 3


def test_all_targets_failing_anthropic_client(fresh):
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 503)
    fake.fail_next("openai", 429, retry_after=2)
    with pytest.raises(anthropic.RateLimitError) as e:
        sluice_anthropic(gateway).messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    body = e.value.body
    assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"], body
    assert [(r["kind"], r["status"]) for r in fake.of()] == [("anthropic", 503), ("openai", 429)]
    record = wait_record(gateway, lambda r: r["method"] == "llm/messages")
    assert record["status"] == "error" and record["http_status"] == 429
    assert [(a["provider"], a.get("status")) for a in record["attempts"]] == [("primary", 503), ("backup", 429)]


def test_all_targets_failing_openai_client(fresh):
    fake, start = fresh
    gateway = start()
    fake.fail_next("anthropic", 500)
    fake.fail_next("openai", 502)
    with pytest.raises(openai.InternalServerError) as e:
        sluice_openai(gateway).chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert e.value.status_code == 502
    error = e.value.body
    assert isinstance(error, dict) and error.get("message") and error.get("type"), e.value.body
    assert len(fake.of()) == 2


def test_max_attempts_bounds_fallback(fresh):
    fake, start = fresh
    gateway = start(extra_routes=[{"models": ["claude-once"], "max_attempts": 1, "targets": [
        {"provider": "primary", "model": CLAUDE}, {"provider": "backup", "model": BACKUP_MODEL}]}])
    fake.fail_next("anthropic", 429)
    with pytest.raises(anthropic.RateLimitError):
        sluice_anthropic(gateway).messages.create(model="claude-once", max_tokens=50, messages=MESSAGES)
    assert [r["kind"] for r in fake.of()] == ["anthropic"]


def test_failing_target_cools_down(fresh):
    fake, start = fresh
    gateway = start(llm={"failures_before_cooldown": 2, "cooldown": "60s"})
    client = sluice_anthropic(gateway)
    fake.fail_next("anthropic", 500, n=2)
    for _ in range(2):
        assert text_of(client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)) == \
            hello("openai", BACKUP_MODEL)
    assert [r["kind"] for r in fake.of()] == ["anthropic", "openai", "anthropic", "openai"]
    fake.clear()
    # Primary failed twice in a row: it is skipped while it cools down, although it would answer.
    message = client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    assert text_of(message) == hello("openai", BACKUP_MODEL)
    assert [r["kind"] for r in fake.of()] == ["openai"]
    # A route whose only target is cooling still uses it.
    fake.clear()
    fake.fail_next("openai", 500, n=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            sluice_openai(gateway).chat.completions.create(model=GPT, messages=MESSAGES)
    assert sluice_openai(gateway).chat.completions.create(model=GPT, messages=MESSAGES).choices[0].message.content \
        == hello("openai", GPT)


# --------------------------------------------------------------------------- errors in the middle of a stream


def test_mid_stream_error_reaches_anthropic_client(fresh):
    fake, start = fresh
    gateway = start()
    fake.break_stream_next("anthropic", after=4)
    events = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with sluice_anthropic(gateway).messages.stream(model=CLAUDE, max_tokens=50, messages=MESSAGES) as stream:
            for event in stream:
                events.append(event.type)
    assert "message_start" in events and "message_stop" not in events
    assert "overloaded" in str(e.value).lower()
    assert [r["kind"] for r in fake.of()] == ["anthropic"], "no fallback once bytes went to the client"


def test_mid_stream_abort_of_openai_provider_is_an_anthropic_error_event(fresh):
    """The OpenAI provider drops the connection mid-stream: the client's stream must end with
    an `error` event, never quietly (a few rounds: pooled and fresh provider connections)."""
    fake, start = fresh
    gateway = start()
    client = sluice_anthropic(gateway)
    for round_ in range(6):
        fake.break_stream_next("openai", after=3)
        events = []
        with pytest.raises(anthropic.APIStatusError):
            with client.messages.stream(model=GPT, max_tokens=50, messages=MESSAGES) as stream:
                for event in stream:
                    events.append(event.type)
            pytest.fail(f"round {round_}: the stream ended without an error event after {events}")
        assert "message_start" in events and "message_stop" not in events
    assert [r["kind"] for r in fake.of()] == ["openai"] * 6


def test_mid_stream_error_reaches_openai_client(fresh):
    fake, start = fresh
    gateway = start()
    fake.break_stream_next("anthropic", after=4)
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in sluice_openai(gateway).chat.completions.create(model=CLAUDE, messages=MESSAGES, stream=True):
            received.append(chunk)
    assert not isinstance(e.value, openai.APIConnectionError), f"the stream was cut, not ended by an error: {e.value!r}"
    assert received, "the chunks before the error reach the client"
    assert [r["kind"] for r in fake.of()] == ["anthropic"]


def test_mid_stream_bedrock_exception(fresh):
    fake, start = fresh
    gateway = start()
    fake.break_stream_next("bedrock", after=3)
    with pytest.raises(anthropic.APIStatusError):
        with sluice_anthropic(gateway).messages.stream(model=BEDROCK_ALIAS, max_tokens=50, messages=MESSAGES) as stream:
            for _ in stream:
                pass
    assert [r["kind"] for r in fake.of()] == ["bedrock"]


# --------------------------------------------------------------------------- keys, models, routes


def test_missing_or_invalid_key_is_401(llm):
    gateway, fake = llm
    with pytest.raises(anthropic.AuthenticationError) as e:
        sluice_anthropic(gateway, api_key="sk-sluice-nobody").messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    assert e.value.body["type"] == "error" and e.value.body["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as e:
        sluice_openai(gateway, api_key="sk-sluice-nobody").chat.completions.create(model=GPT, messages=MESSAGES)
    assert e.value.body.get("message")
    response = httpx.post(f"{base_url(gateway)}/v1/chat/completions", json={"model": GPT, "messages": MESSAGES}, timeout=10)
    assert response.status_code == 401 and response.json()["error"]["message"]
    response = httpx.post(f"{base_url(gateway)}/v1/messages", timeout=10,
                          json={"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES},
                          headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 401 and response.json()["type"] == "error"
    assert fake.of() == []


def test_model_not_allowed_for_key_is_403(llm):
    gateway, fake = llm
    before = len(llm_records(gateway))
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        sluice_anthropic(gateway, api_key=BOB_KEY).messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    assert e.value.body["type"] == "error" and CLAUDE in e.value.body["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        sluice_openai(gateway, api_key=BOB_KEY).chat.completions.create(model=BEDROCK_ALIAS, messages=MESSAGES)
    assert BEDROCK_ALIAS in e.value.body["message"] and e.value.body.get("type")
    assert fake.of() == []
    record = wait_record(gateway, lambda r: r["key"] == "bob" and r["model"] == CLAUDE, after=before)
    assert record["status"] == "denied" and record["http_status"] == 403


def test_unknown_model_is_404(llm):
    gateway, fake = llm
    with pytest.raises(anthropic.NotFoundError) as e:
        sluice_anthropic(gateway, api_key=CAROL_KEY).messages.create(model="mistral-large", max_tokens=10, messages=MESSAGES)
    assert "mistral-large" in e.value.body["error"]["message"]
    with pytest.raises(openai.NotFoundError) as e:
        sluice_openai(gateway, api_key=CAROL_KEY).chat.completions.create(model="mistral-large", messages=MESSAGES)
    assert "mistral-large" in e.value.body["message"]
    assert fake.of() == []


def test_routes_match_on_headers_and_keys(llm):
    gateway, fake = llm
    client = sluice_openai(gateway, api_key=CAROL_KEY)
    completion = client.chat.completions.create(model="team-x", messages=MESSAGES, extra_headers={"x-team": "blue"})
    assert completion.choices[0].message.content == hello("openai", "team-x")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="team-x", messages=MESSAGES, extra_headers={"x-team": "red"})
    assert client.chat.completions.create(model="vip-1", messages=MESSAGES).choices[0].message.content == \
        hello("openai", "vip-1")
    with pytest.raises(openai.NotFoundError):
        sluice_openai(gateway, api_key="sk-sluice-zed-0004").chat.completions.create(model="vip-1", messages=MESSAGES)
    assert [r["body"]["model"] for r in fake.of()] == ["team-x", "vip-1"]


def test_models_list(llm):
    gateway, fake = llm
    alice = {m.id: m for m in sluice_openai(gateway).models.list()}
    assert {BEDROCK_ALIAS, VERTEX_ALIAS, AZURE_ALIAS} <= set(alice), sorted(alice)
    assert all(m.object == "model" for m in alice.values())
    bob = {m.id for m in sluice_openai(gateway, api_key=BOB_KEY).models.list()}
    assert not bob & {BEDROCK_ALIAS, VERTEX_ALIAS, AZURE_ALIAS}, sorted(bob)
    raw = httpx.get(f"{base_url(gateway)}/v1/models", headers={"authorization": f"Bearer {ALICE_KEY}"}, timeout=10)
    assert raw.status_code == 200 and raw.json()["object"] == "list"
    page = sluice_anthropic(gateway).models.list()
    ids = {m.id for m in page.data}
    assert {BEDROCK_ALIAS, VERTEX_ALIAS, AZURE_ALIAS} <= ids
    assert all(m.type == "model" for m in page.data) and page.has_more is False
    assert fake.of() == []


def test_count_tokens(llm):
    gateway, fake = llm
    client = sluice_anthropic(gateway)
    count = client.messages.count_tokens(model=CLAUDE, messages=MESSAGES, system="Be brief")
    assert count.input_tokens == input_tokens(["Be brief", PROMPT]), "forwarded to the Anthropic provider"
    request = only_request(fake, "anthropic")
    assert request["path"] == "/v1/messages/count_tokens" and request["body"]["model"] == CLAUDE
    fake.clear()
    estimate = client.messages.count_tokens(model=BEDROCK_ALIAS, messages=MESSAGES)
    assert isinstance(estimate.input_tokens, int) and estimate.input_tokens > 0
    assert fake.of() == [], "no count_tokens on Bedrock: Sluice estimates"


# --------------------------------------------------------------------------- budgets and limits


def test_token_budget_refuses_and_survives_restart(fresh, tmp_path):
    fake, start = fresh
    state = tmp_path / "spend.db"
    keys = [key("dave", "sk-sluice-dave-0005", ["claude-*"], budget={"tokens_per_day": 10})]
    gateway = start(keys=keys, state_path=state)
    client = sluice_anthropic(gateway, api_key="sk-sluice-dave-0005")
    assert text_of(client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)) == hello("anthropic", CLAUDE)
    wait_record(gateway, lambda r: r["key"] == "dave" and r["status"] == "ok")
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    assert "tokens_per_day" in e.value.body["error"]["message"]
    assert len(fake.of()) == 1
    assert gateway.terminate() == 0
    again = start(keys=keys, state_path=state)
    with pytest.raises(anthropic.RateLimitError) as e:
        sluice_anthropic(again, api_key="sk-sluice-dave-0005").messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    assert "tokens_per_day" in e.value.body["error"]["message"]
    with pytest.raises(openai.RateLimitError) as e:
        sluice_openai(again, api_key="sk-sluice-dave-0005").chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert "tokens_per_day" in e.value.body["message"]
    assert len(fake.of()) == 1, "the spent key reached no provider after the restart"


def test_cost_and_monthly_budgets(fresh):
    fake, start = fresh
    one_request = claude_cost(PROMPT_TOKENS, OUTPUT_TOKENS)
    keys = [key("erin", "sk-sluice-erin-0006", ["claude-*"], budget={"cost_per_day": one_request / 2}),
            key("fred", "sk-sluice-fred-0007", ["claude-*"], budget={"tokens_per_month": 5})]
    gateway = start(keys=keys)
    for name, secret, budget in (("erin", "sk-sluice-erin-0006", "cost_per_day"),
                                 ("fred", "sk-sluice-fred-0007", "tokens_per_month")):
        client = sluice_openai(gateway, api_key=secret)
        chunks, text, _ = openai_stream(client, CLAUDE)  # streamed usage counts too
        assert text == hello("anthropic", CLAUDE)
        wait_record(gateway, lambda r: r["key"] == name and r["status"] == "ok")
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model=CLAUDE, messages=MESSAGES)
        assert budget in e.value.body["message"]
    record = wait_record(gateway, lambda r: r["key"] == "erin" and r["status"] == "ok")
    assert math.isclose(record["cost"], one_request, rel_tol=1e-6), record
    assert len(fake.of()) == 2


def test_token_rate_limit(fresh):
    fake, start = fresh
    keys = [key("gina", "sk-sluice-gina-0008", ["gpt-*"], rate_limit={"tokens_per_minute": 10})]
    gateway = start(keys=keys)
    client = sluice_openai(gateway, api_key="sk-sluice-gina-0008")
    assert client.chat.completions.create(model=GPT, messages=MESSAGES).choices[0].message.content == hello("openai", GPT)
    wait_record(gateway, lambda r: r["key"] == "gina" and r["status"] == "ok")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=GPT, messages=MESSAGES)
    assert "token" in e.value.body["message"].lower()
    assert len(fake.of()) == 1


# --------------------------------------------------------------------------- audit


def test_audit_records_llm_requests(llm):
    gateway, fake = llm
    before = len(llm_records(gateway))
    ask = [{"role": "user", "content": 'CALL get_weather {"city": "Rome"}'}]
    _, message, _, _ = anthropic_stream(sluice_anthropic(gateway), CLAUDE, messages=ask, tools=[WEATHER_TOOL])
    [use] = [b for b in message.content if b.type == "tool_use"]
    record = wait_record(gateway, lambda r: r["method"] == "llm/messages", after=before)
    expected_in = input_tokens([ask[0]["content"]])
    assert record["key"] == "alice" and record["model"] == CLAUDE
    assert record["provider"] == "primary" and record["provider_model"] == CLAUDE
    assert record["status"] == "ok" and record["http_status"] == 200 and record["stream"] is True
    assert record["input_tokens"] == expected_in and record["output_tokens"] == OUTPUT_TOKENS
    assert math.isclose(record["cost"], claude_cost(expected_in, OUTPUT_TOKENS), rel_tol=1e-6)
    assert [(a["provider"], a.get("status")) for a in record["attempts"]] == [("primary", 200)]
    assert record["tool_uses"] == [{"id": use.id, "name": "get_weather"}]
    assert isinstance(record["request_id"], str) and record["request_id"]
    sluice_openai(gateway).chat.completions.create(model=GPT, messages=MESSAGES)
    chat = wait_record(gateway, lambda r: r["method"] == "llm/chat_completions", after=before)
    assert chat["provider"] == "backup" and chat["stream"] is False and chat["cost"] == 0
    assert chat["input_tokens"] == PROMPT_TOKENS and chat["output_tokens"] == OUTPUT_TOKENS
    assert chat["request_id"] != record["request_id"]


def test_audit_records_locally_counted_tokens(fresh):
    fake, start = fresh
    gateway = start()
    estimate = sluice_anthropic(gateway).messages.count_tokens(model=BEDROCK_ALIAS, messages=MESSAGES)
    record = wait_record(gateway, lambda r: r["method"] == "llm/count_tokens")
    assert record["model"] == BEDROCK_ALIAS and record["key"] == "alice"
    assert record["status"] == "ok" and record["http_status"] == 200
    assert record["input_tokens"] in (0, estimate.input_tokens)
    assert fake.of() == []


def test_audit_records_budget_denials(fresh):
    fake, start = fresh
    gateway = start(keys=[key("hank", "sk-sluice-hank-0009", ["claude-*"], budget={"tokens_per_day": 10})])
    client = sluice_anthropic(gateway, api_key="sk-sluice-hank-0009")
    client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    wait_record(gateway, lambda r: r["method"] == "llm/messages" and r["status"] == "ok")
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=CLAUDE, max_tokens=50, messages=MESSAGES)
    denied = wait_record(gateway, lambda r: r["method"] == "llm/messages" and r["status"] != "ok")
    assert denied["status"] == "denied" and denied["http_status"] == 429 and denied["key"] == "hank"
    assert denied["attempts"] == [] and denied["model"] == CLAUDE
    assert len(fake.of()) == 1
