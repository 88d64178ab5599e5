"""Claude Code with Sluice as both its model API and its MCP server: one scripted agent turn.

The real Claude Code CLI (tests/node_modules) runs offline in print mode with
`ANTHROPIC_BASE_URL` pointing at Sluice (plain HTTP) and Sluice's virtual key as its API key
(`ANTHROPIC_API_KEY`, sent as `x-api-key`, or `ANTHROPIC_AUTH_TOKEN`, sent as
`Authorization: Bearer`), and with Sluice added as its MCP server (`claude mcp add --transport
http ... --header "Authorization: Bearer <the same key>"`). Sluice forwards the model traffic to
its provider `anthropic-up`: tests/fixtures/scripted_anthropic.py, the fake Messages API, which
plays the turn

    (ToolSearch select:mcp__sluice__everything__echo)   with Claude Code's default tool search
    mcp__sluice__everything__echo {"message": token}     Claude Code calls it on Sluice's /mcp
    final text quoting the echo's tool_result

The test checks that the turn worked both ways (Claude Code printed the token, which only the
tool result carried), that the provider only ever saw its own credential and never the virtual
key, and that Sluice's audit log links the tool call to the model response that asked for it
(`llm_request_id`, `tool_use_id`) and holds its result. It is played with Claude Code's tool
search on and off, with the key as `x-api-key` and as a bearer token, and once with a model
stream that stays open after its tool_use block (Claude Code runs the tool before the stream
ends, so Sluice must remember the tool use as soon as the block is complete).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import TESTS, Gateway, run_in_group, stdio_everything, wait_until
from test_claude_code import LEAKY_NAMES, LEAKY_PREFIXES, claude_argv

sys.path.insert(0, str(TESTS / "fixtures"))
from scripted_anthropic import (  # noqa: E402
    Call,
    ScriptedAnthropic,
    Step,
    last_result_text,
    offered_tools,
    result_text,
    results_for,
    tool_uses,
)

KEY_NAME = "cc"
VIRTUAL_KEY = "sk-sluice-cc-virtual-0123456789abcdef"
PROVIDER = "anthropic-up"
PROVIDER_SECRET = "sk-ant-provider-secret"
SERVER = "sluice"
ECHO_TOOL = f"mcp__{SERVER}__everything__echo"
CATALOG_ECHO = "everything__echo"
CLAUDE_TIMEOUT = 90


class RecordingScripted(ScriptedAnthropic):
    """ScriptedAnthropic that records every header, credentials included (the fixture drops
    `x-api-key` and `authorization` from its records): `headers` keeps the last value of each
    name, `header_list` every (name, value) pair as received."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        base = self.server.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def _record(self, body: Any) -> None:
                self.owner.record({
                    "time": time.time(),
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "header_list": [(k.lower(), v) for k, v in self.headers.items()],
                    "body": body,
                })

            def _messages(self, body: dict) -> None:
                pause = self.owner.pause_before_end
                if not (pause and body.get("stream")):
                    return super()._messages(body)
                plain = self.wfile  # the handler serves every request of a keep-alive connection
                self.wfile = _PausingWriter(plain, pause)
                try:
                    super()._messages(body)
                finally:
                    self.wfile = plain

        self.server.RequestHandlerClass = Handler
        #: Seconds to wait, in a streamed answer, before sending `message_delta` (the tool_use
        #: blocks are complete by then: Claude Code may already run them).
        self.pause_before_end = 0.0


class _PausingWriter:
    """A handler's wfile that sleeps before writing the chunk holding `message_delta`."""

    def __init__(self, inner: Any, pause: float):
        self.inner, self.pause = inner, pause

    def write(self, data: bytes) -> Any:
        if b"event: message_delta" in data:
            self.inner.flush()
            time.sleep(self.pause)
        return self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def audit(path: Path) -> list[dict]:
    """The audit log's records (a line still being written is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def turn(tool_search: bool, token: str) -> list:
    """The scripted turn: (ToolSearch,) the echo call, the final answer quoting its result."""

    def final(body: dict) -> Step:
        # Quote the echo's tool_result as Claude Code passed it back.
        return Step(text=f"FINAL[{last_result_text(body, ECHO_TOOL)}]")

    steps: list = [Step("Calling the echo tool.", [Call(ECHO_TOOL, {"message": token})]), final]
    if tool_search:
        steps.insert(0, Step("Loading the echo tool.", [Call("ToolSearch", {"query": f"select:{ECHO_TOOL}"})]))
    return steps


@pytest.fixture
def fake() -> Iterator[RecordingScripted]:
    server = RecordingScripted([])
    with server:
        yield server


@pytest.fixture
def gateway(tmp_path, fake) -> Iterator[Gateway]:
    """Sluice fronting stdio server-everything and the fake provider, with the virtual key."""
    gw = Gateway(
        tmp_path / "gateway",
        {"everything": stdio_everything()},
        name="sluice-llm-claude",
        keys=[{"name": KEY_NAME, "key": VIRTUAL_KEY, "tools": ["*"], "models": ["*"]}],
        top={
            "providers": [{"name": PROVIDER, "kind": "anthropic", "base_url": fake.base_url,
                           "api_key": PROVIDER_SECRET}],
            "routes": [{"models": ["*"], "targets": [{"provider": PROVIDER}]}],
            "state": {"path": str(tmp_path / "gateway" / "state.db")},
            "audit": {"include_results": True},
        },
    )
    yield gw
    gw.stop()


def claude_env(home: Path, base_url: str, tool_search: bool, auth: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES) and k not in LEAKY_NAMES}
    env.pop("ENABLE_TOOL_SEARCH", None)
    env.update({
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "NO_COLOR": "1",
    })
    # x-api-key: ANTHROPIC_API_KEY; Authorization: Bearer: ANTHROPIC_AUTH_TOKEN.
    env["ANTHROPIC_API_KEY" if auth == "x-api-key" else "ANTHROPIC_AUTH_TOKEN"] = VIRTUAL_KEY
    if not tool_search:
        env["ENABLE_TOOL_SEARCH"] = "false"
    return env


@pytest.mark.parametrize("tool_search,auth,pause", [
    pytest.param(True, "x-api-key", 0.0, id="tool-search-x-api-key"),
    pytest.param(True, "bearer", 0.0, id="tool-search-bearer"),
    pytest.param(False, "x-api-key", 0.0, id="tools-up-front-x-api-key"),
    pytest.param(False, "bearer", 0.0, id="tools-up-front-bearer"),
    # The model's stream stays open a while after the tool_use block is complete, as the real
    # API's may (message_delta and message_stop come later): Claude Code runs the tool at once,
    # so the tools/call reaches Sluice before the LLM call has ended.
    pytest.param(False, "x-api-key", 0.5, id="stream-ends-after-the-tool-call"),
])
def test_claude_code_turn_through_sluice(gateway, fake, tmp_path, tool_search, auth, pause):
    token = f"tok-{secrets.token_hex(8)}"
    fake.steps = turn(tool_search, token)
    fake.pause_before_end = pause
    home, cwd = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    cwd.mkdir()
    base_url = f"http://127.0.0.1:{gateway.port}"
    env = claude_env(home, base_url, tool_search, auth)

    added = run_in_group(
        [*claude_argv(), "mcp", "add", "--transport", "http", "--scope", "user", SERVER, gateway.url,
         "--header", f"Authorization: Bearer {VIRTUAL_KEY}"],
        CLAUDE_TIMEOUT, "claude mcp add", cwd=cwd, env=env,
    )
    assert added.returncode == 0 and f"Added HTTP MCP server {SERVER}" in added.stdout, (
        f"claude mcp add failed ({added.returncode}):\n{added.stdout}\n{added.stderr}"
    )

    done = run_in_group(
        [*claude_argv(), "-p", "Call the echo tool with a message of your choice and quote its answer.",
         "--allowedTools", ECHO_TOOL],
        CLAUDE_TIMEOUT, "claude -p (turn through Sluice)", cwd=cwd, env=env,
    )
    requests = list(fake.requests)
    main = fake.main_requests()
    played = [step for _, step in fake.played]
    context = (
        f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr[-3000:]}\n"
        f"steps played: {played}\nrequests to the fake: {[(r['method'], r['path']) for r in requests]}\n"
        f"gateway log:\n{gateway.log(40)}"
    )

    # 1. The turn worked through Sluice both ways: the final answer quotes the echo's result.
    steps = 3 if tool_search else 2
    assert main and played and played[-1] == steps - 1, f"the scripted turn did not finish:\n{context}"
    if tool_search:
        assert ECHO_TOOL not in offered_tools(main[0]), "tool search on, yet the echo tool came up front"
    else:
        assert ECHO_TOOL in offered_tools(main[0]), offered_tools(main[0])
    last = main[-1]
    [echo_use] = [u for u in tool_uses(last) if u.get("name") == ECHO_TOOL]
    assert echo_use["input"] == {"message": token}, echo_use
    echoed = results_for(last, ECHO_TOOL)
    assert echoed and not echoed[0].get("is_error"), echoed
    assert f"Echo: {token}" in result_text(echoed[0]), echoed
    assert done.returncode == 0, context
    assert f"FINAL[Echo: {token}]" in done.stdout, context
    # The fake issued the echo call under this id (and Claude Code sent it back unchanged).
    issued = [call_id for call_id, step in fake._issued.items() if step == steps - 2]
    assert issued == [echo_use["id"]], (issued, echo_use)
    tool_use_id = echo_use["id"]

    # 2. The provider saw its own credential on every request, never the virtual key.
    assert requests, context
    for request in requests:
        where = f"{request['method']} {request['path']}"
        assert request["headers"].get("x-api-key") == PROVIDER_SECRET, (where, request["headers"])
        for name, value in request["header_list"]:
            assert VIRTUAL_KEY not in value, f"{where}: header {name} carries the virtual key"
        assert "authorization" not in request["headers"], (where, request["headers"])
        assert VIRTUAL_KEY not in json.dumps(request["body"]), f"{where}: the body carries the virtual key"

    # 3. The audit log: LLM records under the key, and the echo call linked to the model
    #    response that asked for it, with its result.
    def linked() -> tuple[list[dict], dict] | None:
        records = audit(gateway.audit_path)
        llm = [r for r in records if str(r.get("method", "")).startswith("llm/")]
        calls = [r for r in records if r.get("method") == "tools/call" and r.get("tool") == CATALOG_ECHO]
        messages = [r for r in llm if r.get("method") == "llm/messages"]
        asking = [r for r in llm if any(u.get("id") == tool_use_id for u in r.get("tool_uses") or [])]
        # The record of the turn's last model call may be flushed after Claude Code exits.
        return (llm, calls[-1]) if calls and asking and len(messages) >= len(main) else None

    llm, call = wait_until(linked, 10, "the audit log to record the turn's model calls and the echo call")
    for record in llm:
        assert record["key"] == KEY_NAME, record
        assert record.get("provider") == PROVIDER, record
        assert record.get("status") == "ok", record
    messages = [r for r in llm if r["method"] == "llm/messages"]
    [asking] = [r for r in messages if any(u.get("id") == tool_use_id for u in r.get("tool_uses") or [])]
    assert {"id": tool_use_id, "name": ECHO_TOOL} in asking["tool_uses"], asking
    assert asking["http_status"] == 200 and isinstance(asking["request_id"], str), asking
    assert len({r["request_id"] for r in llm}) == len(llm), "LLM request ids are not unique"

    assert call["key"] == KEY_NAME and call["status"] == "ok" and call["server"] == "everything", call
    assert call.get("llm_request_id") == asking["request_id"], (
        f"the echo call is not linked to the model response that asked for it "
        f"(tool call record at {call.get('time')}, LLM record at {asking.get('time')}, "
        f"LLM upstream_ms {asking.get('upstream_ms')}; a tools/call arriving before the LLM call "
        f"has ended is not linked if Sluice remembers tool uses only when the call ends):\n"
        f"tools/call record: {call}\nLLM record: {asking}"
    )
    assert call.get("tool_use_id") == tool_use_id, call
    assert token in json.dumps(call.get("result")), call
    assert gateway.alive()
