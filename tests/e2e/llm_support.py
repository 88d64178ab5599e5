"""Helpers of the LLM routing tests: a Sluice configured with the five fake providers of
tests/fixtures/fake_llm.py, clients of it (the official `anthropic` and `openai` SDKs), and
checks of what the providers saw and what the audit log says."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote

import anthropic
import openai

from harness import TESTS, Gateway, wait_until
from tls_support import audit_records

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
    input_tokens,
)

# Models the tests ask Sluice for, and what the providers are asked for in turn.
CLAUDE = "claude-sonnet-4-6"
BACKUP_MODEL = "gpt-4.1"
GPT = "gpt-4.1"
BEDROCK_ALIAS = "bedrock-claude"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
VERTEX_ALIAS = "vertex-claude"
VERTEX_MODEL = "claude-sonnet-4@20250514"
AZURE_ALIAS = "azure-gpt"
AZURE_MODEL = "gpt-4o"
AZURE_DEPLOYMENT = "prod-gpt4o"
VERTEX_PROJECT = "test-project"
VERTEX_REGION = "us-east5"
AZURE_API_VERSION = "2024-10-21"

PROMPT = "Say hello to the tests"
MESSAGES = [{"role": "user", "content": PROMPT}]
PROMPT_TOKENS = input_tokens([PROMPT])
OUTPUT_TOKENS = 7

# Prices of claude-* (per million tokens).
CLAUDE_INPUT_PRICE = 3.0
CLAUDE_OUTPUT_PRICE = 15.0

WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                        "parameters": WEATHER_TOOL["input_schema"]}}

# Virtual keys (what clients present to Sluice; no provider may ever see them).
ALICE_KEY = "sk-sluice-alice-0001"
BOB_KEY = "sk-sluice-bob-0002"
CAROL_KEY = "sk-sluice-carol-0003"
ALL_MODELS = ["claude-*", "gpt-*", BEDROCK_ALIAS, VERTEX_ALIAS, AZURE_ALIAS]
VIRTUAL_KEYS: set[str] = {ALICE_KEY, BOB_KEY, CAROL_KEY, "tester-secret-key-0001"}


def key(name: str, secret: str, models: list[str], **extra: Any) -> dict:
    """A key entry of the configuration (its secret is remembered as a virtual key)."""
    VIRTUAL_KEYS.add(secret)
    return {"name": name, "key": secret, "models": models, **extra}


STANDARD_KEYS = [
    key("alice", ALICE_KEY, ALL_MODELS),
    key("bob", BOB_KEY, ["gpt-*"]),
    key("carol", CAROL_KEY, ["*"]),
]


def providers(fake: FakeLlm) -> list[dict]:
    """The five providers, all served by `fake`."""
    return [
        {"name": "primary", "kind": "anthropic", "base_url": fake.base_url, "api_key": DEFAULT_ANTHROPIC_KEY},
        {"name": "backup", "kind": "openai", "base_url": f"{fake.base_url}/v1", "api_key": DEFAULT_OPENAI_KEY},
        {"name": "azure", "kind": "azure-openai", "base_url": fake.base_url, "api_key": DEFAULT_AZURE_KEY,
         "api_version": AZURE_API_VERSION, "deployments": {AZURE_MODEL: AZURE_DEPLOYMENT}},
        {"name": "bedrock", "kind": "bedrock", "base_url": fake.base_url, "region": DEFAULT_AWS_REGION,
         "access_key_id": DEFAULT_AWS_ACCESS_KEY_ID, "secret_access_key": DEFAULT_AWS_SECRET_ACCESS_KEY},
        {"name": "vertex", "kind": "vertex", "base_url": fake.base_url, "region": VERTEX_REGION,
         "project": VERTEX_PROJECT, "access_token": DEFAULT_VERTEX_TOKEN},
    ]


def standard_routes() -> list[dict]:
    return [
        {"models": ["claude-*"], "targets": [{"provider": "primary"}, {"provider": "backup", "model": BACKUP_MODEL}]},
        {"models": ["gpt-*"], "targets": [{"provider": "backup"}]},
        {"models": [BEDROCK_ALIAS], "targets": [{"provider": "bedrock", "model": BEDROCK_MODEL}]},
        {"models": [VERTEX_ALIAS], "targets": [{"provider": "vertex", "model": VERTEX_MODEL}]},
        {"models": [AZURE_ALIAS], "targets": [{"provider": "azure", "model": AZURE_MODEL}]},
    ]


def llm_top(fake: FakeLlm, tmp: Path, *, routes: list[dict] | None = None, extra_routes: list[dict] | None = None,
            extra_providers: list[dict] | None = None, provider_overrides: dict[str, dict] | None = None,
            llm: dict | None = None, state_path: Path | None = None) -> dict:
    """The LLM part of a Sluice configuration (for `Gateway(..., top=...)`). `extra_routes` go
    before the standard ones; `provider_overrides` merge into providers by name."""
    provider_list = providers(fake) + (extra_providers or [])
    for provider in provider_list:
        provider.update((provider_overrides or {}).get(provider["name"], {}))
    return {
        "providers": provider_list,
        "routes": (extra_routes or []) + (routes if routes is not None else standard_routes()),
        "prices": [{"model": "claude-*", "input_per_mtok": CLAUDE_INPUT_PRICE, "output_per_mtok": CLAUDE_OUTPUT_PRICE}],
        "state": {"path": str(state_path or (tmp / "state.db"))},
        "llm": {"cooldown": "30s", "failures_before_cooldown": 3, **(llm or {})},
        "audit": {"include_results": True, "max_value_bytes": 4096},
    }


def start_gateway(tmp: Path, fake: FakeLlm, keys: list[dict] | None = None, name: str = "sluice-llm",
                  **config: Any) -> Gateway:
    """A Sluice with no MCP server, the fake providers and `keys` (the standard ones unless
    given); `config` goes to `llm_top`."""
    return Gateway(tmp, servers={}, name=name, top=llm_top(fake, tmp, **config),
                   keys=STANDARD_KEYS if keys is None else keys)


def kill(gateway: Gateway) -> None:
    """Stop a gateway at once (SIGKILL: tests that do not need a graceful stop save its grace
    period)."""
    try:
        os.killpg(gateway.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    gateway.stop()


@contextmanager
def llm_gateway(tmp: Path, fake: FakeLlm, **kwargs: Any) -> Iterator[Gateway]:
    """`start_gateway`, killed on the way out; on the way out it also checks that no provider
    saw a virtual key and each saw its own credential."""
    gateway = start_gateway(tmp, fake, **kwargs)
    try:
        yield gateway
    finally:
        kill(gateway)
    check_forwarding(fake)


# --------------------------------------------------------------------------- clients


def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def sluice_anthropic(gateway: Gateway, api_key: str = ALICE_KEY, **kwargs: Any) -> anthropic.Anthropic:
    """The official Anthropic client pointed at Sluice (no retries: the tests count requests)."""
    return anthropic.Anthropic(base_url=base_url(gateway), api_key=api_key, max_retries=0,
                               timeout=kwargs.pop("timeout", 15), **kwargs)


def sluice_openai(gateway: Gateway, api_key: str = ALICE_KEY, **kwargs: Any) -> openai.OpenAI:
    """The official OpenAI client pointed at Sluice's `/v1`."""
    return openai.OpenAI(base_url=f"{base_url(gateway)}/v1", api_key=api_key, max_retries=0,
                         timeout=kwargs.pop("timeout", 15), **kwargs)


def text_of(message: Any) -> str:
    """The text blocks of an Anthropic message, joined."""
    return "".join(b.text for b in message.content if b.type == "text")


def hello(kind: str, model: str) -> str:
    """What the fake provider `kind` answers when asked for `model`."""
    return f"Hello from {kind} ({model})"


# --------------------------------------------------------------------------- what the providers saw


def _credential_ok(request: dict) -> bool:
    h = request["headers"]
    kind = request["kind"]
    if kind == "anthropic":
        return anthropic_credential(h) == DEFAULT_ANTHROPIC_KEY
    if kind == "openai":
        return h.get("authorization") == f"Bearer {DEFAULT_OPENAI_KEY}"
    if kind == "azure":
        return h.get("api-key") == DEFAULT_AZURE_KEY
    if kind == "bedrock":
        return h.get("authorization", "").startswith(f"AWS4-HMAC-SHA256 Credential={DEFAULT_AWS_ACCESS_KEY_ID}/") \
            and request.get("refused") is None
    if kind == "vertex":
        return h.get("authorization") == f"Bearer {DEFAULT_VERTEX_TOKEN}"
    return False


def check_forwarding(fake: FakeLlm) -> None:
    """No provider request carries a virtual key (in any header, the query or the body), and
    each carries its provider's own credential (for Bedrock: a valid SigV4 signature)."""
    for request in fake.of():
        seen = " ".join(f"{k}: {v}" for k, v in request["headers"].items()) + " " + request["raw_path"] \
            + " " + str(request["body"])
        leaked = [k for k in VIRTUAL_KEYS if k in seen]
        assert not leaked, f"a virtual key reached the provider: {leaked} in {request['kind']} {request['raw_path']}"
        assert _credential_ok(request), (
            f"{request['kind']} request {request['raw_path']} lacks its provider credential "
            f"(headers {sorted(request['headers'])}, refused {request.get('refused')})"
        )


def only_request(fake: FakeLlm, kind: str | None = None) -> dict:
    """The one request the fake got (of `kind`, and no other at all)."""
    requests = fake.of()
    assert len(requests) == 1, f"expected exactly one provider request, got {[(r['kind'], r['raw_path']) for r in requests]}"
    if kind:
        assert requests[0]["kind"] == kind, f"expected a {kind} request, got {requests[0]['kind']} {requests[0]['raw_path']}"
    return requests[0]


def unquoted_path(request: dict) -> str:
    return unquote(request["path"])


# --------------------------------------------------------------------------- audit


def llm_records(gateway: Gateway) -> list[dict]:
    """The audit records of LLM requests, in order."""
    return [r for r in audit_records(gateway.audit_path) if str(r.get("method", "")).startswith("llm/")]


def wait_record(gateway: Gateway, predicate: Callable[[dict], bool], after: int = 0, timeout: float = 5) -> dict:
    """The first LLM audit record at index >= `after` that satisfies `predicate`."""

    def found() -> dict | None:
        for record in llm_records(gateway)[after:]:
            if predicate(record):
                return record
        return None

    try:
        return wait_until(found, timeout, "the LLM audit record")
    except TimeoutError:
        raise AssertionError(f"no matching LLM audit record; the records: {llm_records(gateway)[after:]}") from None


def claude_cost(input_tokens_: int, output_tokens_: int) -> float:
    return (input_tokens_ * CLAUDE_INPUT_PRICE + output_tokens_ * CLAUDE_OUTPUT_PRICE) / 1_000_000
