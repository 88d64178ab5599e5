"""The tasks extension (`io.modelcontextprotocol/tasks`, MCP 2026-07-28) through Sluice (issue
15): relayed between a client and an upstream that both declare it; the task id the client sees
is sealed by Sluice for the server and the key, so it routes from any instance and no other key
can use it. The upstream is tests/fixtures/tasks_server.py (the bare wire: no installed SDK
serves the extension)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from harness import (
    NEW_ERA_CAPABILITIES,
    TESTS,
    Gateway,
    ListeningProc,
    StatelessMcp,
    free_port,
    fronted,
    http_upstream,
)

TASKS = "io.modelcontextprotocol/tasks"
OTHER_KEY = "tasks-other-key-0001"
TOOL = "jobs__slow_job"


class TasksServer(ListeningProc):
    def __init__(self, tmp: Path):
        port = free_port()
        self.record = tmp / "tasks-record.jsonl"
        super().__init__("tasks-server", [sys.executable, str(TESTS / "fixtures" / "tasks_server.py"),
                                          str(port), str(self.record)], tmp / "tasks-server.log", port)
        self.url = f"http://127.0.0.1:{port}/mcp"

    def requests(self, method: str) -> list[dict]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("method") == method]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[tuple[Gateway, TasksServer]]:
    tmp = tmp_path_factory.mktemp("tasks")
    upstream = TasksServer(tmp)
    # `era: auto`: the upstream refuses `initialize`, so Sluice finds the new era.
    start = lambda: Gateway(tmp, {"jobs": http_upstream(upstream.url)}, name="sluice-tasks",  # noqa: E731
                            keys=[{"name": "other", "key": OTHER_KEY, "tools": ["*"]}])
    with fronted(upstream, start) as gw:
        yield gw, upstream


def client(gw: Gateway, key: str | None = None, tasks: bool = True) -> StatelessMcp:
    capabilities = dict(NEW_ERA_CAPABILITIES)
    if tasks:
        capabilities["extensions"] = {TASKS: {}}
    return StatelessMcp(gw.url, key=key or gw.key, capabilities=capabilities)


def test_discover_offers_the_extension(setup):
    gw, _ = setup
    result = client(gw).result("server/discover")
    assert TASKS in result["capabilities"].get("extensions", {}), result


def test_a_task_is_created_polled_and_completed_with_a_sealed_id(setup):
    gw, upstream = setup
    c = client(gw)
    created = c.result("tools/call", {"name": TOOL, "arguments": {}})
    assert created["resultType"] == "task" and created["status"] == "working", created
    sealed = created["taskId"]
    assert sealed != "job-1", "the upstream's own task id must not reach the client"
    done = c.result("tasks/get", {"taskId": sealed})
    assert done["status"] == "completed" and done["taskId"] == sealed, done
    assert done["result"]["content"][0]["text"] == "job done", done
    gets = upstream.requests("tasks/get")
    assert gets and gets[-1]["task_id"] == "job-1" and gets[-1]["mcp_name"] == "job-1", gets
    assert c.result("tasks/cancel", {"taskId": sealed})["resultType"] == "complete"


def test_another_keys_or_a_changed_task_id_is_refused(setup):
    gw, _ = setup
    sealed = client(gw).result("tools/call", {"name": TOOL, "arguments": {}})["taskId"]
    for who, task_id in ((client(gw, key=OTHER_KEY), sealed), (client(gw), sealed[:-2] + "AA")):
        response, message = who.request("tasks/get", {"taskId": task_id})
        assert message.get("error", {}).get("code") == -32602, message
        assert "not a task id Sluice gave this key" in message["error"]["message"], message


def test_a_client_without_the_extension_gets_the_answer_at_once(setup):
    gw, _ = setup
    result = client(gw, tasks=False).result("tools/call", {"name": TOOL, "arguments": {}})
    assert result["resultType"] == "complete" and result["content"][0]["text"] == "done at once", result
