"""The example configurations in conf/examples/ are valid, and the quick start really starts:
its real MCP servers sync and a client sees their tools, over HTTP and HTTPS."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from harness import REPO, Proc, RawMcp, free_port, sluice_bin

EXAMPLES = sorted((REPO / "conf" / "examples").glob("*.yaml"))
ENV = {
    "SLUICE_DEMO_KEY": "demo-key-0123456789",
    "DOCS_TOKEN": "docs-token",
    "ALICE_KEY": "alice-key-0123456789",
    "BOB_KEY": "bob-key-0123456789",
    "SLUICE_CODER_KEY": "coder-key-0123456789",
    "ANTHROPIC_API_KEY": "sk-ant-example",
    "OPENAI_API_KEY": "sk-openai-example",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-example",
}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_check(example):
    done = subprocess.run(
        [str(sluice_bin()), "check", "--config", str(example)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **ENV},
    )
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_example_without_its_secret_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_DEMO_KEY"}
    done = subprocess.run(
        [str(sluice_bin()), "check", "--config", str(REPO / "conf/examples/quickstart.yaml")],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )
    assert done.returncode != 0
    assert "quickstart.yaml:" in done.stderr and "SLUICE_DEMO_KEY" in done.stderr, done.stderr


def test_quickstart_starts_and_serves_its_servers(tmp_path):
    """The quick start as `make run` serves it, on free ports and with fresh certificates."""
    certs = tmp_path / "certs"
    subprocess.run([str(REPO / "scripts/dev-certs.sh"), str(certs)], check=True, capture_output=True)
    config = yaml.safe_load((REPO / "conf/examples/quickstart.yaml").read_text())
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    config["listen"] = [
        {"address": f"127.0.0.1:{http_port}"},
        {"address": f"127.0.0.1:{https_port}", "tls": {"cert": str(certs / "sluice.crt"), "key": str(certs / "sluice.key")}},
    ]
    config["admin"] = {"address": f"127.0.0.1:{admin_port}"}
    config["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    memory = next(s for s in config["mcp"]["servers"] if s["name"] == "memory")
    memory["stdio"]["env"]["MEMORY_FILE_PATH"] = str(tmp_path / "memory.jsonl")
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config))
    # Relative paths in the example are relative to the repository root, as with `make run`
    # (pytest runs from there).
    assert Path.cwd() == REPO, "run the tests from the repository root"
    gw = Proc("sluice-quickstart", [str(sluice_bin()), "--config", str(path)], tmp_path / "sluice.log", env=ENV)
    try:
        gw.wait_ready(f"http://127.0.0.1:{admin_port}")
        for url, verify in ((f"http://127.0.0.1:{http_port}/mcp", True),
                            (f"https://localhost:{https_port}/mcp", ssl.create_default_context(cafile=certs / "ca.crt"))):
            client = RawMcp(url, client=httpx.Client(timeout=30, verify=verify), key=ENV["SLUICE_DEMO_KEY"])
            client.initialize()
            names = client.tool_names()
            assert "everything__echo" in names and "memory__read_graph" in names, sorted(names)
            echo = client.call_tool("everything__echo", {"message": "quick"})
            assert echo["result"]["content"] == [{"type": "text", "text": "Echo: quick"}], echo
            client.close()
    finally:
        gw.stop()
