"""SIGHUP adds and removes MCP servers while Sluice runs; the servers that did not change keep
their sessions and never see a failed call."""

from __future__ import annotations

import copy

from harness import Gateway, stdio_everything, stdio_py, wait_until


def test_sighup_adds_and_removes_servers(e2e_tmp):
    gw = Gateway(e2e_tmp / "reload-servers", {"everything": stdio_everything()}, name="sluice-reload-servers")
    try:
        client = gw.client()
        client.initialize()
        pid_before = gw.stdio_children("stdio")
        assert not any(name.startswith("py__") for name in client.tool_names())

        # Add the Python server: its tools appear, without a restart of Sluice.
        config = copy.deepcopy(gw.config)
        config["mcp"]["servers"].append({"name": "py", **stdio_py()})
        gw.reload(config)
        wait_until(lambda: "py__add" in client.tool_names(), 30, "py__add to appear after SIGHUP")
        added = client.call_tool("py__add", {"a": 2, "b": 3})
        assert added["result"]["structuredContent"] == {"result": 5}, added
        assert "MCP servers changed" in gw.log()

        # The unchanged server was not restarted and keeps serving in the same session.
        assert set(pid_before) <= set(gw.stdio_children("stdio")), "everything was restarted"
        assert "result" in client.call_tool("everything__echo", {"message": "still"})

        # Remove it again: its tools disappear and calls to them are unknown tools.
        gw.reload(gw.config)  # the original configuration: everything alone
        assert not any(name.startswith("py__") for name in client.tool_names())
        gone = client.call_tool("py__add", {"a": 1, "b": 1})
        assert gone["error"]["code"] == -32602 and "py__add" in gone["error"]["message"], gone
        assert "result" in client.call_tool("everything__echo", {"message": "still"})
    finally:
        gw.stop()
