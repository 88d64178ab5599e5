"""The MCP Inspector CLI (a real TypeScript-SDK client) talking to Sluice."""

from __future__ import annotations

import json
import subprocess

from harness import EVERYTHING_TOOLS, INSPECTOR_CLI, PY_TOOLS, bearer, node, require


def run_inspector(url: str, *args: str, headers: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `mcp-inspector-cli --cli <url> --transport http [--header "Name: value"]... <args>`."""
    argv = [node(), str(require(INSPECTOR_CLI)), "--cli", url, "--transport", "http"]
    for name, value in (headers or {}).items():
        argv += ["--header", f"{name}: {value}"]
    argv += list(args)
    # inspector-cli 1.0.3 tests `fs.existsSync("../package.json")` against the working
    # directory but imports that path relative to its own module; from anywhere but its
    # build directory it then imports a package.json that does not exist and exits 1.
    cwd = INSPECTOR_CLI.parent
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


def inspector(url: str, *args: str, headers: dict[str, str] | None = None) -> dict:
    """Run the inspector CLI and parse its JSON output; it must succeed."""
    done = run_inspector(url, *args, headers=headers)
    argv = done.args
    assert done.returncode == 0, (
        f"inspector exited {done.returncode}\nargv: {argv}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    )
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"inspector output is not JSON:\n{done.stdout}\nstderr: {done.stderr}") from None


def test_inspector_lists_namespaced_tools(gateway):
    """`--method tools/list` through Sluice shows the tools of every upstream, namespaced."""
    names = {tool["name"] for tool in inspector(gateway.url, "--method", "tools/list", headers=bearer(gateway.key))["tools"]}
    for tool in EVERYTHING_TOOLS:
        assert f"everything__{tool}" in names and f"remote__{tool}" in names, (tool, sorted(names))
    for tool in PY_TOOLS:
        assert f"py__{tool}" in names, (tool, sorted(names))


def test_inspector_calls_a_tool(gateway):
    """`--method tools/call` through Sluice reaches the upstream and returns its result."""
    result = inspector(
        gateway.url,
        "--method", "tools/call", "--tool-name", "py__add", "--tool-arg", "a=20", "b=22",
        headers=bearer(gateway.key),
    )
    assert result.get("structuredContent") == {"result": 42}, result


def test_inspector_without_a_key_is_refused(gateway):
    """Without a key the inspector cannot connect, and it shows the gateway's explanation."""
    done = run_inspector(gateway.url, "--method", "tools/list")
    assert done.returncode != 0, f"the inspector got in without a key:\n{done.stdout}"
    output = done.stdout + done.stderr
    assert "no virtual key" in output and "Authorization: Bearer" in output, (
        f"the gateway's 401 message should reach the user:\n{output}"
    )
