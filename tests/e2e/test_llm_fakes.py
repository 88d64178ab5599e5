"""The fake LLM providers (tests/fixtures/fake_llm.py) speak the real wire formats.

No Sluice here: the official clients (`anthropic`, `openai`, boto3's `bedrock-runtime`) talk
straight to the fake. If they work unmodified, the fake is a fair stand-in for the providers in
test_llm.py, and its faults surface as the SDKs' own typed errors.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import httpx
import openai
import pytest
from botocore.eventstream import EventStreamBuffer

from harness import PYTHON, TESTS

sys.path.insert(0, str(TESTS / "fixtures"))
from fake_llm import (  # noqa: E402
    DEFAULT_ANTHROPIC_KEY,
    DEFAULT_AWS_ACCESS_KEY_ID,
    DEFAULT_AWS_REGION,
    DEFAULT_AWS_SECRET_ACCESS_KEY,
    DEFAULT_AZURE_KEY,
    DEFAULT_OPENAI_KEY,
    DEFAULT_VERTEX_TOKEN,
    FakeLlm,
    anthropic_credential,
    decode_event_stream,
    event_stream_frame,
    input_tokens,
)

PROMPT = "Say hello to the tests"
MESSAGES = [{"role": "user", "content": PROMPT}]
CLAUDE = "claude-sonnet-4-6"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
VERTEX_MODEL = "claude-sonnet-4@20250514"
WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                        "parameters": WEATHER_TOOL["input_schema"]}}


@pytest.fixture
def fake():
    with FakeLlm() as server:
        yield server


def anthropic_client(fake: FakeLlm, key: str = DEFAULT_ANTHROPIC_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key=key, max_retries=0, timeout=20)


def openai_client(fake: FakeLlm, key: str = DEFAULT_OPENAI_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def bedrock_client(fake: FakeLlm, secret: str = DEFAULT_AWS_SECRET_ACCESS_KEY) -> anthropic.AnthropicBedrock:
    return anthropic.AnthropicBedrock(aws_access_key=DEFAULT_AWS_ACCESS_KEY_ID, aws_secret_key=secret,
                                      aws_region=DEFAULT_AWS_REGION, base_url=fake.base_url, max_retries=0, timeout=20)


def boto_bedrock(fake: FakeLlm, secret: str = DEFAULT_AWS_SECRET_ACCESS_KEY):
    return boto3.client(
        "bedrock-runtime", endpoint_url=fake.base_url, region_name=DEFAULT_AWS_REGION,
        aws_access_key_id=DEFAULT_AWS_ACCESS_KEY_ID, aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def vertex_client(fake: FakeLlm, token: str = DEFAULT_VERTEX_TOKEN) -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(region="us-east5", project_id="test-project", access_token=token,
                                     base_url=f"{fake.base_url}/v1", max_retries=0, timeout=20)


def text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_messages_json(fake):
    message = anthropic_client(fake).messages.create(model=CLAUDE, max_tokens=100, messages=MESSAGES)
    assert text_of(message) == f"Hello from anthropic ({CLAUDE})"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == input_tokens([PROMPT])
    assert message.usage.output_tokens == 7
    [request] = fake.of("anthropic")
    assert request["path"] == "/v1/messages" and request["status"] == 200
    assert anthropic_credential(request["headers"]) == DEFAULT_ANTHROPIC_KEY
    assert request["headers"]["anthropic-version"]
    assert request["body"]["messages"] == MESSAGES


def test_anthropic_messages_stream(fake):
    client = anthropic_client(fake)
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(pieces) > 1, "the text should arrive in several deltas"
    assert "".join(pieces) == f"Hello from anthropic ({CLAUDE})" == text_of(message)
    assert message.usage.output_tokens == 7
    assert message.usage.input_tokens == input_tokens([PROMPT])
    assert fake.of("anthropic")[0]["body"]["stream"] is True


def test_anthropic_tool_use_stream_and_round_trip(fake):
    client = anthropic_client(fake)
    ask = [{"role": "user", "content": 'Weather? CALL get_weather {"city": "Paris"}'}]
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=ask, tools=[WEATHER_TOOL]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    follow = ask + [{"role": "assistant", "content": [b.model_dump() for b in message.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    final = client.messages.create(model=CLAUDE, max_tokens=100, messages=follow, tools=[WEATHER_TOOL])
    assert text_of(final) == f"Hello from anthropic ({CLAUDE}); tool result: sunny"


def test_anthropic_count_tokens_and_beta_header(fake):
    client = anthropic_client(fake)
    count = client.messages.count_tokens(model=CLAUDE, messages=MESSAGES, system="Be brief")
    assert count.input_tokens == input_tokens(["Be brief", PROMPT])
    client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES,
                           extra_headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"})
    assert fake.requests[-1]["headers"]["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"


def test_anthropic_refuses_wrong_key_and_bad_bodies(fake):
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic_client(fake, "sk-ant-wrong").messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        httpx_json(fake, "/v1/messages", {"model": CLAUDE, "messages": MESSAGES},
                   {"x-api-key": DEFAULT_ANTHROPIC_KEY, "anthropic-version": "2023-06-01"})
    with pytest.raises(anthropic.BadRequestError, match="role"):
        anthropic_client(fake).messages.create(model=CLAUDE, max_tokens=10,
                                               messages=[{"role": "system", "content": "x"}, *MESSAGES])
    with pytest.raises(anthropic.BadRequestError, match="Extra inputs are not permitted"):
        anthropic_client(fake).messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES,
                                               extra_body={"frequency_penalty": 0.5})
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: top_k"):
        openai_client(fake).chat.completions.create(model="gpt-4.1", messages=MESSAGES, extra_body={"top_k": 5})
    with pytest.raises(openai.BadRequestError, match="Invalid value: 'tool_result'"):
        openai_client(fake).chat.completions.create(model="gpt-4.1", messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "y"}]}])


def httpx_json(fake: FakeLlm, path: str, body: dict, headers: dict) -> dict:
    """POST `body` raw, raising the Anthropic SDK's error class for the status (for checks the
    SDK itself would refuse to send)."""
    response = httpx.post(fake.base_url + path, json=body, headers=headers, timeout=10)
    if response.status_code == 400:
        raise anthropic.BadRequestError(response.json()["error"]["message"], response=response, body=response.json())
    return response.json()


def test_anthropic_faults_are_typed_errors(fake):
    client = anthropic_client(fake)
    fake.fail_next("anthropic", 429, retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    assert e.value.response.headers["retry-after"] == "7"
    assert e.value.body["error"]["type"] == "rate_limit_error"
    fake.fail_next("anthropic", 529)
    with pytest.raises(anthropic.OverloadedError) as e:
        client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    assert e.value.body["error"]["type"] == "overloaded_error"
    fake.fail_next("anthropic", 500, n=2)
    for _ in range(2):
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)
    # The faults are used up: the next request succeeds.
    assert text_of(client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)).startswith("Hello")
    assert [r["status"] for r in fake.requests] == [429, 529, 500, 500, 200]


def test_anthropic_stream_broken_midway(fake):
    fake.break_stream_next("anthropic", after=4)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as e:
        with anthropic_client(fake).messages.stream(model=CLAUDE, max_tokens=10, messages=MESSAGES) as stream:
            for event in stream:
                seen.append(event.type)
    assert "overloaded_error" in str(e.value)
    assert "message_start" in seen and "message_stop" not in seen


def test_delay_makes_a_client_time_out(fake):
    fake.delay_next("anthropic", 5)
    client = anthropic.Anthropic(base_url=fake.base_url, api_key=DEFAULT_ANTHROPIC_KEY, max_retries=0, timeout=0.5)
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=CLAUDE, max_tokens=10, messages=MESSAGES)


# --------------------------------------------------------------------------- OpenAI and Azure


def test_openai_chat_json(fake):
    completion = openai_client(fake).chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from openai (gpt-4.1)"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == input_tokens([PROMPT])
    assert completion.usage.completion_tokens == 7
    [request] = fake.of("openai")
    assert request["headers"]["authorization"] == f"Bearer {DEFAULT_OPENAI_KEY}"


def test_openai_chat_stream_with_usage(fake):
    stream = openai_client(fake).chat.completions.create(
        model="gpt-4.1", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from openai (gpt-4.1)"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].usage.prompt_tokens == input_tokens([PROMPT])


def test_openai_tool_call_stream_and_round_trip(fake):
    client = openai_client(fake)
    ask = [{"role": "user", "content": 'CALL get_weather {"city": "Oslo"}'}]
    with client.chat.completions.stream(model="gpt-4.1", messages=ask, tools=[OPENAI_WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                    {"role": "tool", "tool_call_id": call.id, "content": "rainy"}]
    answer = client.chat.completions.create(model="gpt-4.1", messages=follow, tools=[OPENAI_WEATHER_TOOL])
    assert answer.choices[0].message.content == "Hello from openai (gpt-4.1); tool result: rainy"


def test_openai_faults(fake):
    client = openai_client(fake)
    with pytest.raises(openai.AuthenticationError) as e:
        openai_client(fake, "sk-wrong").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert e.value.code == "invalid_api_key"
    fake.fail_next("openai", 429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert e.value.response.headers["retry-after"] == "3" and e.value.code == "rate_limit_exceeded"
    fake.fail_next("openai", 503)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    fake.break_stream_next("openai", after=2)
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError, Exception)) as e:
        list(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))
    assert not isinstance(e.value, AssertionError)
    assert fake.requests[-1].get("aborted")
    fake.break_stream_next("openai", after=2, mode="error")
    with pytest.raises(openai.APIError, match="server had an error"):
        list(client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True))


def test_azure_openai_json_and_stream(fake):
    client = openai.AzureOpenAI(azure_endpoint=fake.base_url, api_version="2024-10-21", api_key=DEFAULT_AZURE_KEY,
                                max_retries=0, timeout=20)
    completion = client.chat.completions.create(model="prod-gpt4o", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from azure (prod-gpt4o)"
    stream = client.chat.completions.create(model="prod-gpt4o", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from azure (prod-gpt4o)"
    assert chunks[-1].usage.completion_tokens == 7
    request = fake.of("azure")[0]
    assert request["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
    assert request["query"]["api-version"] == "2024-10-21"
    assert request["headers"]["api-key"] == DEFAULT_AZURE_KEY
    bad = openai.AzureOpenAI(azure_endpoint=fake.base_url, api_version="2024-10-21", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="prod-gpt4o", messages=MESSAGES)


# --------------------------------------------------------------------------- Bedrock


def test_event_stream_frames_decode_with_botocore():
    frame = event_stream_frame({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                               b'{"bytes":"e30="}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame + frame)
    messages = list(buffer)
    assert len(messages) == 2
    assert messages[0].headers[":event-type"] == "chunk" and messages[0].payload == b'{"bytes":"e30="}'
    assert decode_event_stream(frame)[0][0][":message-type"] == "event"


def test_bedrock_invoke_with_anthropic_sdk(fake):
    message = bedrock_client(fake).messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES)
    assert text_of(message) == f"Hello from bedrock ({BEDROCK_MODEL})"
    assert message.usage.output_tokens == 7
    [request] = fake.of("bedrock")
    assert request["path"] == f"/model/{BEDROCK_MODEL}/invoke" and request["status"] == 200
    assert "model" not in request["body"] and request["body"]["anthropic_version"]
    assert request["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={DEFAULT_AWS_ACCESS_KEY_ID}/")


def test_bedrock_stream_with_anthropic_sdk(fake):
    with bedrock_client(fake).messages.stream(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(pieces) == f"Hello from bedrock ({BEDROCK_MODEL})"
    assert message.usage.output_tokens == 7 and message.usage.input_tokens == input_tokens([PROMPT])
    assert fake.of("bedrock")[0]["path"].endswith("/invoke-with-response-stream")


def test_bedrock_with_boto3(fake):
    client = boto_bedrock(fake)
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": MESSAGES})
    answer = json.loads(client.invoke_model(modelId=BEDROCK_MODEL, body=body)["body"].read())
    assert answer["content"][0]["text"] == f"Hello from bedrock ({BEDROCK_MODEL})"
    # boto3 percent-encodes the ':' of the model id: the signature must still match.
    assert "%3A" in fake.of("bedrock")[0]["raw_path"]
    response = client.invoke_model_with_response_stream(modelId=BEDROCK_MODEL, body=body)
    events = [json.loads(base64.b64decode(e["chunk"]["bytes"])) if "bytes" in e["chunk"] and isinstance(e["chunk"]["bytes"], str)
              else json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == \
        f"Hello from bedrock ({BEDROCK_MODEL})"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 7


def test_bedrock_refuses_a_wrong_signature(fake):
    with pytest.raises(anthropic.PermissionDeniedError, match="signature we calculated does not match"):
        bedrock_client(fake, secret="not-the-secret").messages.create(model=BEDROCK_MODEL, max_tokens=10, messages=MESSAGES)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        boto_bedrock(fake, secret="not-the-secret").invoke_model(
            modelId=BEDROCK_MODEL, body=json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MESSAGES}))
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert all(r["status"] == 403 for r in fake.of("bedrock"))


def test_bedrock_signature_covers_the_body(fake):
    """A request signed by botocore passes; the same signature over another body does not."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{fake.base_url}/model/{BEDROCK_MODEL}/invoke"
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MESSAGES}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(DEFAULT_AWS_ACCESS_KEY_ID, DEFAULT_AWS_SECRET_ACCESS_KEY), "bedrock",
              DEFAULT_AWS_REGION).add_auth(request)
    headers = dict(request.headers.items())
    assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 200
    tampered = body.replace(b'"max_tokens": 5', b'"max_tokens": 6')
    refused = httpx.post(url, content=tampered, headers=headers, timeout=10)
    assert refused.status_code == 403
    assert refused.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")


def test_bedrock_faults(fake):
    client = boto_bedrock(fake)
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": MESSAGES})
    fake.fail_next("bedrock", 429)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.invoke_model(modelId=BEDROCK_MODEL, body=body)
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    fake.fail_next("bedrock", 429)
    with pytest.raises(anthropic.RateLimitError, match="Too many requests"):
        bedrock_client(fake).messages.create(model=BEDROCK_MODEL, max_tokens=10, messages=MESSAGES)
    fake.break_stream_next("bedrock", after=3)
    response = client.invoke_model_with_response_stream(modelId=BEDROCK_MODEL, body=body)
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        list(response["body"])
    assert e.value.response["Error"]["Code"] == "modelStreamErrorException"
    fake.break_stream_next("bedrock", after=3)
    with pytest.raises(anthropic.APIStatusError, match="modelStreamErrorException"):
        with bedrock_client(fake).messages.stream(model=BEDROCK_MODEL, max_tokens=10, messages=MESSAGES) as stream:
            list(stream)


# --------------------------------------------------------------------------- Vertex


def test_vertex_raw_predict_and_stream(fake):
    client = vertex_client(fake)
    message = client.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES)
    assert text_of(message) == f"Hello from vertex ({VERTEX_MODEL})"
    with client.messages.stream(model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert text_of(final) == f"Hello from vertex ({VERTEX_MODEL})" and final.usage.output_tokens == 7
    first, second = fake.of("vertex")
    prefix = "/v1/projects/test-project/locations/us-east5/publishers/anthropic/models/"
    assert first["path"] == f"{prefix}{VERTEX_MODEL}:rawPredict"
    assert second["path"] == f"{prefix}{VERTEX_MODEL}:streamRawPredict"
    assert first["headers"]["authorization"] == f"Bearer {DEFAULT_VERTEX_TOKEN}"
    assert "model" not in first["body"] and first["body"]["anthropic_version"]
    count = client.messages.count_tokens(model=VERTEX_MODEL, messages=MESSAGES)
    assert count.input_tokens == input_tokens([PROMPT])


def test_vertex_faults(fake):
    with pytest.raises(anthropic.AuthenticationError):
        vertex_client(fake, token="ya29.wrong").messages.create(model=VERTEX_MODEL, max_tokens=10, messages=MESSAGES)
    fake.fail_next("vertex", 529)
    with pytest.raises(anthropic.OverloadedError):
        vertex_client(fake).messages.create(model=VERTEX_MODEL, max_tokens=10, messages=MESSAGES)
    fake.fail_next("vertex", 429, retry_after=2)
    with pytest.raises(anthropic.RateLimitError):
        vertex_client(fake).messages.create(model=VERTEX_MODEL, max_tokens=10, messages=MESSAGES)


# --------------------------------------------------------------------------- as a program


def test_runs_as_a_program():
    proc = subprocess.Popen([str(PYTHON), str(TESTS / "fixtures" / "fake_llm.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=DEFAULT_OPENAI_KEY, max_retries=0, timeout=10)
        assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content == \
            "Hello from openai (gpt-4o)"
    finally:
        proc.kill()
        proc.wait(5)


def test_accepts_chunked_request_bodies_and_keep_alive(fake):
    """A proxy may forward a body chunked; one connection carries several requests."""
    body = json.dumps({"model": "gpt-4.1", "messages": MESSAGES}).encode()
    with httpx.Client(base_url=fake.base_url, timeout=10) as http:
        for _ in range(2):
            response = http.post("/v1/chat/completions", content=iter([body[:10], body[10:]]),
                                 headers={"authorization": f"Bearer {DEFAULT_OPENAI_KEY}",
                                          "content-type": "application/json"})
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "Hello from openai (gpt-4.1)"
    assert all("chunked" in r["headers"].get("transfer-encoding", "") for r in fake.requests)
