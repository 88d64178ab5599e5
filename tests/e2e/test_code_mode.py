"""Code Mode: the meta-tools (`search_tools`, `get_tool_stubs`, `run_script`) instead of the
catalog, scripts that call tools through the gateway, and the sandbox those scripts run in.

Real gateway, real upstreams (server-everything over stdio as `everything`, the Python fixture
server as `py`, `py2` and `pyd`, the standard-library fault fixture as `hidden`), real clients
(the official Python SDK in both eras, raw httpx). The Python server's `record` and `hold` tools
append to a file, which shows exactly which calls reached it, and lets a test prove that two
calls of one script ran at the same time (a `hold` released by a `record` on another upstream).

Keys of the main gateway:
  tester        every tool, no Code Mode: the catalog, plus the meta-tools for `hidden`, a
                server configured `code_mode: only`
  coder         Code Mode, granted a few tools (never `py__record`)
  direct-coder  Code Mode, every tool: the meta-tools plus the tools of `pyd` (`code_mode:
                direct`)
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import anyio
import httpx
import pytest

from harness import (
    NEW_ERA,
    PY_TOOLS,
    PYTHON,
    TESTS,
    Gateway,
    RawMcp,
    StatelessMcp,
    run_in_group,
    sdk_http_session,
    sluice_bin,
    stdio_everything,
    stdio_py,
    wait_until,
    wire,
)

INVALID_PARAMS = -32602
META_TOOLS = {"search_tools", "get_tool_stubs", "run_script"}

CODER, CODER_KEY = "coder", "coder-secret-key-0001"
DIRECT, DIRECT_KEY = "direct-coder", "direct-coder-secret-key-0002"
CODER_TOOLS = [
    "everything__echo", "everything__get-sum", "py__add", "py__hold", "py__whoami", "py__fail",
    "py2__record", "hidden__echo", "hidden__pid",
]
KEYS = [
    {"name": CODER, "key": CODER_KEY, "code_mode": True, "tools": CODER_TOOLS},
    {"name": DIRECT, "key": DIRECT_KEY, "code_mode": True, "tools": ["*"]},
]

#: The main gateway's script limits: small enough that every limit is quick to hit.
CPU_LIMIT_S = 3
LIMITS = {"workers": 2, "cpu_limit": f"{CPU_LIMIT_S}s", "time_limit": "60s", "memory_mb": 128,
          "output_limit": 2000, "max_tool_calls": 5}
OUTPUT_LIMIT = LIMITS["output_limit"]
MAX_TOOL_CALLS = LIMITS["max_tool_calls"]
#: The second gateway's wall-clock limit.
TIME_LIMIT_S = 2

#: server-everything asks its client for roots/list 350 ms after `initialized` (see
#: test_stateless.py); the tests let that pass before they call anything.
UPSTREAM_SETTLE = 1.5

FAULTY_SERVER = TESTS / "fixtures" / "faulty_server.py"
#: Python upstreams may take long to start on a loaded machine: never give up on them early.
PATIENT = {"connect_timeout": "60s"}


def stdio_fast() -> dict:
    """The standard-library fault fixture over stdio (tools `echo(text)`, `pid`, ...)."""
    return {"stdio": {"command": str(PYTHON), "args": [str(FAULTY_SERVER), "stdio"]}}


# --------------------------------------------------------------------------- fixtures and helpers


def synced(gw: Gateway, tools: set[str]) -> None:
    """Wait until every upstream has synced: `tools` are in the catalog of the default key
    (the gateway is ready before its upstreams are)."""

    def catalog() -> set[str]:
        client = gw.client()
        try:
            client.initialize()
            names = client.tool_names()
        finally:
            client.close()
        # An `only` server's tools are not listed, but its namespace shows in the stubs.
        hidden = {t for t in tools if t not in names}
        if hidden and META_TOOLS <= names:
            client = gw.client()
            try:
                client.initialize()
                stubs = text_of(client.call_tool("get_tool_stubs", {"tools": sorted(hidden)}).get("result", {}))
            finally:
                client.close()
            hidden = {t for t in hidden if f"Tool `{t}`" not in stubs}
        return not hidden

    try:
        wait_until(catalog, 90, f"the upstreams to sync ({sorted(tools)})", interval=0.5)
    except BaseException:
        gw.stop()
        raise


@pytest.fixture(scope="module")
def cm(tmp_path_factory) -> Iterator[Gateway]:
    """The main Code Mode gateway; `cm.record_file` is where `py` and `py2` record calls."""
    tmp = tmp_path_factory.mktemp("code-mode")
    record_file = tmp / "py-calls.txt"
    record_file.write_text("")
    servers = {
        "everything": stdio_everything(),
        "py": {**stdio_py(record_file), **PATIENT},
        "py2": {**stdio_py(record_file), **PATIENT},
        "pyd": {**stdio_py(), **PATIENT, "code_mode": "direct"},
        "hidden": {**stdio_fast(), **PATIENT, "code_mode": "only"},
    }
    gw = Gateway(tmp, servers, name="sluice-code-mode", keys=copy.deepcopy(KEYS),
                 top={"code_mode": dict(LIMITS), "audit": {"include_arguments": True}})
    gw.record_file = record_file
    synced(gw, {"everything__echo", "py__add", "py2__add", "pyd__add", "hidden__echo"})
    time.sleep(UPSTREAM_SETTLE)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> Iterator[Gateway]:
    """A gateway with `code_mode.time_limit` of TIME_LIMIT_S and one server, `py`, in the
    default mode (`scripts`): `coder` runs scripts, `tester` sees the plain catalog."""
    tmp = tmp_path_factory.mktemp("code-mode-timed")
    record_file = tmp / "py-calls.txt"
    record_file.write_text("")
    keys = [{"name": CODER, "key": CODER_KEY, "code_mode": True, "tools": ["*"]}]
    gw = Gateway(tmp, {"py": {**stdio_py(record_file), **PATIENT}}, name="sluice-code-mode-timed", keys=keys,
                 top={"code_mode": {"time_limit": f"{TIME_LIMIT_S}s"}})
    gw.record_file = record_file
    synced(gw, {"py__add"})
    yield gw
    gw.stop()


@pytest.fixture
def coder(cm) -> Iterator[RawMcp]:
    """A raw client of the main gateway with an initialized session, presenting `coder`'s key."""
    client = cm.client(CODER_KEY, client=httpx.Client(timeout=httpx.Timeout(10, read=120)))
    client.initialize()
    yield client
    client.close()


def text_of(result: dict) -> str:
    return "".join(block.get("text", "") for block in result.get("content", []) if block.get("type") == "text")


def run(client: RawMcp | StatelessMcp, script: str) -> tuple[str, bool]:
    """Run `script` with `run_script`; the result's text and its isError."""
    if isinstance(client, RawMcp):
        message = client.call_tool("run_script", {"script": script})
    else:
        _, message = client.call_tool("run_script", {"script": script})
    assert "result" in message, f"run_script answered with a JSON-RPC error: {message}"
    result = message["result"]
    assert set(block["type"] for block in result.get("content", [])) == {"text"}, result
    return text_of(result), result.get("isError") is True


def ok(client: RawMcp | StatelessMcp, script: str) -> str:
    """Run `script`, which must succeed; its text."""
    text, is_error = run(client, script)
    assert not is_error, f"the script failed:\n{script}\n---\n{text}"
    return text


def result_value(text: str) -> Any:
    """The JSON after `result = ` on the last line of a run_script answer."""
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("result = "), f"no `result = ` line at the end of:\n{text}"
    return json.loads(last[len("result = "):])


def records(record_file: Path) -> list[str]:
    return record_file.read_text().splitlines()


def audit(gw: Gateway) -> list[dict]:
    return [json.loads(line) for line in gw.audit_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_of_run(gw: Gateway, marker: str, children: int) -> tuple[dict, list[dict]]:
    """The audit record of the run_script call whose script contains `marker` and the records
    of its `children` tool calls (waits for them: audit lines are written asynchronously)."""

    def found():
        entries = audit(gw)
        parents = [e for e in entries if e.get("tool") == "run_script"
                   and marker in json.dumps(e.get("arguments"))]
        if len(parents) != 1:
            return None
        kids = [e for e in entries if e.get("parent") == parents[0]["request_id"]]
        return (parents[0], kids) if len(kids) >= children else None

    parent, kids = wait_until(found, 10, f"the audit records of the script marked {marker}")
    assert len(kids) == children, f"want {children} child records, got {kids}"
    return parent, sorted(kids, key=lambda e: e["request_id"])


def assert_script_audit(parent: dict, kids: list[dict], key: str, calls: list[tuple[str, str, str]]) -> None:
    """`parent` is a run_script record of `key`; `kids` its children, call n of the script
    being `<parent id>.<n>` with (server, tool, status) as in `calls`, in order."""
    assert parent["server"] == "code_mode" and parent["tool"] == "run_script", parent
    assert parent["key"] == key and parent["method"] == "tools/call", parent
    assert parent.get("parent") is None, parent
    rid = parent["request_id"]
    want_ids = [f"{rid}.{n}" for n in range(1, len(calls) + 1)]
    assert [k["request_id"] for k in kids] == want_ids, kids
    for kid, (server, tool, status) in zip(kids, calls):
        assert kid["parent"] == rid, kid
        assert kid["key"] == key and kid["method"] == "tools/call", kid
        assert (kid["server"], kid["tool"], kid["status"]) == (server, tool, status), kid
        assert kid["session"] == parent["session"], (kid, parent)


# --------------------------------------------------------------------------- scripts the tests share


def aggregate_script(marker: str) -> str:
    """Two tools on two upstreams at once with parallel(...), their results added up:
    19 + 23 (server-everything, a text answer) and 100 + 200 (py, structured content)."""
    return f"""# {marker}
import re
text, added = parallel(lambda: everything.get_sum(a=19, b=23), lambda: py.add(a=100, b=200))
summed = float(re.search(r"is (-?[0-9]+(?:[.][0-9]+)?)", text).group(1))
print("everything said:", text)
print("py said:", added)
result = {{"total": summed + added["result"], "everything": text, "py": added}}
"""


def concurrency_script(tag: str) -> str:
    """py.hold waits until `release:<tag>` is in the record file; py2.record (another upstream)
    writes it. One after the other, the hold would time out: both answering proves them
    concurrent."""
    return f"""
held, recorded = parallel(lambda: py.hold(tag={tag!r}, timeout=20), lambda: py2.record(tag="release:" + {tag!r}))
result = [held, recorded]
"""


def denied_script(tag: str) -> str:
    """`py__record` is not granted to `coder`: by exposed name it raises ToolError, and it is
    no function of the `py` namespace either."""
    return f"""
try:
    call_tool("py__record", tag={tag!r})
    print("NOT REFUSED")
except ToolError as e:
    print("refused:", e)
try:
    py.record(tag={tag!r})
    print("NOT REFUSED")
except ToolError as e:
    print("no such function:", e)
"""


# --------------------------------------------------------------------------- 1. the official SDK client


def test_sdk_session_client_searches_reads_stubs_and_runs_scripts(cm):
    """The official SDK (session era) with a Code Mode key: the meta-tools alone are listed;
    search finds tools by words; stubs show signatures and docstrings; a script calls two
    upstreams concurrently and adds up their results; a tool not granted raises in the script
    and never reaches its upstream; the audit log has the run and each of its calls."""
    marker, tag, denied_tag = (f"{w}-{uuid.uuid4().hex[:8]}" for w in ("aggregate", "together", "denied"))

    async def scenario():
        async with sdk_http_session(cm.url, CODER_KEY) as session:
            listed = await session.list_tools()
            calls = {}
            for name, arguments in (
                ("search_sum", ("search_tools", {"query": "sum of two numbers"})),
                ("search_add", ("search_tools", {"query": "add integers", "limit": 5})),
                ("search_record", ("search_tools", {"query": "record tag file"})),
                ("stubs", ("get_tool_stubs", {"tools": ["everything.get_sum", "py__add"]})),
                ("stubs_py", ("get_tool_stubs", {"namespaces": ["py"]})),
                ("aggregate", ("run_script", {"script": aggregate_script(marker)})),
                ("together", ("run_script", {"script": concurrency_script(tag)})),
                ("denied", ("run_script", {"script": denied_script(denied_tag)})),
            ):
                calls[name] = wire(await session.call_tool(*arguments))
            return listed, calls

    listed, calls = anyio.run(scenario)
    assert {tool.name for tool in listed.tools} == META_TOOLS, [tool.name for tool in listed.tools]
    # Claude Code loads them up front instead of behind its ToolSearch tool (one request less a turn).
    for tool in listed.tools:
        assert (tool.meta or {}).get("anthropic/alwaysLoad") is True, tool
    for name, result in calls.items():
        assert result.get("isError") is not True, f"{name}: {result}"
    texts = {name: text_of(result) for name, result in calls.items()}

    # Search: `namespace.function — exposed name — summary`, granted tools only.
    assert "everything.get_sum \u2014 everything__get-sum \u2014 " in texts["search_sum"], texts["search_sum"]
    assert "py.add \u2014 py__add \u2014 Add two integers" in texts["search_add"], texts["search_add"]
    # The best matches come with their stubs, so a script can be written without get_tool_stubs.
    assert "Stubs of the first" in texts["search_add"] and "def add(a: int, b: int)" in texts["search_add"], texts["search_add"]
    assert "py2.record \u2014 py2__record \u2014 " in texts["search_record"], texts["search_record"]
    assert "py.record" not in texts["search_record"] and "py__record" not in texts["search_record"], texts["search_record"]

    # Stubs: a class per namespace, typed signatures, the tools' descriptions as docstrings.
    stubs = texts["stubs"]
    for expected in ("class everything:", "@staticmethod", "def get_sum(a: float, b: float)",
                     "Returns the sum of two numbers", "Tool `everything__get-sum`",
                     "class py:", "def add(a: int, b: int)", "Add two integers.", "Tool `py__add`"):
        assert expected in stubs, f"{expected!r} not in the stubs:\n{stubs}"
    assert "def add(" in texts["stubs_py"] and "def hold(" in texts["stubs_py"], texts["stubs_py"]
    assert "def record(" not in texts["stubs_py"], f"an ungranted tool in the stubs:\n{texts['stubs_py']}"

    # The aggregate of two upstreams' answers.
    aggregate = texts["aggregate"]
    assert "everything said: The sum of 19 and 23 is 42" in aggregate, aggregate
    value = result_value(aggregate)
    assert value["total"] == 342, aggregate
    assert value["py"] == {"result": 300}, aggregate

    # Concurrency: the hold on `py` was released by the record on `py2`, in the same batch.
    assert f"released {tag}" in texts["together"], texts["together"]
    assert f"hold-start:{tag}" in records(cm.record_file) and f"release:{tag}" in records(cm.record_file)

    # The ungranted tool: refused inside the script, never reached py.
    denied = texts["denied"]
    assert f"refused: tool `py__record` is not granted to key `{CODER}`" in denied, denied
    assert "no such function:" in denied and "NOT REFUSED" not in denied, denied
    assert not [line for line in records(cm.record_file) if denied_tag in line], records(cm.record_file)

    # The audit log: each run, and each of its calls as a child (`<id>.<n>`, parent = id).
    parent, kids = audit_of_run(cm, marker, 2)
    assert parent["status"] == "ok", parent
    assert_script_audit(parent, kids, CODER, [("everything", "everything__get-sum", "ok"), ("py", "py__add", "ok")])
    parent, kids = audit_of_run(cm, denied_tag, 1)
    assert_script_audit(parent, kids, CODER, [("py", "py__record", "denied")])
    assert "`py__record`" in kids[0]["error"] and f"`{CODER}`" in kids[0]["error"], kids[0]
    assert kids[0]["upstream_ms"] is None, kids[0]


def test_sdk_client_in_2026_mode_runs_scripts(cm):
    """The official SDK as a 2026-07-28 client (`Client(mode="2026-07-28")`) with a Code Mode
    key: the meta-tools alone are listed, and search, stubs and a two-upstream script work."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    marker = f"sdk-2026-{uuid.uuid4().hex[:8]}"

    async def scenario():
        with anyio.fail_after(120):
            headers = {"Authorization": f"Bearer {CODER_KEY}"}
            async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http:
                transport = streamable_http_client(cm.url, http_client=http)
                async with Client(transport, mode=NEW_ERA, cache=None) as client:
                    assert client.protocol_version == NEW_ERA, client.protocol_version
                    listed = await client.list_tools()
                    found = await client.call_tool("search_tools", {"query": "echo message"})
                    stubs = await client.call_tool("get_tool_stubs", {"tools": ["everything__echo"]})
                    ran = await client.call_tool("run_script", {"script": aggregate_script(marker)})
                    return listed, wire(found), wire(stubs), wire(ran)

    listed, found, stubs, ran = anyio.run(scenario)
    assert {tool.name for tool in listed.tools} == META_TOOLS, [tool.name for tool in listed.tools]
    for result in (found, stubs, ran):
        assert result.get("isError") is not True, result
    assert "everything.echo \u2014 everything__echo \u2014 " in text_of(found), found
    assert "def echo(message: str)" in text_of(stubs), text_of(stubs)
    assert result_value(text_of(ran))["total"] == 342, text_of(ran)
    parent, kids = audit_of_run(cm, marker, 2)
    assert_script_audit(parent, kids, CODER, [("everything", "everything__get-sum", "ok"), ("py", "py__add", "ok")])


# --------------------------------------------------------------------------- 4. the 2026-07-28 era, raw


def test_run_script_in_a_stateless_request(cm):
    """run_script as a raw MCP 2026-07-28 request (no session): the era's complete result,
    the script's calls made and audited as children of the request."""
    marker = f"stateless-{uuid.uuid4().hex[:8]}"
    client = StatelessMcp(cm.url, key=CODER_KEY)
    try:
        listed = client.result("tools/list")
        assert {t["name"] for t in listed["tools"]} == META_TOOLS, listed
        assert all(t.get("_meta", {}).get("anthropic/alwaysLoad") is True for t in listed["tools"]), listed
        response, message = client.call_tool("run_script", {"script": aggregate_script(marker)})
        assert response.status_code == 200 and "result" in message, f"HTTP {response.status_code} {message}"
        assert "mcp-session-id" not in response.headers, dict(response.headers)
        result = message["result"]
        assert result.get("resultType") == "complete", result
        assert result.get("isError") is not True, result
        assert result_value(text_of(result))["total"] == 342, result
        text, is_error = run(client, "print(hidden.echo(text='new era'))")
        assert not is_error and "echo: new era" in text, text
    finally:
        client.close()
    parent, kids = audit_of_run(cm, marker, 2)
    assert parent["request_id"] == str(message["id"]), (parent, message["id"])
    assert_script_audit(parent, kids, CODER, [("everything", "everything__get-sum", "ok"), ("py", "py__add", "ok")])


# --------------------------------------------------------------------------- 5. keys and servers


def test_code_mode_key_reaches_catalog_tools_only_through_scripts(coder):
    """A Code Mode key's direct tools/call of a catalog tool is refused (-32602, naming
    Code Mode); the same tool from a script answers. Tool errors raise ToolError."""
    message = coder.call_tool("everything__echo", {"message": "direct"})
    assert "error" in message and message["error"]["code"] == INVALID_PARAMS, message
    assert "reached through Code Mode" in message["error"]["message"], message
    assert f"`{CODER}`" in message["error"]["message"], message
    assert "Echo: scripted" in ok(coder, "everything.echo(message='scripted')")
    text = ok(coder, "try:\n    py.fail(reason='kaboom-cm')\nexcept ToolError as e:\n    print('caught', e)")
    assert "caught" in text and "kaboom-cm" in text, text
    text, is_error = run(coder, "py.fail(reason='uncaught-cm')")
    assert is_error and "ToolError" in text and "uncaught-cm" in text and "script line 1" in text, text


def test_direct_servers_show_to_code_mode_keys(cm):
    """A server configured `code_mode: direct` is listed (and callable) for a Code Mode key
    beside the meta-tools; the other servers only through scripts."""
    client = cm.client(DIRECT_KEY)
    try:
        client.initialize()
        names = client.tool_names()
        assert names == META_TOOLS | {f"pyd__{t}" for t in PY_TOOLS}, sorted(names)
        direct = client.call_tool("pyd__add", {"a": 20, "b": 22})
        assert direct.get("result", {}).get("structuredContent") == {"result": 42}, direct
        refused = client.call_tool("py__add", {"a": 1, "b": 1})
        assert refused.get("error", {}).get("code") == INVALID_PARAMS, refused
        assert "reached through Code Mode" in refused["error"]["message"], refused
        value = result_value(ok(client, "[pyd.add(a=1, b=2), py.add(a=3, b=4), everything.echo(message='x')]"))
        assert value == [{"result": 3}, {"result": 7}, "Echo: x"], value
    finally:
        client.close()


def test_only_servers_reach_every_key_through_scripts(cm):
    """A key without Code Mode lists the catalog; a server configured `code_mode: only` is not
    in it, and the key gets the meta-tools to reach it through scripts."""
    client = cm.client()
    try:
        client.initialize()
        names = client.tool_names()
        assert not [n for n in names if n.startswith("hidden__")], sorted(names)
        assert META_TOOLS <= names, sorted(names)
        for name in ("everything__echo", "everything__get-sum", "py__add", "py__record", "py2__record", "pyd__add"):
            assert name in names, f"{name} missing from the catalog of a key without Code Mode: {sorted(names)}"
        direct = client.call_tool("everything__echo", {"message": "plain"})
        assert "Echo: plain" in text_of(direct.get("result", {})), direct
        refused = client.call_tool("hidden__echo", {"text": "direct"})
        assert refused.get("error", {}).get("code") == INVALID_PARAMS, refused
        assert "reached through Code Mode" in refused["error"]["message"], refused
        found = text_of(client.call_tool("search_tools", {"query": "fault fixture echo"})["result"])
        assert "hidden.echo \u2014 hidden__echo \u2014 " in found, found
        value = result_value(ok(client, "hidden.echo(text='through a script')"))
        assert value == "echo: through a script", value
    finally:
        client.close()


def test_key_without_code_mode_lists_the_plain_catalog(timed):
    """Without `only` servers, a key without Code Mode lists exactly the catalog (no
    meta-tools), and cannot call the meta-tools; a Code Mode key of the same gateway lists
    only the meta-tools."""
    client = timed.client()
    try:
        client.initialize()
        assert client.tool_names() == {f"py__{t}" for t in PY_TOOLS}
        refused = client.call_tool("run_script", {"script": "1 + 1"})
        assert "error" in refused or refused.get("result", {}).get("isError") is True, refused
        assert "result = 2" not in json.dumps(refused), refused
    finally:
        client.close()
    coder = timed.client(CODER_KEY)
    try:
        coder.initialize()
        assert coder.tool_names() == META_TOOLS
        assert result_value(ok(coder, "py.add(a=2, b=3)")) == {"result": 5}
    finally:
        coder.close()


# --------------------------------------------------------------------------- 2. attacks, contained


# (case, script, what the error must say): each must end in isError with that text.
ATTACKS = [
    ("read a file", 'open("/etc/passwd").read()', ["NameError", "'open'"]),
    ("import socket", 'import socket\nsocket.create_connection(("127.0.0.1", 9))', ["ScriptRefused", "`import socket` is not allowed"]),
    ("import os", 'import os\nos.system("id")', ["ScriptRefused", "`import os` is not allowed"]),
    ("from os import", 'from os import system\nsystem("id")', ["ScriptRefused", "`import os` is not allowed"]),
    ("import subprocess", 'import subprocess\nsubprocess.run(["id"])', ["ScriptRefused", "`import subprocess` is not allowed"]),
    ("import ctypes", "import ctypes\nctypes.CDLL(None)", ["ScriptRefused", "`import ctypes` is not allowed"]),
    ("import importlib", 'import importlib\nimportlib.import_module("os")', ["ScriptRefused", "`import importlib` is not allowed"]),
    ("__import__", '__import__("os").system("id")', ["ScriptRefused", "`__import__` is not allowed"]),
    ("__builtins__", '__builtins__["open"]("/etc/passwd")', ["ScriptRefused", "`__builtins__` is not allowed"]),
    ("import sys for sys.modules", 'import sys\nsys.modules["os"].system("id")', ["ScriptRefused", "`import sys` is not allowed"]),
    ("sys.modules through an allowed module", 'import statistics\nstatistics.sys.modules["os"].listdir("/")',
     ["AttributeError", "`statistics.sys` is a module scripts cannot reach"]),
    ("real open through sys.modules", 'import statistics\nstatistics.sys.modules["builtins"].open("/etc/passwd").read()',
     ["AttributeError", "`statistics.sys` is a module scripts cannot reach"]),
    ("sys through from-import", 'from datetime import sys', ["ImportError", "sys"]),
    ("a module behind a module", 'import json\njson.decoder.scanstring', ["AttributeError", "`json.decoder` is a module scripts cannot reach"]),
    ("str.format reaching attributes", 'print("{0.__class__}".format(1))', ["ScriptRefused", "use an f-string"]),
    ("real eval through sys.modules", 'import statistics\nstatistics.sys.modules["builtins"].eval("1 + 1")',
     ["AttributeError", "`statistics.sys` is a module scripts cannot reach"]),
    ("dunder chain", "().__class__.__base__.__subclasses__()", ["ScriptRefused", "is not allowed"]),
    ("getattr dunder", 'getattr((), "__class__")', ["AttributeError", "`__class__` is not available"]),
    ("getattr built dunder", 'getattr(getattr((), "__cl" + "ass__"), "__subclasses__")()', ["AttributeError", "`__class__`"]),
    ("hasattr dunder", 'hasattr((), "__class__")', ["AttributeError", "`__class__` is not available"]),
    ("sys._getframe", "import sys\nsys._getframe(0)", ["ScriptRefused", "`import sys` is not allowed"]),
    ("_getframe through an allowed module", "import statistics\nstatistics.sys._getframe(0)",
     ["ScriptRefused", "the attribute `_getframe` is not allowed"]),
    ("generator gi_frame", "g = (x for x in [1])\nf = g.gi_frame", ["ScriptRefused", "the attribute `gi_frame` is not allowed"]),
    ("getattr gi_frame", 'g = (x for x in [1])\ngetattr(g, "gi_frame")', ["AttributeError", "`gi_frame` is not available"]),
    ("f_globals", "frame = None\nframe.f_globals['x']", ["ScriptRefused", "the attribute `f_globals` is not allowed"]),
    ("getattr f_globals", 'getattr(print, "f_globals")', ["AttributeError", "`f_globals` is not available"]),
    ("traceback frames", "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    e.__traceback__.tb_frame",
     ["ScriptRefused", "is not allowed"]),
    ("import gc", "import gc\ngc.get_objects()", ["ScriptRefused", "`import gc` is not allowed"]),
    ("import threading", "import threading\nthreading.Thread(target=print).start()", ["ScriptRefused", "`import threading` is not allowed"]),
    ("import _thread", "import _thread\n_thread.start_new_thread(print, ())", ["ScriptRefused", "`import _thread` is not allowed"]),
    ("_thread through sys.modules", 'import statistics\nstatistics.sys.modules["_thread"].start_new_thread(print, ())',
     ["AttributeError", "`statistics.sys` is a module scripts cannot reach"]),
    ("os.fork", "import os\nos.fork()", ["ScriptRefused", "`import os` is not allowed"]),
    ("fork through sys.modules", 'import statistics\nstatistics.sys.modules["os"].fork()', ["AttributeError", "`statistics.sys` is a module scripts cannot reach"]),
    ("eval", 'eval("1 + 1")', ["NameError", "'eval'"]),
    ("exec", 'exec("x = 1")', ["NameError", "'exec'"]),
    ("compile", 'compile("1", "x", "eval")', ["NameError", "'compile'"]),
    ("globals", "globals()", ["NameError", "'globals'"]),
    ("vars", "vars()", ["NameError", "'vars'"]),
    ("dir", "dir()", ["NameError", "'dir'"]),
    ("three-argument type", 'type("X", (object,), {})', ["TypeError"]),
    ("namespace internals", 'getattr(py, "_tools")', ["AttributeError", "`_tools` is not available"]),
    ("async code", "async def f():\n    pass", ["ScriptRefused", "async code is not available"]),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nf(0)", ["RecursionError", "script line"]),
    ("memory bomb", 'hoard = []\nwhile True:\n    hoard.append("x" * 10**6)', ["MemoryError|code_mode.memory_mb"]),
    ("one huge allocation", 'block = "x" * (1 << 31)', ["MemoryError|code_mode.memory_mb"]),
    ("infinite loop", "while True:\n    pass", ["code_mode.cpu_limit"]),
]


@pytest.mark.parametrize("script,expected", [pytest.param(s, e, id=c) for c, s, e in ATTACKS])
def test_attack_is_contained(coder, script, expected):
    """Each attack ends in a tool error (isError) that says what stopped it; after the ones
    that exhaust a limit, the next script runs normally."""
    started = time.monotonic()
    text, is_error = run(coder, script)
    elapsed = time.monotonic() - started
    assert is_error, f"the attack was not stopped ({elapsed:.1f}s):\n{script}\n---\n{text}"
    for want in expected:
        assert any(alternative in text for alternative in want.split("|")), (
            f"the error should say {want!r}:\n{script}\n---\n{text}")
    assert "result = " not in text, text
    assert len(text) < 4000, f"an error of {len(text)} characters:\n{text[:2000]}"
    if any(limit in want for want in expected for limit in ("Recursion", "Memory", "cpu_limit")):
        assert result_value(ok(coder, "6 * 7")) == 42, "the next script did not run normally"


def test_attack_writing_a_file_leaves_nothing(coder, tmp_path):
    """`open(path, "w")` is no builtin: NameError, and no file appears."""
    target = tmp_path / "written-by-a-script.txt"
    text, is_error = run(coder, f'open({str(target)!r}, "w").write("owned")')
    assert is_error and "NameError" in text and "'open'" in text, text
    assert not target.exists(), "a script wrote a file"


def test_a_module_never_leads_to_the_interpreter(coder, tmp_path):
    """The route an earlier version left open (an allowed module's `sys`, then `sys.modules`
    to `builtins`, `os` and the prelude) is closed with a clear error, and nothing runs. What
    holds if the interpreter checks are ever passed is shown by `sluice code-worker --probe`
    (test_probe_shows_every_escape_denied) and by the gateway refusing ungranted tools to any
    caller, the worker included (`call_tool` of a tool not granted, in the SDK tests)."""
    marker = tmp_path / "ran-a-program"
    script = f"""import statistics
modules = statistics.sys.modules
modules["builtins"].vars(modules["sluice_prelude"])["_guard"].active = False
modules["os"].system("touch {marker}")
"""
    text, is_error = run(coder, script)
    assert not marker.exists(), f"a script ran a program:\n{text}"
    assert is_error and "`statistics.sys` is a module scripts cannot reach" in text, text


def test_output_flood_is_cut_at_the_limit(coder):
    """Printing far more than `code_mode.output_limit`: the output is cut there with a note,
    and the script's result still comes back."""
    text = ok(coder, 'for i in range(100000):\n    print("x" * 100)\nresult = "done"')
    assert "code_mode.output_limit" in text, text[-500:]
    assert text.count("x") <= OUTPUT_LIMIT, f"{text.count('x')} bytes of output with a limit of {OUTPUT_LIMIT}"
    assert len(text) < OUTPUT_LIMIT + 500, len(text)
    assert result_value(text) == "done", text[-300:]


def test_result_flood_is_cut_at_the_limit(coder):
    """A result far larger than `code_mode.output_limit` (which bounds "printed output and
    result returned") comes back cut at the limit, with the note."""
    text = ok(coder, 'result = "y" * 100000')
    assert len(text) < OUTPUT_LIMIT + 500, (
        f"a result of {len(text)} characters came back with output_limit {OUTPUT_LIMIT}: {text[:100]}...")
    assert "code_mode.output_limit" in text, text[-300:]


def test_tool_call_flood_stops_at_max_tool_calls(cm, coder):
    """A script making more than `code_mode.max_tool_calls` calls: the one past the limit
    raises ToolError naming the setting, and no more than the limit reached the upstream."""
    tag = f"flood-{uuid.uuid4().hex[:8]}"
    text, is_error = run(coder, f"for i in range(50):\n    py2.record(tag={tag!r} + '-' + str(i))")
    assert is_error and "ToolError" in text and "code_mode.max_tool_calls" in text, text
    reached = [line for line in records(cm.record_file) if line.startswith(tag)]
    assert reached == [f"{tag}-{i}" for i in range(MAX_TOOL_CALLS)], reached

    # Caught, the refusal does not buy more calls.
    text = ok(coder, f"""
answers = []
for i in range(10):
    try:
        answers.append(hidden.echo(text=str(i)))
    except ToolError as e:
        answers.append("refused: " + str(e))
result = answers
""")
    answers = result_value(text)
    assert answers[:MAX_TOOL_CALLS] == [f"echo: {i}" for i in range(MAX_TOOL_CALLS)], answers
    assert all(a.startswith("refused: ") and "code_mode.max_tool_calls" in a for a in answers[MAX_TOOL_CALLS:]), answers


def test_time_limit_stops_a_script_waiting_on_a_tool(timed):
    """A script waiting on a tool longer than `code_mode.time_limit` is stopped there with an
    error naming the setting; the gateway runs the next script normally."""
    tag = f"slow-{uuid.uuid4().hex[:8]}"
    client = timed.client(CODER_KEY)
    try:
        client.initialize()
        started = time.monotonic()
        text, is_error = run(client, f"print('waiting')\npy.hold(tag={tag!r}, timeout=30)")
        elapsed = time.monotonic() - started
        assert is_error and "code_mode.time_limit" in text, text
        assert elapsed < 20, f"stopped after {elapsed:.1f}s with a time limit of {TIME_LIMIT_S}s"
        assert elapsed >= TIME_LIMIT_S - 0.5, f"stopped after {elapsed:.1f}s, before the limit of {TIME_LIMIT_S}s"
        assert f"hold-start:{tag}" in records(timed.record_file)
        assert result_value(ok(client, "py.add(a=1, b=1)")) == {"result": 2}
    finally:
        with open(timed.record_file, "a") as f:
            f.write(f"release:{tag}\n")
        client.close()


def test_probe_shows_every_escape_denied(tmp_path):
    """`sluice code-worker --probe` confines itself like a worker and tries each escape from
    plain Python (no in-interpreter checks): every attempt is denied, seccomp is on."""
    leftover = Path("/tmp/sluice-probe")
    existed = leftover.exists()
    done = run_in_group(["env", "-i", str(sluice_bin()), "code-worker", "--probe"], 60, "sluice code-worker --probe",
                        cwd=tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    report = json.loads(done.stdout)
    assert "seccomp" in report["confinement"], report
    attempts = report["attempts"]
    for name in ("read a file", "write a file", "list a directory", "open a socket", "connect", "fork",
                 "start a thread", "run a program", "exec", "allocate 1 GiB"):
        assert name in attempts, f"the probe did not try {name!r}: {attempts}"
    allowed = {name: outcome for name, outcome in attempts.items() if not outcome.startswith("denied")}
    assert not allowed, f"escapes not denied: {allowed}"
    if not existed:
        assert not leftover.exists(), "the probe's write attempt created /tmp/sluice-probe"


# --------------------------------------------------------------------------- 3. no stall


def test_a_spinning_script_stalls_nothing_else(cm):
    """While one script spins (until its CPU limit), tools/list and another script complete,
    well before the spinner's answer; the spinner then ends with the CPU limit error."""
    tag = f"spinner-{uuid.uuid4().hex[:8]}"
    spinner: dict[str, Any] = {}

    def spin() -> None:
        client = cm.client(CODER_KEY, client=httpx.Client(timeout=httpx.Timeout(10, read=120)))
        try:
            client.initialize()
            spinner["answer"] = run(client, f"py2.record(tag={tag!r})\nwhile True:\n    pass")
        except BaseException as e:  # reported by the main thread
            spinner["error"] = e
        finally:
            spinner["done"] = time.monotonic()
            client.close()

    thread = threading.Thread(target=spin, name="spinner", daemon=True)
    thread.start()
    wait_until(lambda: tag in records(cm.record_file) or "done" in spinner, 30, "the spinning script to start")
    assert "done" not in spinner, f"the spinner ended at once: {spinner}"

    other = cm.client(CODER_KEY)
    try:
        other.initialize()
        assert other.tool_names() == META_TOOLS
        listed_at = time.monotonic()
        assert result_value(ok(other, "sum(range(10))")) == 45
        scripted_at = time.monotonic()
    finally:
        other.close()
    assert "done" not in spinner, (
        f"the spinner answered before the others completed: {spinner}")

    thread.join(90)
    assert not thread.is_alive(), "the spinning script never answered"
    assert "error" not in spinner, spinner
    text, is_error = spinner["answer"]
    assert is_error and "code_mode.cpu_limit" in text, text
    assert spinner["done"] > max(listed_at, scripted_at)
