#!/usr/bin/env python3
"""Token economy, measured: what a model is sent with Sluice's Code Mode and without it.

Sluice (release build) fronts a catalog of 150 tools: 108 from published MCP servers run for
real (npm: server-everything, -filesystem, -memory, -github, -gitlab, -google-maps,
-brave-search, -sequential-thinking, -slack, -everart, -aws-kb-retrieval; PyPI:
mcp-server-git, -time, -fetch) and 42 from perf/servers/business_server.py (a CRM and a help
desk on the official Python SDK, with the JSON Schemas such servers publish). Servers that want
credentials get dummy ones; no tool that needs the network is called.

Two measurements, counted with the o200k_base tokenizer (offline, the `bpe-openai` package):

1. The catalog: the tool definitions a model receives in plain mode (every tool as Claude Code
   puts it in the request's `tools`: name, description, input_schema) against Code Mode's three
   meta-tools; also the raw tools/list definitions.
2. A whole task through the real Claude Code CLI (tests/node_modules), played by a scripted model
   speaking the Anthropic Messages wire format (tests/fixtures/scripted_anthropic.py): "for the
   enterprise customers in EMEA, count their unresolved tickets, the high/urgent ones, the SLA
   breaches, and the contract value at risk" (records from the CRM and the help desk). The model
   follows the same steps in every mode (find the customers, read their tickets, aggregate); in
   Code Mode the reading and aggregating is one script. Every request Claude Code sends to the
   model over the turn is counted (system + messages + tools):

       plain, all tools     Claude Code with ENABLE_TOOL_SEARCH=false: every definition sent
       plain, tool search   Claude Code's default: MCP tools behind ToolSearch
       Code Mode            Claude Code's default, the key in Code Mode
   and, for reference, Code Mode with ENABLE_TOOL_SEARCH=false, and both key kinds with Claude
   Code's own tools off (`--tools ""`), where what remains is the MCP side alone.

Each mode's final answer must equal the aggregate computed from the data set.

    python3 perf/token_economy.py              # installs the servers on the first run, builds, measures
    python3 perf/token_economy.py --no-build --sluice /path/to/release/sluice
    python3 perf/token_economy.py --record     # also append the results to perf/RESULTS.md

The servers are installed into perf/servers/node_modules (npm ci) and perf/.venv-servers (pip),
and the script re-runs itself with that venv's Python (it has the tokenizer and the SDK the
business servers need). Logs, configuration, every request body and results.json are kept in
the /tmp/sluice-tokens-* folder it prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent
RESULTS = PERF_DIR / "RESULTS.md"
SERVERS_DIR = PERF_DIR / "servers"
SERVERS_VENV = PERF_DIR / ".venv-servers"
BUSINESS = SERVERS_DIR / "business_server.py"
NODE_MODULES = SERVERS_DIR / "node_modules" / "@modelcontextprotocol"
TESTS_NODE_MODULES = REPO / "tests" / "node_modules"
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

ERA = "2026-07-28"
ACCEPT = "application/json, text/event-stream"
MCP_SERVER_NAME = "sluice"  # the name Claude Code knows Sluice by: tools are mcp__sluice__<tool>
TOOL_PREFIX = f"mcp__{MCP_SERVER_NAME}__"
CLAUDE_TIMEOUT = 180
OWN_SERVERS = {"crm", "helpdesk"}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- installing the servers


def ensure_servers() -> None:
    """npm ci into perf/servers and a venv with the PyPI servers and the tokenizer, when
    missing or older than their manifests."""
    stamp = SERVERS_DIR / "node_modules" / ".package-lock.json"
    lock = SERVERS_DIR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        print("installing the npm MCP servers into perf/servers ...", flush=True)
        subprocess.run(["npm", "ci", "--prefix", str(SERVERS_DIR), "--no-audit", "--no-fund"], check=True)
        stamp.touch()
    requirements = SERVERS_DIR / "requirements.txt"
    installed = SERVERS_VENV / ".installed"
    if not installed.exists() or installed.stat().st_mtime < requirements.stat().st_mtime:
        print("installing the PyPI MCP servers and the tokenizer into perf/.venv-servers ...", flush=True)
        python = os.environ.get("PERF_PYTHON") or shutil.which("python3.11") or "python3"
        subprocess.run([python, "-m", "venv", str(SERVERS_VENV)], check=True)
        subprocess.run([str(SERVERS_VENV / "bin" / "pip"), "install", "-q", "-r", str(requirements)], check=True)
        installed.touch()


def in_servers_venv() -> bool:
    return Path(sys.prefix).resolve() == SERVERS_VENV.resolve()


def reexec_in_servers_venv() -> None:
    if not in_servers_venv():
        python = SERVERS_VENV / "bin" / "python"
        os.execv(str(python), [str(python), str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------- the catalog


def catalog_servers(work: Path) -> dict[str, dict]:
    """Sluice's `mcp.servers`, by name: every published server, and the two of our own."""
    fs_root, repo, memory = work / "fs-root", work / "git-repo", work / "memory.jsonl"
    fs_root.mkdir(exist_ok=True)
    (fs_root / "README.md").write_text("A folder for server-filesystem.\n")
    if not (repo / ".git").exists():
        repo.mkdir(exist_ok=True)
        (repo / "README.md").write_text("A repository for mcp-server-git.\n")
        git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run([*git, "add", "README.md"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    node = shutil.which("node") or "node"
    venv_bin = SERVERS_VENV / "bin"
    unroutable = "http://127.0.0.1:9"  # nothing listens there: no call leaves the machine

    def npm(package: str, *args: str, env: dict | None = None, prefix: str | None = None) -> dict:
        spec: dict[str, Any] = {"stdio": {"command": node, "args": [str(NODE_MODULES / package / "dist" / "index.js"), *args]}}
        if env:
            spec["stdio"]["env"] = env
        if prefix:
            spec["prefix"] = prefix
        return spec

    def pypi(command: str, *args: str) -> dict:
        return {"stdio": {"command": str(venv_bin / command), "args": list(args)}}

    return {
        "everything": npm("server-everything", "stdio", prefix="ev"),
        "filesystem": npm("server-filesystem", str(fs_root), prefix="fs"),
        "memory": npm("server-memory", env={"MEMORY_FILE_PATH": str(memory)}, prefix="mem"),
        "github": npm("server-github", env={"GITHUB_PERSONAL_ACCESS_TOKEN": "dummy-token"}, prefix="gh"),
        "gitlab": npm("server-gitlab", env={"GITLAB_PERSONAL_ACCESS_TOKEN": "dummy-token",
                                            "GITLAB_API_URL": f"{unroutable}/api/v4"}, prefix="gl"),
        "maps": npm("server-google-maps", env={"GOOGLE_MAPS_API_KEY": "dummy-key"}),
        "brave": npm("server-brave-search", env={"BRAVE_API_KEY": "dummy-key"}),
        "thinking": npm("server-sequential-thinking"),
        "slack": npm("server-slack", env={"SLACK_BOT_TOKEN": "xoxb-dummy", "SLACK_TEAM_ID": "T0000000"}),
        "everart": npm("server-everart", env={"EVERART_API_KEY": "dummy-key"}),
        "awskb": npm("server-aws-kb-retrieval", env={"AWS_ACCESS_KEY_ID": "dummy", "AWS_SECRET_ACCESS_KEY": "dummy",
                                                     "AWS_REGION": "us-east-1"}),
        "git": pypi("mcp-server-git", "--repository", str(repo)),
        "time": pypi("mcp-server-time", "--local-timezone", "UTC"),
        "fetch": pypi("mcp-server-fetch"),
        "crm": {"stdio": {"command": str(venv_bin / "python"), "args": [str(BUSINESS), "crm"]}},
        "helpdesk": {"stdio": {"command": str(venv_bin / "python"), "args": [str(BUSINESS), "helpdesk"]}, "prefix": "hd"},
    }


def yaml_scalar(value: Any) -> str:
    return json.dumps(value)  # JSON scalars, lists and maps are YAML flow style


def sluice_config(port: int, admin: int, work: Path, servers: dict[str, dict], keys: list[dict]) -> str:
    lines = [f"listen: [ {{ address: 127.0.0.1:{port} }} ]", f"admin: {{ address: 127.0.0.1:{admin} }}",
             "mcp:", "  page_size: 1000", "  servers:"]
    for name, spec in servers.items():
        lines.append(f"    - name: {name}")
        for key, value in spec.items():
            lines.append(f"      {key}: {yaml_scalar(value)}")
        lines.append("      connect_timeout: 120s")
    lines.append("keys:")
    for key in keys:
        lines.append(f"  - {yaml_scalar(key)}")
    lines.append(f"audit: {{ path: {work / 'audit.jsonl'} }}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sluice:
    """A Sluice process with a generated configuration, in its own process group."""

    def __init__(self, binary: Path, work: Path, servers: dict[str, dict], keys: list[dict], name: str = "sluice"):
        self.port, self.admin = free_port(), free_port()
        self.config = work / f"{name}.yaml"
        self.config.write_text(sluice_config(self.port, self.admin, work, servers, keys))
        self.log = work / f"{name}.log"
        self.argv = [str(binary), "--config", str(self.config)]
        env = dict(os.environ, SLUICE_SESSION_SECRET=secrets.token_hex(32), NO_COLOR="1")
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.admin_url = f"http://127.0.0.1:{self.admin}"

    def wait_ready(self, servers: list[str], timeout: float = 240) -> dict:
        """Wait until every server in `servers` is synced; the readyz detail."""
        deadline = time.monotonic() + timeout
        detail: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"sluice exited with {self.proc.returncode}; log {self.log}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=5) as r:
                    detail = json.loads(r.read())
            except (OSError, ValueError):
                time.sleep(0.5)
                continue
            health = {n: (detail.get("servers") or {}).get(n, {}).get("health") for n in servers}
            if all(h == "ready" for h in health.values()):
                return detail
            time.sleep(0.5)
        raise BenchError(f"servers not ready after {timeout:.0f} s: {json.dumps(detail.get('servers'))}; log {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def sluice_binary(args) -> Path:
    if args.sluice:
        return Path(args.sluice)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    return target / "release" / "sluice"


def build(args) -> list[str]:
    cmd = ["cargo", "build", "--release", "-p", "sluice"]
    if args.no_build or args.sluice:
        return ["(skipped)"]
    print("building:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return cmd


# ---------------------------------------------------------------- a stateless MCP client


class Mcp:
    """MCP 2026-07-28 (stateless) requests over HTTP/1.1 keep-alive, standard library only."""

    def __init__(self, url: str, key: str):
        import http.client
        from urllib.parse import urlsplit

        self.parts = urlsplit(url)
        self.key = key
        self.conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=120)
        self.next_id = 0

    def request(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        params = dict(params or {})
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": ERA,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "sluice-perf", "version": "0"},
        }
        body = json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Authorization": f"Bearer {self.key}",
                   "MCP-Protocol-Version": ERA, "Mcp-Method": method}
        if method == "tools/call":
            headers["Mcp-Name"] = params["name"]
        self.conn.request("POST", self.parts.path, body=body, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.status != 200:
            raise BenchError(f"{method}: HTTP {response.status} {raw[:500]!r}")
        if response.getheader("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in raw.decode().splitlines() if line.startswith("data:")]
            message = [m for m in messages if "result" in m or "error" in m][-1]
        else:
            message = json.loads(raw)
        if "error" in message:
            raise BenchError(f"{method}: {message['error']}")
        return message["result"]

    def tools(self) -> list[dict]:
        tools, cursor = [], None
        while True:
            result = self.request("tools/list", {"cursor": cursor} if cursor else {})
            tools += result["tools"]
            cursor = result.get("nextCursor")
            if not cursor:
                return tools

    def call(self, name: str, arguments: dict) -> dict:
        return self.request("tools/call", {"name": name, "arguments": arguments})

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- counting tokens


class Counter:
    """o200k_base token counts of JSON values as they are sent (compact, UTF-8)."""

    def __init__(self):
        import bpe_openai

        self.encoding = bpe_openai.get_encoding("o200k_base")
        self.name = f"o200k_base (bpe-openai {getattr(bpe_openai, '__version__', '?')})"

    def text(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))

    def json(self, value: Any) -> int:
        if value is None:
            return 0
        return self.text(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def as_claude_tool(tool: dict) -> dict:
    """A tools/list entry as Claude Code passes it to the model (its name behind the server's)."""
    entry = {"name": TOOL_PREFIX + tool["name"], "description": tool.get("description", "")}
    entry["input_schema"] = tool.get("inputSchema") or {"type": "object"}
    return entry


def request_tokens(counter: Counter, body: dict) -> dict:
    """Tokens of one Messages request: system, messages, and the tools split into MCP tools
    (mcp__*) and Claude Code's own."""
    tools = body.get("tools") or []
    mcp = [t for t in tools if str(t.get("name", "")).startswith("mcp__")]
    own = [t for t in tools if not str(t.get("name", "")).startswith("mcp__")]
    counts = {
        "system": counter.json(body.get("system")),
        "messages": counter.json(body.get("messages")),
        "tools_mcp": counter.json(mcp) if mcp else 0,
        "tools_claude": counter.json(own) if own else 0,
        "mcp_tools_offered": len(mcp),
    }
    counts["total"] = counts["system"] + counts["messages"] + counter.json(tools)
    return counts


# ---------------------------------------------------------------- Claude Code


LEAKY_PREFIXES = ("ANTHROPIC_", "CLAUDE", "AWS_", "GOOGLE_", "VERTEX_", "NODE_", "SSL_CERT_")
LEAKY_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "XDG_CONFIG_HOME"}


def claude_argv() -> list[str]:
    """The Claude Code CLI installed in tests/node_modules (its platform package's binary)."""
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "x64")
    system = "darwin" if sys.platform == "darwin" else "linux"
    for name in (f"claude-code-{system}-{machine}", f"claude-code-{system}-{machine}-musl"):
        binary = TESTS_NODE_MODULES / "@anthropic-ai" / name / "claude"
        if binary.exists() and os.access(binary, os.X_OK):
            return [str(binary)]
    wrapper = TESTS_NODE_MODULES / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs"
    if wrapper.exists():
        return [shutil.which("node") or "node", str(wrapper)]
    raise BenchError(f"Claude Code is not installed under {TESTS_NODE_MODULES}: run `npm ci --prefix tests` (make deps)")


def claude_version() -> str:
    done = subprocess.run([*claude_argv(), "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def run_claude(home: Path, api: str, prompt: str, mcp_url: str | None, key: str | None, tool_search: bool,
               extra: list[str]) -> subprocess.CompletedProcess:
    """`claude -p prompt` with Sluice as its one MCP server (none when `mcp_url` is None)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIXES) and k not in LEAKY_NAMES}
    env.update({
        "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"), "ANTHROPIC_BASE_URL": api,
        "ANTHROPIC_API_KEY": "sk-ant-perf-dummy-key", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "NO_COLOR": "1",
    })
    if not tool_search:
        env["ENABLE_TOOL_SEARCH"] = "false"
    argv = [*claude_argv(), "-p", prompt, "--strict-mcp-config", *extra]
    if mcp_url:
        config = {"mcpServers": {MCP_SERVER_NAME: {"type": "http", "url": mcp_url,
                                                   "headers": {"Authorization": f"Bearer {key}"}}}}
        argv += ["--mcp-config", json.dumps(config), "--allowedTools", f"mcp__{MCP_SERVER_NAME}"]
    proc = subprocess.Popen(argv, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CLAUDE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise BenchError(f"claude -p ran over {CLAUDE_TIMEOUT} s:\n{out}\n{err[-3000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---------------------------------------------------------------- the task

@dataclass
class Task:
    """One question over the CRM and the help desk: which customers (`filters` of
    crm.search_customers), and the prompt that asks it."""

    id: str
    prompt: str
    filters: dict

    def search_args(self) -> dict:
        return {**self.filters, "limit": 100}


TASKS = {
    "emea": Task("emea", "For our enterprise customers in EMEA, count their unresolved support tickets (open, pending "
                 "or on hold), how many of those are high or urgent, how many breached their SLA, and the annual "
                 "contract value of the accounts that have high or urgent unresolved tickets.",
                 {"segment": "enterprise", "region": "EMEA"}),
    "portfolio": Task("portfolio", "Across all our customers, count the unresolved support tickets (open, pending or "
                      "on hold), how many of those are high or urgent, how many breached their SLA, and the annual "
                      "contract value of the accounts that have high or urgent unresolved tickets; per account too.",
                      {}),
}

#: The aggregation, the same source text in every mode: the scripted model runs it on the tool
#: results it was sent (plain modes), or sends it inside the Code Mode script.
AGGREGATE = '''
def aggregate(customers, tickets_by_customer):
    rows = []
    for c in customers:
        unresolved = [t for t in tickets_by_customer[c["id"]] if t["status"] in ("open", "pending", "on_hold")]
        hot = [t for t in unresolved if t["priority"] in ("high", "urgent")]
        rows.append({"id": c["id"], "name": c["name"], "unresolved": len(unresolved), "high_or_urgent": len(hot),
                     "sla_breached": sum(1 for t in unresolved if t["sla_breached"])})
    return {
        "accounts": len(rows),
        "unresolved": sum(r["unresolved"] for r in rows),
        "high_or_urgent": sum(r["high_or_urgent"] for r in rows),
        "sla_breached": sum(r["sla_breached"] for r in rows),
        "acv_at_risk": sum(c["annual_contract_value"] for c, r in zip(customers, rows) if r["high_or_urgent"]),
        "by_account": rows,
    }
'''
SEARCH_CUSTOMERS, LIST_TICKETS = "crm__search_customers", "hd__list_tickets"


def aggregate(customers: list[dict], tickets_by_customer: dict[str, list[dict]]) -> dict:
    scope: dict[str, Any] = {}
    exec(AGGREGATE, scope)
    return scope["aggregate"](customers, tickets_by_customer)


def expected_answer(task: Task) -> dict:
    """The aggregate computed straight from the business servers' data set."""
    sys.path.insert(0, str(SERVERS_DIR))
    import business_server as data

    customers = sorted((c for c in data.CUSTOMERS if all(c[k] == v for k, v in task.filters.items())),
                       key=lambda c: c["name"])
    return aggregate(customers, {c["id"]: [t for t in data.TICKETS if t["customer_id"] == c["id"]] for c in customers})


def answer_text(result: dict) -> str:
    return "ANSWER " + json.dumps(result, sort_keys=True)


def code_script(task: Task) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in task.search_args().items())
    return (
        f"found = crm.search_customers({args})\n"
        "customers = found['customers']\n"
        "pages = parallel(*[(lambda c=c: hd.list_tickets(customer_id=c['id'])) for c in customers])\n"
        "tickets_by_customer = {c['id']: page['tickets'] for c, page in zip(customers, pages)}\n"
        + AGGREGATE +
        "result = aggregate(customers, tickets_by_customer)\n"
    )


def parsed_results(body: dict, name: str) -> list[tuple[dict, Any]]:
    """(input, JSON of the result text) for each call of `name` in the conversation, in order."""
    from scripted_anthropic import result_text, tool_results, tool_uses

    by_id = {r.get("tool_use_id"): r for r in tool_results(body)}
    out = []
    for use in tool_uses(body):
        if use.get("name") == name and use.get("id") in by_id:
            text = result_text(by_id[use["id"]])
            try:
                out.append((use.get("input") or {}, json.loads(text)))
            except ValueError:
                raise BenchError(f"the result of {name} is not JSON: {text[:300]!r}") from None
    return out


def plain_steps(task: Task, tool_search: bool) -> list:
    from scripted_anthropic import Call, Step

    search, tickets = TOOL_PREFIX + SEARCH_CUSTOMERS, TOOL_PREFIX + LIST_TICKETS

    def read_tickets(body: dict) -> Step:
        [(_, found)] = parsed_results(body, search)
        calls = [Call(tickets, {"customer_id": c["id"]}) for c in found["customers"]]
        return Step("Reading the tickets of each account.", calls)

    def final(body: dict) -> Step:
        [(_, found)] = parsed_results(body, search)
        pages = {inp["customer_id"]: page["tickets"] for inp, page in parsed_results(body, tickets)}
        return Step(answer_text(aggregate(found["customers"], pages)))

    steps = [Step("Finding the customers.", [Call(search, task.search_args())]), read_tickets, final]
    if tool_search:
        steps.insert(0, Step("Loading the tools.", [Call("ToolSearch", {"query": f"select:{search},{tickets}"})]))
    return steps


def code_steps(task: Task) -> list:
    from scripted_anthropic import Call, Step, last_result_text

    search, run = (TOOL_PREFIX + n for n in ("search_tools", "run_script"))

    def final(body: dict) -> Step:
        text = last_result_text(body, run)
        marker = text.rfind("result = ")
        if marker < 0:
            raise BenchError(f"run_script returned no result: {text[:500]!r}")
        return Step(answer_text(json.loads(text[marker + len("result = "):])))

    def write_script(body: dict) -> Step:
        # The script is written from the stubs the searches returned; check they were there.
        from scripted_anthropic import result_text, results_for

        found = "\n".join(result_text(r) for r in results_for(body, search))
        for stub in ("def search_customers(", "def list_tickets("):
            if stub not in found:
                raise BenchError(f"search_tools returned no `{stub}` stub: {found[:800]!r}")
        return Step("Running a script that reads the tickets and aggregates.", [Call(run, {"script": code_script(task)})])

    # Sluice lists the meta-tools with `_meta["anthropic/alwaysLoad"]`, so Claude Code offers them
    # up front even with its tool search on (no ToolSearch step), and search answers carry the
    # stubs of their best matches (no get_tool_stubs step): two searches at once, one script.
    return [
        Step("Looking for the tools.", [
            Call(search, {"query": "search customers by segment and region", "limit": 3}),
            Call(search, {"query": "list support tickets of a customer", "limit": 3}),
        ]),
        write_script,
        final,
    ]


MODES = [
    # (id, label, key, tool search, extra claude args)
    ("plain_all", "plain, all tools (ENABLE_TOOL_SEARCH=false)", "plain", False, []),
    ("plain_search", "plain, tool search (Claude Code's default)", "plain", True, []),
    ("code", "Code Mode (Claude Code's default)", "code", True, []),
    ("code_all", "Code Mode, ENABLE_TOOL_SEARCH=false", "code", False, []),
    ("lean_plain", "plain, Claude Code's own tools off (--tools \"\")", "plain", False, ["--tools", ""]),
    ("lean_code", "Code Mode, Claude Code's own tools off (--tools \"\")", "code", False, ["--tools", ""]),
]


def play(task: Task, mode: tuple, sluice: Sluice, keys: dict[str, str], counter: Counter, work: Path,
         expected: dict) -> dict:
    from scripted_anthropic import ScriptedAnthropic

    ident, label, kind, tool_search, extra = mode
    steps = code_steps(task) if kind == "code" else plain_steps(task, tool_search)
    record = work / f"requests-{task.id}-{ident}.jsonl"
    with ScriptedAnthropic(steps, record_path=str(record)) as fake:
        started = time.monotonic()
        done = run_claude(work / f"home-{task.id}-{ident}", fake.base_url, task.prompt, sluice.url, keys[kind], tool_search, extra)
        seconds = time.monotonic() - started
        requests = list(fake.requests)
        played = [step for _, step in fake.played]
    messages = [r["body"] for r in requests if r["method"] == "POST" and r["path"].split("?")[0] == "/v1/messages"]
    other = [f"{r['method']} {r['path']}" for r in requests if r["method"] == "POST" and r["path"].split("?")[0] != "/v1/messages"]
    per_request = [request_tokens(counter, body) for body in messages]
    want = answer_text(expected)
    problems = []
    if done.returncode != 0:
        problems.append(f"claude exited {done.returncode}: {done.stderr[-500:]}")
    if want not in done.stdout:
        problems.append(f"the final answer is not the expected aggregate: {done.stdout[-500:]!r}")
    if not played or played[-1] != len(steps) - 1:
        problems.append(f"the script did not reach its last step (steps played {played})")
    total = {k: sum(r[k] for r in per_request) for k in ("system", "messages", "tools_mcp", "tools_claude", "total")}
    total["claude_alone_per_request"] = alone(task, tool_search, extra, counter, work)
    total["mcp_side"] = total["total"] - len(messages) * total["claude_alone_per_request"]
    return {
        "task": task.id, "id": ident, "label": label, "key": kind, "tool_search": tool_search, "extra_args": extra,
        "requests": len(messages), "other_requests": other, "steps_played": played, "seconds": round(seconds, 1),
        "per_request": per_request, "total": total, "problems": problems, "stdout": done.stdout[-2000:],
    }


def alone(task: Task, tool_search: bool, extra: list[str], counter: Counter, work: Path) -> int:
    """Tokens of the first request Claude Code sends with no MCP server at all (same prompt and
    settings): its own part of every request (system prompt, its tools, its reminders)."""
    from scripted_anthropic import ScriptedAnthropic, Step

    name = f"alone-{task.id}-{'search' if tool_search else 'all'}{'-lean' if extra else ''}"
    with ScriptedAnthropic([Step("OK")], is_main=lambda body: True) as fake:
        done = run_claude(work / f"home-{name}", fake.base_url, task.prompt, None, None, tool_search, extra)
        bodies = fake.message_requests()
    if done.returncode != 0 or not bodies:
        raise BenchError(f"Claude Code without MCP failed ({done.returncode}): {done.stderr[-500:]}")
    (work / f"requests-{name}.json").write_text(json.dumps(bodies[0]))
    return request_tokens(counter, bodies[0])["total"]


# ---------------------------------------------------------------- the run


def machine() -> str:
    cpus = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")]
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return (f"nproc {os.cpu_count()}, CPU {cpus[0] if cpus else 'unknown'}, {mem_kb / 1024 / 1024:.0f} GiB RAM, "
            f"Linux {platform.release()}")


def commit() -> str:
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "no commit yet"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def task_table(task: dict, claude_version: str) -> list[str]:
    runs = {r["id"]: r for r in task["runs"]}
    base = runs.get("plain_all", {}).get("total", {}).get("total")
    search = runs.get("plain_search", {}).get("total", {}).get("total")
    base_mcp = runs.get("plain_all", {}).get("total", {}).get("mcp_side")
    search_mcp = runs.get("plain_search", {}).get("total", {}).get("mcp_side")
    expected = task["expected"]
    out = [
        f"Task `{task['id']}`: \"{task['prompt']}\" ({expected['accounts']} accounts, "
        f"{task['tickets_read']} tickets read from the help desk; answer: {expected['unresolved']} unresolved, "
        f"{expected['high_or_urgent']} high or urgent, {expected['sla_breached']} SLA breaches, "
        f"{expected['acv_at_risk']:,} ACV at risk). Claude Code {claude_version}, one turn, every request to the "
        f"model counted:",
        "",
        "| mode | requests | system | messages | MCP tool defs | Claude Code's tool defs | total input tokens "
        "| ÷ plain, all tools | ÷ plain, tool search | answer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in task["runs"]:
        t = r["total"]
        out.append(
            f"| {r['label']} | {r['requests']} | {t['system']:,} | {t['messages']:,} | {t['tools_mcp']:,} | "
            f"{t['tools_claude']:,} | {t['total']:,} | {pct(t['total'], base) if base else ''} | "
            f"{pct(t['total'], search) if search else ''} | {'right' if not r['problems'] else 'FAILED'} |")
    out += [
        "",
        "The same turns less Claude Code's own part of each request (the first request it sends with no MCP "
        "server, same prompt and settings), i.e. what the MCP side adds: tool definitions, the deferred-tool "
        "list, the calls and their results:",
        "",
        "| mode | Claude Code alone, per request | × requests | MCP side | ÷ plain, all tools | ÷ plain, tool search |",
        "|---|---|---|---|---|---|",
    ]
    for r in task["runs"]:
        t = r["total"]
        out.append(
            f"| {r['label']} | {t['claude_alone_per_request']:,} | {r['requests']} | {t['mcp_side']:,} | "
            f"{pct(t['mcp_side'], base_mcp) if base_mcp else ''} | {pct(t['mcp_side'], search_mcp) if search_mcp else ''} |")
    lean_plain, lean_code = runs.get("lean_plain"), runs.get("lean_code")
    if lean_plain and lean_code:
        out += ["", f"With Claude Code's own tools off, Code Mode's turn is "
                    f"{pct(lean_code['total']['total'], lean_plain['total']['total'])} of the plain one "
                    f"({lean_code['total']['total']:,} against {lean_plain['total']['total']:,} tokens)."]
    out += ["", "Per request (input tokens, in order):", ""]
    for r in task["runs"]:
        counts = ", ".join(f"{p['total']:,}" for p in r["per_request"])
        out.append(f"- {r['label']}: {counts}")
    return out


def report(results: dict) -> str:
    cat = results["catalog"]
    published = ", ".join(f"{n} {cat['by_server'][n]}" for n in cat["published"])
    out = [
        f"Catalog: {cat['tools']} tools from {cat['servers']} servers ({cat['published_tools']} from published MCP "
        f"servers: {published}; {cat['own_tools']} from "
        f"perf/servers/business_server.py: crm {cat['by_server'].get('crm', 0)}, helpdesk "
        f"{cat['by_server'].get('helpdesk', 0)}). Tokens: {results['tokenizer']}, of compact JSON.",
        "",
        "| tool definitions | tools | tokens | Code Mode ÷ plain |",
        "|---|---|---|---|",
        f"| plain: as Claude Code sends them (name, description, input_schema) | {cat['tools']} | "
        f"{cat['plain_claude']:,} | |",
        f"| Code Mode: search_tools, get_tool_stubs, run_script, the same way | 3 | {cat['code_claude']:,} | "
        f"{pct(cat['code_claude'], cat['plain_claude'])} |",
        f"| plain: tools/list definitions as Sluice lists them | {cat['tools']} | {cat['plain_list']:,} | |",
        f"| Code Mode: tools/list definitions | 3 | {cat['code_list']:,} | {pct(cat['code_list'], cat['plain_list'])} |",
    ]
    if cat.get("claude_plain_request"):
        out.append(f"| plain: the mcp__ tools in Claude Code's first request (ENABLE_TOOL_SEARCH=false) | "
                   f"{cat['claude_plain_request_tools']} | {cat['claude_plain_request']:,} | |")
    for task in results["tasks"]:
        out += [""] + task_table(task, results["claude_version"])
    problems = [f"{t['id']}, {r['label']}: {p}" for t in results["tasks"] for r in t["runs"] for p in r["problems"]]
    if problems:
        out += ["", "**Failures:**", ""] + [f"- {p}" for p in problems]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sluice", help="the sluice binary to run (default: $CARGO_TARGET_DIR/release/sluice, built first)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--modes", default=",".join(m[0] for m in MODES),
                   help=f"task modes to play, comma-separated (default all: {', '.join(m[0] for m in MODES)})")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"tasks to play (default all: {', '.join(TASKS)})")
    p.add_argument("--record", action="store_true", help="append the results to perf/RESULTS.md")
    p.add_argument("--note", action="append", default=[], help="a note recorded with the results")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    ensure_servers()
    reexec_in_servers_venv()
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    build_cmd = build(args)
    binary = sluice_binary(args)
    if not binary.exists():
        raise BenchError(f"{binary} does not exist: build it (cargo build --release -p sluice) or pass --sluice")
    work = Path(tempfile.mkdtemp(prefix="sluice-tokens-"))
    print(f"work folder: {work}", flush=True)
    counter = Counter()
    keys = {"plain": secrets.token_urlsafe(24), "code": secrets.token_urlsafe(24)}
    servers = catalog_servers(work)
    sluice = Sluice(binary, work, servers, [
        {"name": "plain", "key": keys["plain"], "tools": ["*"]},
        {"name": "code", "key": keys["code"], "tools": ["*"], "code_mode": True},
    ])
    try:
        ready = sluice.wait_ready(list(servers))
        plain, code = Mcp(sluice.url, keys["plain"]), Mcp(sluice.url, keys["code"])
        plain_tools, code_tools = plain.tools(), code.tools()
        plain.close()
        code.close()
        (work / "tools-plain.json").write_text(json.dumps(plain_tools, indent=1))
        by_server: dict[str, int] = {}
        prefixes = {spec.get("prefix", name): name for name, spec in servers.items()}
        for tool in plain_tools:
            server = prefixes.get(tool["name"].split("__", 1)[0], "?")
            by_server[server] = by_server.get(server, 0) + 1
        published = sorted(n for n in by_server if n not in OWN_SERVERS)
        catalog = {
            "tools": len(plain_tools), "servers": len(by_server), "by_server": by_server,
            "published": published,
            "published_tools": sum(v for k, v in by_server.items() if k not in OWN_SERVERS),
            "own_tools": sum(v for k, v in by_server.items() if k in OWN_SERVERS),
            "plain_claude": counter.json([as_claude_tool(t) for t in plain_tools]),
            "code_claude": counter.json([as_claude_tool(t) for t in code_tools]),
            "plain_list": counter.json(plain_tools),
            "code_list": counter.json(code_tools),
            "code_tools": sorted(t["name"] for t in code_tools),
        }
        print(json.dumps({k: v for k, v in catalog.items() if k != "by_server"}), flush=True)
        if catalog["code_tools"] != ["get_tool_stubs", "run_script", "search_tools"]:
            raise BenchError(f"the Code Mode key sees {catalog['code_tools']}")

        tasks = []
        for task_id in args.tasks.split(","):
            task = TASKS[task_id]
            expected = expected_answer(task)
            sys.path.insert(0, str(SERVERS_DIR))
            import business_server as data

            ids = {row["id"] for row in expected["by_account"]}
            entry = {"id": task.id, "prompt": task.prompt, "expected": expected, "runs": [],
                     "tickets_read": sum(1 for t in data.TICKETS if t["customer_id"] in ids)}
            for mode in MODES:
                if mode[0] not in set(args.modes.split(",")):
                    continue
                print(f"playing {task.id}: {mode[1]} ...", flush=True)
                result = play(task, mode, sluice, keys, counter, work, expected)
                print(f"  {result['requests']} requests, {result['total']['total']:,} tokens, {result['seconds']} s"
                      + (f"; PROBLEMS: {result['problems']}" if result["problems"] else ""), flush=True)
                entry["runs"].append(result)
            tasks.append(entry)
        first = sorted(work.glob("requests-*-plain_all.jsonl"))
        if first:
            body = json.loads(first[0].read_text().splitlines()[0])["body"]
            mcp_tools = [t for t in body.get("tools") or [] if t["name"].startswith(TOOL_PREFIX)]
            catalog["claude_plain_request"] = counter.json(mcp_tools)
            catalog["claude_plain_request_tools"] = len(mcp_tools)
    finally:
        sluice.stop()
    results = {
        "date": f"{started:%Y-%m-%d %H:%M} UTC", "machine": machine(), "load_average_at_start": load,
        "commit": commit(), "build": build_cmd, "sluice": str(binary), "claude_version": claude_version(),
        "tokenizer": counter.name, "catalog": catalog, "tasks": tasks,
        "ready": ready.get("servers"),
    }
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print()
    print(text)
    if args.record:
        lines = [
            f"## Token economy: {results['date']}", "",
            f"- Machine: {results['machine']}; load average at start {', '.join(f'{x:.2f}' for x in load)}",
            f"- Commit: {results['commit']}",
            f"- Run: `{shlex.join(['python3', 'perf/token_economy.py', *sys.argv[1:]])}`; build: `{shlex.join(build_cmd)}`",
            f"- Claude Code {results['claude_version']}; model: tests/fixtures/scripted_anthropic.py; tokenizer "
            f"{counter.name}",
        ] + [f"- Note: {n}" for n in args.note]
        with open(RESULTS, "a") as out:
            out.write("\n" + "\n".join(lines) + "\n\n" + text + "\n")
        print(f"\nappended to {RESULTS}")
    print(f"\nresults: {work / 'results.json'}")
    return 1 if any(r["problems"] for t in tasks for r in t["runs"]) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"token_economy FAILED: {e}", file=sys.stderr)
        sys.exit(1)
