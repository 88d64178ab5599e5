"""Claude Code (the real CLI, tests/node_modules/@anthropic-ai/claude-code) using Sluice as its
MCP server over HTTPS.

Claude Code runs offline in a scratch HOME: its model API is tests/fixtures/fake_anthropic.py
(a scripted stand-in speaking the Messages API wire format, via ANTHROPIC_BASE_URL), and it
trusts the test CA through NODE_EXTRA_CA_CERTS. Sluice, server-everything and Claude Code
itself are the real programs.

Claude Code ships as a native binary in a per-platform package
(@anthropic-ai/claude-code-linux-x64 and the like); its postinstall script copies it over
`node_modules/.bin/claude`. npm may skip that script, so `claude_argv()` runs the platform
package's binary directly, and falls back to the installed `.bin/claude` or the package's Node
launcher (`cli-wrapper.cjs`).

Two behaviours of current releases matter here: Claude Code probes `server/discover` (MCP
2026-07-28) before `initialize` and falls back to `initialize` when Sluice refuses the probe (an
error such as -32601, or today's HTTP 400 "missing Mcp-Session-Id"); and it hides MCP tools
behind its ToolSearch tool unless ENABLE_TOOL_SEARCH=false, which these tests set so that the
scripted model sees the MCP tool offered directly.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from harness import NODE_MODULES, TESTS, node, run_in_group, stdio_everything, wait_until
from tls_support import CertSet, TlsGateway, audit_records, dev_certs

sys.path.insert(0, str(TESTS / "fixtures"))
from fake_anthropic import FakeAnthropic, result_text, tool_results, tool_uses  # noqa: E402

CLAUDE_PACKAGE = NODE_MODULES / "@anthropic-ai" / "claude-code"
CLAUDE_TIMEOUT = 120
CLAUDE_KEY_NAME = "claude"
CLAUDE_KEY = "claude-key-0123456789"
WRONG_KEY = "wrong-key-9876543210"
SERVER = "sluice"
#: The name Claude Code gives server-everything's echo tool behind the MCP server `sluice`.
ECHO_TOOL = f"mcp__{SERVER}__everything__echo"

#: Variables of the surrounding environment that would leak a developer's own Claude Code
#: setup (or a parent Claude Code session) into the test, or route localhost via a proxy.
LEAKY_PREFIXES = ("ANTHROPIC_", "CLAUDE", "AWS_", "GOOGLE_", "VERTEX_", "NODE_", "SSL_CERT_")
LEAKY_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "XDG_CONFIG_HOME"}


def _is_native_executable(path: Path) -> bool:
    """True if `path` is an executable ELF or Mach-O file (not the placeholder npm installs
    when the postinstall script did not run)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    native = magic == b"\x7fELF" or magic in (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf")
    return native and os.access(path, os.X_OK)


def _platform_packages() -> list[str]:
    """Names of the Claude Code platform packages that can run here, best first."""
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    names = [f"claude-code-{system}-{cpu}"]
    if system == "linux":
        names.append(f"claude-code-{system}-{cpu}-musl")
    return names


def claude_argv() -> list[str]:
    """The command that runs the installed Claude Code CLI.

    The platform package's native binary if npm installed it (whether or not the postinstall
    script ran), else `.bin/claude` if that is the native binary, else the package's Node
    launcher."""
    for name in _platform_packages():
        binary = NODE_MODULES / "@anthropic-ai" / name / "claude"
        if _is_native_executable(binary):
            return [str(binary)]
    installed = NODE_MODULES / ".bin" / "claude"
    if _is_native_executable(installed.resolve() if installed.exists() else installed):
        return [str(installed)]
    wrapper = CLAUDE_PACKAGE / "cli-wrapper.cjs"
    assert wrapper.exists(), (
        f"Claude Code is not installed under {NODE_MODULES}: run `npm ci --prefix tests` first"
    )
    return [node(), str(wrapper)]


@dataclass
class Claude:
    """How to run the Claude Code CLI offline in a scratch home, against `api` (the fake)."""

    home: Path
    cwd: Path
    api: str
    ca: Path | None

    def env(self, trust_ca: bool = True) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(LEAKY_PREFIXES) and k not in LEAKY_NAMES
        }
        env.update(
            {
                "HOME": str(self.home),
                "CLAUDE_CONFIG_DIR": str(self.home / ".claude"),
                "ANTHROPIC_BASE_URL": self.api,
                "ANTHROPIC_API_KEY": "sk-ant-e2e-dummy-key",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                # Offer MCP tools to the model directly instead of behind ToolSearch: the
                # scripted model calls the echo tool by its name in the first request.
                "ENABLE_TOOL_SEARCH": "false",
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1",
                "NO_COLOR": "1",
            }
        )
        if trust_ca and self.ca is not None:
            # The documented way to make Claude Code (native build included) trust a private CA.
            env["NODE_EXTRA_CA_CERTS"] = str(self.ca)
        return env

    def run(self, *args: str, trust_ca: bool = True, timeout: float = CLAUDE_TIMEOUT) -> subprocess.CompletedProcess:
        """Run `claude ARGS` to completion (killed, with its process group, after `timeout`)."""
        argv = [*claude_argv(), *args]
        return run_in_group(argv, timeout, f"`claude {' '.join(args)}`", cwd=self.cwd, env=self.env(trust_ca))

    def mcp_add(self, name: str, url: str, key: str, scope: str = "user") -> None:
        done = self.run("mcp", "add", "--transport", "http", "--scope", scope, name, url,
                        "--header", f"Authorization: Bearer {key}")
        assert done.returncode == 0, f"claude mcp add failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        assert f"Added HTTP MCP server {name}" in done.stdout, done.stdout


def status_lines(output: str) -> dict[str, str]:
    """`claude mcp list` output as {server name: its line}."""
    lines = {}
    for line in output.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and " " not in name:
            lines[name] = rest
    return lines


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cc_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sluice-claude-code")


@pytest.fixture(scope="module")
def certs(cc_tmp) -> CertSet:
    return dev_certs(cc_tmp / "dev-certs")


@pytest.fixture(scope="module")
def cc_gateway(cc_tmp, certs) -> Iterator[TlsGateway]:
    """Sluice on HTTPS (dev certificate), fronting stdio server-everything, with a key for Claude."""
    gw = TlsGateway(
        cc_tmp / "gateway",
        {"everything": stdio_everything()},
        {"cert": certs.cert, "key": certs.key},
        name="sluice-for-claude",
        keys=[{"name": CLAUDE_KEY_NAME, "key": CLAUDE_KEY, "tools": ["*"]}],
    )
    yield gw
    gw.stop()


@pytest.fixture
def token() -> str:
    return f"tok-{secrets.token_hex(8)}"


@pytest.fixture
def fake(token) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(token) as server:
        yield server


@pytest.fixture
def claude(tmp_path, fake, certs) -> Claude:
    home, cwd = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    cwd.mkdir()
    return Claude(home=home, cwd=cwd, api=fake.base_url, ca=certs.ca)


# --------------------------------------------------------------------------- tests


def test_claude_code_version():
    """The pinned Claude Code runs here at all (a clear failure instead of puzzling ones)."""
    argv = claude_argv()
    done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=CLAUDE_TIMEOUT)
    assert done.returncode == 0 and "Claude Code" in done.stdout, f"{argv}: {done.stdout}\n{done.stderr}"
    pinned = json.loads((TESTS / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"]
    assert done.stdout.startswith(pinned), f"tests/package.json pins {pinned}, {argv} is {done.stdout.strip()}"


def test_mcp_add_and_list_reports_connected(cc_gateway, claude, tmp_path):
    """`claude mcp add --transport http` with the key header, then `claude mcp list`: Sluice is
    connected over HTTPS; the same URL with a wrong key fails (HTTP 401); without the CA in
    NODE_EXTRA_CA_CERTS, the certificate is not trusted and the connection fails."""
    claude.mcp_add(SERVER, cc_gateway.url, CLAUDE_KEY)
    claude.mcp_add("wrongkey", cc_gateway.url, WRONG_KEY)
    config = json.loads((claude.home / ".claude" / ".claude.json").read_text())
    assert config["mcpServers"][SERVER] == {
        "type": "http",
        "url": cc_gateway.url,
        "headers": {"Authorization": f"Bearer {CLAUDE_KEY}"},
    }, config["mcpServers"]

    debug = tmp_path / "mcp-list-debug.txt"
    done = claude.run("--debug-file", str(debug), "mcp", "list")
    assert done.returncode == 0, f"claude mcp list failed:\n{done.stdout}\n{done.stderr}"
    lines = status_lines(done.stdout)
    assert SERVER in lines and "wrongkey" in lines, f"unexpected `claude mcp list` output:\n{done.stdout}"
    assert cc_gateway.url in lines[SERVER], lines[SERVER]
    assert "Connected" in lines[SERVER] and "Failed" not in lines[SERVER], f"Sluice not connected:\n{done.stdout}"
    assert "✔" in lines[SERVER], lines[SERVER]
    assert "Failed" in lines["wrongkey"] and "Connected" not in lines["wrongkey"], (
        f"a wrong key was not reported failing:\n{done.stdout}"
    )
    # Why the wrong key failed, as Claude Code logged it: Sluice's 401 (not a TLS problem).
    reasons = [line for line in debug.read_text().splitlines() if '"wrongkey"' in line and "401" in line]
    assert reasons, f"Claude Code's debug log does not show a 401 for the wrong key:\n{debug.read_text()[-3000:]}"

    untrusted_debug = tmp_path / "mcp-list-untrusted-debug.txt"
    untrusted = claude.run("--debug-file", str(untrusted_debug), "mcp", "list", trust_ca=False)
    lines = status_lines(untrusted.stdout)
    assert "Failed" in lines.get(SERVER, ""), (
        f"Claude Code connected although it was not told to trust the test CA:\n{untrusted.stdout}"
    )
    # Node's words for an untrusted issuer: "unable to verify the first certificate".
    reasons = [line for line in untrusted_debug.read_text().splitlines()
               if f'"{SERVER}"' in line and "certificate" in line]
    assert reasons, f"the failure without the CA is not a certificate error:\n{untrusted_debug.read_text()[-3000:]}"
    assert cc_gateway.alive()


@pytest.mark.parametrize("configured_by", ["mcp add", "--mcp-config"])
def test_tool_round_trip(cc_gateway, claude, fake, token, configured_by):
    """`claude -p` with Sluice as MCP server: the model (the fake) asks for
    mcp__sluice__everything__echo, Claude Code calls it through Sluice over HTTPS,
    server-everything echoes, the tool_result goes back to the model, and its final answer is
    printed."""
    args = ["-p", f"Call the echo tool with the message {token} and report what it says.",
            "--allowedTools", ECHO_TOOL]
    if configured_by == "mcp add":
        claude.mcp_add(SERVER, cc_gateway.url, CLAUDE_KEY)
    else:
        config = {"mcpServers": {SERVER: {"type": "http", "url": cc_gateway.url,
                                          "headers": {"Authorization": f"Bearer {CLAUDE_KEY}"}}}}
        args += ["--mcp-config", json.dumps(config), "--strict-mcp-config"]
    audit_before = len(audit_records(cc_gateway.audit_path))

    done = claude.run(*args)
    conversation = fake.conversation_requests()
    context = (
        f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}\n"
        f"requests to the fake API: {[(r['method'], r['path']) for r in fake.requests]}"
    )

    # 1. The model was offered the tool under Claude Code's name for it.
    messages = fake.message_requests()
    assert messages, f"Claude Code never called the Messages API:\n{context}"
    assert conversation, (
        f"no Messages request offered {ECHO_TOOL}; tools offered: "
        f"{[t.get('name') for t in (messages[0].get('tools') or [])]}\n{context}"
    )
    first = conversation[0]
    offered = {t["name"]: t for t in first["tools"]}
    assert ECHO_TOOL in offered, sorted(offered)
    assert "message" in offered[ECHO_TOOL]["input_schema"].get("properties", {}), offered[ECHO_TOOL]
    assert not tool_results(first), "the first request already carries a tool result"

    # 2. Claude Code called the tool through Sluice, with Claude's key; server-everything answered.
    def echo_audited():
        records = audit_records(cc_gateway.audit_path)[audit_before:]
        return [r for r in records if r.get("method") == "tools/call" and r.get("tool") == "everything__echo"]

    calls = wait_until(echo_audited, 10, "Sluice's audit log to record the everything__echo call")
    assert len(calls) == 1, f"expected one everything__echo call, the audit log has {calls}"
    assert calls[0]["status"] == "ok", calls[0]
    assert calls[0]["key"] == CLAUDE_KEY_NAME, calls[0]
    assert calls[0]["server"] == "everything", calls[0]

    # 3. The follow-up request carries the tool result with the echo.
    assert len(conversation) >= 2, f"Claude Code sent no follow-up after the tool call:\n{context}"
    follow_up = conversation[1]
    uses = [u for u in tool_uses(follow_up) if u.get("name") == ECHO_TOOL]
    assert uses and uses[-1]["input"] == {"message": token}, tool_uses(follow_up)
    results = [r for r in tool_results(follow_up) if r.get("tool_use_id") == uses[-1]["id"]]
    assert results, f"no tool_result for {uses[-1]['id']} in the follow-up: {tool_results(follow_up)}"
    assert not results[0].get("is_error"), results[0]
    assert f"Echo: {token}" in result_text(results[0]), results[0]

    # 4. Claude Code printed the model's final answer.
    assert done.returncode == 0, context
    assert f"FINAL-{token}" in done.stdout, context
    assert cc_gateway.alive()
