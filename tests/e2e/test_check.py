"""`sluice check --config FILE` accepts good configs and places errors in bad ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import EVERYTHING_JS, PY_SERVER, PYTHON, node, sluice_bin


def check(config: Path) -> subprocess.CompletedProcess:
    """Run `sluice check --config <config>` and capture its output."""
    binary = sluice_bin()
    assert binary.exists(), f"sluice binary not found at {binary}"
    return subprocess.run(
        [str(binary), "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    return path


def test_good_config_passes(tmp_path):
    config = write(
        tmp_path,
        f"""\
listen:
  - address: 127.0.0.1:18080
admin:
  address: 127.0.0.1:19090
mcp:
  page_size: 100
  max_body_bytes: 4194304
  allowed_origins: ["https://app.example.com"]
  servers:
    - name: everything
      stdio: {{ command: {node()}, args: ["{EVERYTHING_JS}", "stdio"] }}
    - name: remote
      http: {{ url: "http://127.0.0.1:3001/mcp" }}
      sync_interval: 5m
      request_timeout: 30s
    - name: py
      stdio: {{ command: {PYTHON}, args: ["{PY_SERVER}"] }}
""",
    )
    done = check(config)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"


# Each bad config, and the 1-based line its error must point at.
BAD_CONFIGS = {
    "server-without-transport": (
        """\
listen:
  - address: 127.0.0.1:18080
mcp:
  servers:
    - name: ok
      http: { url: "http://127.0.0.1:3001/mcp" }
    - name: lonely
      sync_interval: 5m
""",
        7,
        "lonely",
    ),
    "unknown-field": (
        """\
listen:
  - address: 127.0.0.1:18080
mcp:
  page_size: 10
  servers:
    - name: remote
      http: { url: "http://127.0.0.1:3001/mcp" }
      colour: blue
""",
        8,
        "colour",
    ),
    "bad-url-scheme": (
        """\
listen:
  - address: 127.0.0.1:18080
mcp:
  servers:
    - name: remote
      http:
        url: "ftp://127.0.0.1/mcp"
""",
        7,
        "remote",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_fails_with_file_and_line(tmp_path, case):
    text, line, word = BAD_CONFIGS[case]
    config = write(tmp_path, text)
    done = check(config)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"bad config accepted\noutput: {output}"
    assert f"{config}:{line}:" in output, f"want `{config}:{line}: ...` in the output, got:\n{output}"
    assert word in output, f"the message should mention `{word}`:\n{output}"
