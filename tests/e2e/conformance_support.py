"""Running the MCP conformance suite (@modelcontextprotocol/conformance) against a server URL.

Used by test_conformance.py. The suite is a Node 22 CLI: `conformance server --url URL --suite
active -o DIR` runs every active server scenario in turn, prints a summary line per scenario
(`✓ name: 2 passed, 0 failed` / `✗ ...`) and writes `DIR/server-<scenario>-<timestamp>/checks.json`
(a list of checks, each with an id, a status SUCCESS/FAILURE/WARNING/INFO/SKIPPED and, when it
failed, an errorMessage). A scenario passes when none of its checks is a FAILURE.

The upstream it is pointed at is tests/fixtures/conformance_server.mjs, an MCP server built on the
official TypeScript SDK that implements every tool, resource and prompt the scenarios call.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import NODE_MODULES, TESTS, ListeningProc, free_port, require, run_in_group

CONFORMANCE_VERSION = "0.2.0-alpha.12"
CONFORMANCE_JS = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
FIXTURE = TESTS / "fixtures" / "conformance_server.mjs"
#: Per-scenario timeout handed to the suite (ms). The fixture answers every scenario in well under
#: a second; a scenario that waits longer is stuck (e.g. a server-to-client request nobody relays).
SCENARIO_TIMEOUT_MS = 10_000
#: How long one whole suite run may take.
SUITE_TIMEOUT = 600

_SUMMARY_LINE = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed$")
_RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


def _major(node_path: str) -> int:
    try:
        out = subprocess.run([node_path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else 0


def node22() -> str:
    """A Node.js >= 22 executable: the `node` npm package in tests/node_modules, else `node` on
    PATH if it is new enough."""
    candidates = [NODE_MODULES / ".bin" / "node", NODE_MODULES / "node" / "bin" / "node"]
    for path in candidates:
        if path.exists() and _major(str(path)) >= 22:
            return str(path)
    system = shutil.which("node")
    if system and _major(system) >= 22:
        return system
    hint = "run `npm ci --prefix tests` (it installs the `node` 22 package into tests/node_modules)"
    if (NODE_MODULES / "node" / "package.json").exists():
        # Installed with scripts skipped: the package's preinstall fetches the actual binary.
        hint = "npm skipped the `node` package's install script: run `npm rebuild --prefix tests node`"
    raise AssertionError(f"the conformance suite needs Node.js 22 or later: {hint}")


class ConformanceServer(ListeningProc):
    """tests/fixtures/conformance_server.mjs on 127.0.0.1; its endpoint is `self.url`."""

    def __init__(self, tmp: Path, name: str = "conformance-fixture"):
        port = free_port()
        require(NODE_MODULES / "@modelcontextprotocol" / "sdk" / "package.json")
        super().__init__(name, [node22(), str(FIXTURE), str(port)], tmp / f"{name}.log", port)
        self.url = f"http://127.0.0.1:{self.port}/mcp"


@dataclass
class SuiteRun:
    """The outcome of one `conformance server` run."""

    url: str
    out_dir: Path
    returncode: int
    stdout: str
    stderr: str
    #: Scenario name -> passed?, from the summary the suite prints (every scenario it ran).
    passed: dict[str, bool] = field(default_factory=dict)
    #: Scenario name -> the failed checks as "check-id: error message".
    failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, ok in self.passed.items() if not ok)

    def reason(self, scenario: str) -> str:
        """One line on why `scenario` failed."""
        reasons = self.failures.get(scenario)
        if reasons:
            return " | ".join(reasons)
        return "no FAILURE check recorded (the scenario crashed or timed out; see the suite's stdout)"

    def describe(self, label: str) -> str:
        if not self.passed:
            return (f"{label}: the suite reported no scenarios (exit {self.returncode})\n"
                    f"stdout:\n{self.stdout[-4000:]}\nstderr:\n{self.stderr[-4000:]}")
        failed = self.failed
        if not failed:
            return f"{label}: all {len(self.passed)} scenarios passed"
        lines = [f"{label}: {len(failed)} of {len(self.passed)} scenarios failed"]
        lines += [f"  - {name}: {self.reason(name)}" for name in failed]
        return "\n".join(lines)


def _check_line(check: dict) -> str:
    message = check.get("errorMessage") or check.get("description") or ""
    message = " ".join(str(message).split())
    if len(message) > 400:
        message = message[:400] + "..."
    return f"{check.get('id')}: {message}"


def parse(run: SuiteRun) -> SuiteRun:
    """Fill `run.passed` from the printed summary and `run.failures` from the checks.json files."""
    for line in run.stdout.splitlines():
        match = _SUMMARY_LINE.match(line.strip())
        if match:
            mark, name, _, failed = match.groups()
            run.passed[name] = mark == "✓" and failed == "0"
    for checks_file in sorted(run.out_dir.glob("server-*/checks.json")):
        match = _RESULT_DIR.match(checks_file.parent.name)
        if not match:
            continue
        try:
            checks = json.loads(checks_file.read_text())
        except (OSError, ValueError) as e:
            run.failures.setdefault(match.group(1), []).append(f"unreadable {checks_file}: {e}")
            continue
        bad = [_check_line(c) for c in checks if isinstance(c, dict) and c.get("status") == "FAILURE"]
        if bad:
            run.failures.setdefault(match.group(1), []).extend(bad)
    # A scenario that threw before writing checks.json is reported in stdout only.
    for name in run.passed:
        if not run.passed[name] and name not in run.failures:
            errors = re.findall(rf"Failed to run scenario {re.escape(name)}:\s*(.+)", run.stdout + run.stderr)
            if errors:
                run.failures[name] = [f"{name}: {errors[0].strip()}"]
    return run


def run_suite(url: str, out_dir: Path, suite: str = "active", timeout: float = SUITE_TIMEOUT,
              requirements: str | None = None) -> SuiteRun:
    """Run `conformance server --url URL --suite SUITE` with results under `out_dir`; with
    `requirements` (e.g. "2026-07-28"), `--requirements REVISION` instead of `--suite` (the
    scenarios that revision requires, run at its wire version; the suite refuses both at once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    selection = ["--requirements", requirements] if requirements else ["--suite", suite]
    argv = [node22(), str(require(CONFORMANCE_JS)), "server", "--url", url, *selection,
            "--timeout", str(SCENARIO_TIMEOUT_MS), "-o", str(out_dir)]
    done = run_in_group(argv, timeout, f"the conformance suite against {url}", cwd=out_dir)
    (out_dir / "stdout.txt").write_text(done.stdout)
    (out_dir / "stderr.txt").write_text(done.stderr)
    return parse(SuiteRun(url, out_dir, done.returncode, done.stdout, done.stderr))


# --------------------------------------------------------------------------- requirement sets

REQUIREMENTS_DIR = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "requirements"


def scored_server_scenarios(revision: str) -> list[str]:
    """The server scenarios that conformance to `revision` requires (its frozen requirements
    file, `server:` list). Scenarios the suite runs beyond these are `not_scored`."""
    import yaml

    doc = yaml.safe_load((require(REQUIREMENTS_DIR / f"{revision}.yaml")).read_text())
    return list(doc.get("server") or [])
