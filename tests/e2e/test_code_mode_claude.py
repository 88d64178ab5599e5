"""Code Mode with the real Claude Code: one scripted agent turn through Sluice's /mcp.

The real Claude Code CLI (tests/node_modules) runs offline with Sluice as its MCP server under a
key in Code Mode, so it sees three tools: search_tools, get_tool_stubs and run_script. Its
model is tests/fixtures/scripted_anthropic.py (the Anthropic Messages wire format, streamed),
playing an agent's turn step by step:

    search_tools             find the tools that add numbers; the answer carries the Python
                             stubs of the best matches
    run_script               a script calling two tools of two servers, the second with the
                             first's answer: server-everything's get-sum (ev.get_sum) and the
                             Python fixture's add (py.add)
    final text               quotes the script's result, read from the run_script tool_result

The test checks what Claude Code showed the model (only the three meta-tools, offered up front
even with tool search on, since Sluice lists them with `_meta["anthropic/alwaysLoad"]`), what
came back at each step (search lines with stubs, the computed value), what Claude Code printed
(the final answer with the value), and Sluice's audit log (run_script and its two tool calls,
children of the run, under the Code Mode key). Both ways Claude Code offers MCP tools are
played: its default tool search and ENABLE_TOOL_SEARCH=false.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from harness import TESTS, Gateway, run_in_group, stdio_everything, stdio_py, wait_until
from test_claude_code import LEAKY_NAMES, LEAKY_PREFIXES, claude_argv

sys.path.insert(0, str(TESTS / "fixtures"))
from scripted_anthropic import (  # noqa: E402
    Call,
    ScriptedAnthropic,
    Step,
    deferred_tools,
    last_result_text,
    offered_tools,
    result_text,
    results_for,
)

CODER_KEY_NAME = "coder"
CODER_KEY = "coder-key-0123456789abcdef"
SERVER = "sluice"
PREFIX = f"mcp__{SERVER}__"
SEARCH, STUBS, RUN = (f"{PREFIX}search_tools", f"{PREFIX}get_tool_stubs", f"{PREFIX}run_script")
META_TOOLS = {SEARCH, STUBS, RUN}
CLAUDE_TIMEOUT = 90


def audit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def code_gateway(tmp_path_factory) -> Iterator[Gateway]:
    """Sluice (plain HTTP) fronting server-everything (prefix `ev`) and the Python fixture server
    (`py`), with a key in Code Mode granted every tool."""
    tmp = tmp_path_factory.mktemp("sluice-code-mode-claude")
    gw = Gateway(
        tmp,
        {"everything": {**stdio_everything(), "prefix": "ev"}, "py": stdio_py()},
        name="sluice-code-mode",
        keys=[{"name": CODER_KEY_NAME, "key": CODER_KEY, "tools": ["*"], "code_mode": True}],
    )
    yield gw
    gw.stop()


def claude_env(home: Path, api: str, tool_search: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES) and k not in LEAKY_NAMES}
    env.update({
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": api,
        "ANTHROPIC_API_KEY": "sk-ant-e2e-dummy-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "NO_COLOR": "1",
    })
    if not tool_search:
        env["ENABLE_TOOL_SEARCH"] = "false"
    return env


def agent_script(tool_search: bool, a: int, b: int, c: int) -> list:
    """The steps of the turn: the script adds a + b on server-everything, then (that sum) + c on
    the Python server, and returns both."""
    script = (
        "import re\n"
        f"text = ev.get_sum(a={a}, b={b})\n"
        "first = int(float(re.findall(r'-?[0-9.]+', text)[-1].rstrip('.')))\n"
        f"second = py.add(a=first, b={c})['result']\n"
        "print('get_sum said:', text)\n"
        "result = {'first': first, 'total': second}\n"
    )

    def final(body: dict) -> Step:
        # The model's answer quotes the script's result as run_script returned it.
        text = last_result_text(body, RUN)
        match = re.search(r"result = (\{.*\})", text)
        total = json.loads(match.group(1))["total"] if match else f"(no result in {text!r})"
        return Step(text=f"CODE-MODE-ANSWER total={total}")

    # The meta-tools are loaded up front even with tool search on (`anthropic/alwaysLoad`), and
    # search answers with the stubs of its best matches: three requests, no ToolSearch and no
    # get_tool_stubs.
    return [
        Step("Searching for tools that add numbers.", [Call(SEARCH, {"query": "add sum two numbers", "limit": 5})]),
        Step("Running a script that calls both.", [Call(RUN, {"script": script})]),
        final,
    ]


@pytest.mark.parametrize("tool_search", [True, False], ids=["tool-search", "tools-up-front"])
def test_claude_code_runs_a_code_mode_turn(code_gateway, tmp_path, tool_search):
    rng = random.Random()
    a, b, c = rng.randint(1000, 9999), rng.randint(1000, 9999), rng.randint(100000, 999999)
    first, total = a + b, a + b + c
    home, cwd = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    cwd.mkdir()
    audit_before = len(audit(code_gateway.audit_path))
    config = {"mcpServers": {SERVER: {"type": "http", "url": code_gateway.url,
                                      "headers": {"Authorization": f"Bearer {CODER_KEY}"}}}}

    with ScriptedAnthropic(agent_script(tool_search, a, b, c)) as fake:
        done = run_in_group(
            [*claude_argv(), "-p", f"Add {a} and {b} with one tool, then add {c} with another, and report the total.",
             "--mcp-config", json.dumps(config), "--strict-mcp-config", "--allowedTools", f"mcp__{SERVER}"],
            CLAUDE_TIMEOUT, "claude -p (Code Mode turn)", cwd=cwd, env=claude_env(home, fake.base_url, tool_search),
        )
        main = fake.main_requests()
        played = [step for _, step in fake.played]
    context = (
        f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr[-3000:]}\n"
        f"steps played: {played}\ngateway log:\n{code_gateway.log(30)}"
    )
    steps = 3
    assert len(main) >= steps and played[-1] == steps - 1, f"the scripted turn did not finish:\n{context}"
    last = main[-1]

    # What the model was shown of Sluice: the three meta-tools, never the catalog's tools.
    sluice_tools = set()
    for body in main:
        sluice_tools |= {n for n in offered_tools(body) + deferred_tools(body) if n.startswith(PREFIX)}
    assert sluice_tools == META_TOOLS, sorted(sluice_tools)
    # Up front in both modes: with tool search on, `anthropic/alwaysLoad` keeps them out of it.
    assert META_TOOLS <= set(offered_tools(main[0])), (offered_tools(main[0]), deferred_tools(main[0]))
    assert not META_TOOLS & set(deferred_tools(main[0])), deferred_tools(main[0])

    # Each step's tool_result, as Claude Code passed it back to the model.
    found = results_for(last, SEARCH)
    assert found and not found[0].get("is_error"), found
    lines = result_text(found[0])
    assert re.search(r"^ev\.get_sum — ev__get-sum — ", lines, re.M), lines
    assert re.search(r"^py\.add — py__add — ", lines, re.M), lines
    assert "def get_sum(a: float, b: float)" in lines and "def add(a: int, b: int)" in lines, lines
    runs = results_for(last, RUN)
    assert runs and not runs[0].get("is_error"), runs
    ran = result_text(runs[0])
    assert f"get_sum said: The sum of {a} and {b} is {first}." in ran, ran
    assert f'result = {{"first": {first}, "total": {total}}}' in ran, ran

    # Claude Code printed the model's final answer, built from that result.
    assert done.returncode == 0, context
    assert f"CODE-MODE-ANSWER total={total}" in done.stdout, context

    # Sluice ran the script's two calls under the Code Mode key, as children of the run.
    def audited():
        records = audit(code_gateway.audit_path)[audit_before:]
        return records if any(r.get("tool") == "run_script" for r in records) else None

    records = wait_until(audited, 10, "the audit log to record run_script")
    by_tool = {}
    for record in records:
        by_tool.setdefault(record.get("tool"), []).append(record)
    assert [r["status"] for r in by_tool.get("search_tools", [])] == ["ok"], records
    assert "get_tool_stubs" not in by_tool, records
    [run] = by_tool["run_script"]
    assert run["status"] == "ok" and run["key"] == CODER_KEY_NAME, run
    for tool, server in (("ev__get-sum", "everything"), ("py__add", "py")):
        [child] = by_tool.get(tool, [None])
        assert child, f"no audit record of {tool}: {records}"
        assert child["parent"] == run["request_id"] and child["server"] == server, child
        assert child["status"] == "ok" and child["key"] == CODER_KEY_NAME, child
    assert code_gateway.alive()
