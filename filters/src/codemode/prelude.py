"""Sluice Code Mode: the Python side of a worker.

Runs once when a worker starts, before the sandbox closes: it imports the modules scripts may
use (nothing can be read from disk afterwards), and defines `run`, which the worker calls with
one script. This file is the outer layer of the sandbox: a script is checked (no names or
attributes with a leading underscore, no frame attributes, imports from an allow-list only),
runs with curated builtins, and an audit hook refuses files, sockets, processes, frames and
the garbage collector. The process boundary (seccomp, rlimits; see sandbox.rs) is what holds
when this layer is escaped.
"""

import ast
import sys

import _sluice

ALLOWED_MODULES = (
    "base64", "bisect", "cmath", "collections", "copy", "datetime", "decimal", "difflib",
    "fractions", "functools", "heapq", "itertools", "json", "math", "operator", "random", "re",
    "statistics", "string", "textwrap", "unicodedata",
)
for _name in ALLOWED_MODULES:
    __import__(_name)
import json as _json

# The prelude's own references: a script that reassigns `json.dumps` changes its own view only.
_dumps = _json.dumps
_loads = _json.loads

# Modules the allowed ones load on first use, loaded now: nothing can be read from disk later.
import datetime as _datetime

_datetime.datetime.strptime("2026", "%Y")
"x".encode("idna")

# Attributes that lead from an object to frames, code and globals.
FORBIDDEN_ATTRIBUTES = frozenset({
    # str.format reaches attributes from inside a string, out of the checks' sight.
    "format", "format_map", "vformat",
    "ag_code", "ag_frame", "cr_code", "cr_frame", "f_back", "f_builtins", "f_code", "f_globals",
    "f_locals", "gi_code", "gi_frame", "gi_yieldfrom", "tb_frame", "tb_next", "co_code", "mro",
})


class ToolError(Exception):
    """A tool answered with an error, or may not be called."""


class ScriptRefused(Exception):
    """The script uses something Code Mode does not allow."""


def _refuse_private(name):
    if name.startswith("_") or name in FORBIDDEN_ATTRIBUTES:
        raise AttributeError(f"`{name}` is not available in Code Mode scripts")


def _attribute_refusal(name):
    if name in ("format", "format_map", "vformat"):
        return f"`.{name}()` is not available; use an f-string"
    return f"the attribute `{name}` is not allowed"


def _check(tree):
    """Refuse what a script may not write: private names and attributes, frame attributes,
    imports outside the allow-list."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
            node.attr.startswith("_") or node.attr in FORBIDDEN_ATTRIBUTES
        ):
            raise ScriptRefused(f"line {node.lineno}: {_attribute_refusal(node.attr)}")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise ScriptRefused(f"line {node.lineno}: the name `{node.id}` is not allowed")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] not in ALLOWED_MODULES:
                    raise ScriptRefused(
                        f"line {node.lineno}: `import {name}` is not allowed; "
                        f"modules available: {', '.join(ALLOWED_MODULES)}"
                    )
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*" or alias.name.startswith("_"):
                        raise ScriptRefused(f"line {node.lineno}: `from {node.module} import {alias.name}` is not allowed")
        if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
            raise ScriptRefused(f"line {node.lineno}: async code is not available; use parallel(...)")


class _ModuleView:
    """What a script gets for an allowed module: its public attributes, but never another
    module (`statistics.sys` would lead to `sys.modules` and everything loaded)."""

    __slots__ = ("_module",)

    def __init__(self, module):
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name):
        module = object.__getattribute__(self, "_module")
        _refuse_private(name)
        value = getattr(module, name)
        if isinstance(value, type(sys)):
            full = f"{module.__name__}.{name}"
            if full.split(".")[0] in ALLOWED_MODULES and full in sys.modules and name in ALLOWED_SUBMODULES:
                return _ModuleView(value)
            raise AttributeError(f"`{full}` is a module scripts cannot reach")
        return value

    def __setattr__(self, name, value):
        raise AttributeError("modules cannot be changed in Code Mode scripts")

    def __delattr__(self, name):
        raise AttributeError("modules cannot be changed in Code Mode scripts")

    def __repr__(self):
        return f"<module {object.__getattribute__(self, '_module').__name__}>"


# Submodules of allowed modules that scripts may reach (`collections.abc`).
ALLOWED_SUBMODULES = frozenset({"abc"})
import collections.abc  # noqa: E402,F401 - loaded now, reachable as collections.abc


def _safe_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name.split(".")[0] not in ALLOWED_MODULES:
        raise ImportError(f"`import {name}` is not allowed in Code Mode scripts")
    if name not in sys.modules:
        raise ImportError(f"`import {name}` is not available in Code Mode scripts")
    return _ModuleView(sys.modules[name.split(".")[0]] if not fromlist else sys.modules[name])


def _safe_getattr(obj, name, *default):
    _refuse_private(name)
    return getattr(obj, name, *default)


def _safe_hasattr(obj, name):
    _refuse_private(name)
    return hasattr(obj, name)


def _safe_type(obj):
    return type(obj)


class _Output:
    """What the script prints, kept up to the limit."""

    def __init__(self, limit):
        self.parts = []
        self.size = 0
        self.limit = limit
        self.cut = False

    def write(self, text):
        text = str(text)
        room = self.limit - self.size
        if room <= 0:
            self.cut = True
            return len(text)
        if len(text) > room:
            text = text[:room]
            self.cut = True
        self.parts.append(text)
        self.size += len(text)
        return len(text)

    def text(self):
        return "".join(self.parts)


_BUILTIN_NAMES = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr", "complex", "dict",
    "divmod", "enumerate", "filter", "float", "format", "frozenset", "hash", "hex", "int",
    "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next", "object",
    "oct", "ord", "pow", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str",
    "sum", "tuple", "zip", "True", "False", "None", "Exception", "ArithmeticError",
    "AssertionError", "AttributeError", "IndexError", "KeyError", "LookupError", "NameError",
    "NotImplementedError", "OverflowError", "RuntimeError", "StopIteration", "TypeError",
    "ValueError", "ZeroDivisionError", "__build_class__",
)
_ORIGINAL_BUILTINS = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)


def _builtins(output):
    safe = {name: _ORIGINAL_BUILTINS[name] for name in _BUILTIN_NAMES}
    safe["__import__"] = _safe_import
    safe["getattr"] = _safe_getattr
    safe["hasattr"] = _safe_hasattr
    safe["type"] = _safe_type
    safe["ToolError"] = ToolError

    def print_(*args, sep=" ", end="\n", **_ignored):
        output.write(sep.join(str(a) for a in args) + end)

    safe["print"] = print_
    return safe


class _Pending:
    """A call made inside `parallel(...)`: sent at once, answered when all are."""

    def __init__(self, index):
        self.index = index


class _Calls:
    """Tool calls of one script, one at a time or in a `parallel(...)` batch."""

    def __init__(self):
        self.batch = None

    def call(self, exposed, arguments):
        request = (exposed, _dumps(arguments))
        if self.batch is not None:
            self.batch.append(request)
            return _Pending(len(self.batch) - 1)
        return _answer(_sluice.call_many([request])[0])

    def parallel(self, thunks):
        if self.batch is not None:
            raise RuntimeError("parallel(...) cannot be nested")
        self.batch = []
        try:
            for thunk in thunks:
                if not callable(thunk):
                    raise TypeError("parallel(...) takes functions, e.g. parallel(lambda: a.f(x=1), lambda: b.g())")
                if not isinstance(thunk(), _Pending):
                    raise TypeError("each function given to parallel(...) must make exactly one tool call and return it")
            batch = self.batch
        finally:
            self.batch = None
        answers = _sluice.call_many(batch) if batch else []
        return [_answer(a, raise_errors=False) for a in answers]


def _answer(envelope, raise_errors=True):
    """The value of a tool's answer: structured content, else JSON text, else text; an error
    raises ToolError (inside parallel(...), it is returned as a ToolError instead)."""
    answer = _loads(envelope)
    if "error" in answer:
        error = ToolError(answer["error"])
        if raise_errors:
            raise error
        return error
    result = answer.get("result") or {}
    texts = [c.get("text", "") for c in result.get("content") or [] if c.get("type") == "text"]
    if result.get("isError"):
        error = ToolError("\n".join(texts) or "the tool reported an error")
        if raise_errors:
            raise error
        return error
    if result.get("structuredContent") is not None:
        return result["structuredContent"]
    text = "\n".join(texts)
    try:
        return _loads(text)
    except ValueError:
        return text


class _Namespace:
    """One server's tools, callable as `server.tool(arg=...)`."""

    def __init__(self, name, tools, calls):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_tools", tools)
        for python_name, (exposed, params) in tools.items():
            object.__setattr__(self, python_name, _tool_function(calls, name, python_name, exposed, params))

    def __getattr__(self, name):
        raise ToolError(f"`{self._name}.{name}` is not a tool this key may call; search_tools lists the ones it may")

    def __setattr__(self, name, value):
        raise AttributeError("tool namespaces cannot be changed")

    def __repr__(self):
        return f"<tools of {self._name}: {', '.join(sorted(self._tools))}>"


def _tool_function(calls, namespace, python_name, exposed, params):
    """`params`: [python name, schema name] of each parameter, in positional order."""
    names = [python for python, _ in params]
    schema_name = dict((python, schema) for python, schema in params)

    def tool(*args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{namespace}.{python_name}() takes at most {len(names)} positional arguments")
        arguments = {schema_name[n]: value for n, value in zip(names, args)}
        for key, value in kwargs.items():
            key = schema_name.get(key, key)
            if key in arguments:
                raise TypeError(f"{namespace}.{python_name}() got two values for `{key}`")
            arguments[key] = value
        return calls.call(exposed, arguments)

    tool.__name__ = python_name
    tool.__qualname__ = f"{namespace}.{python_name}"
    return tool


def _value(value):
    try:
        return _dumps(value)
    except (TypeError, ValueError):
        return _dumps(repr(value))


def run(script, namespaces_json, output_limit):
    """Run one script; the JSON of what it printed, its result, and its error."""
    output = _Output(output_limit)
    try:
        tree = ast.parse(script, "<script>", "exec")
        _check(tree)
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1]
            tree.body[-1] = ast.copy_location(
                ast.Assign(targets=[ast.Name("__result__", ast.Store())], value=last.value), last
            )
            ast.fix_missing_locations(tree)
        code = compile(tree, "<script>", "exec")
    except (SyntaxError, ScriptRefused) as e:
        return _dumps({"output": "", "error": f"{type(e).__name__}: {e}", "cut": False})
    calls = _Calls()
    scope = {"__builtins__": _builtins(output), "__name__": "__script__"}
    for name, tools in _loads(namespaces_json).items():
        scope[name] = _Namespace(name, {k: (v[0], v[1]) for k, v in tools.items()}, calls)
    scope["parallel"] = lambda *thunks: calls.parallel(thunks)
    scope["call_tool"] = lambda name, **arguments: calls.call(name, arguments)
    failure = None
    _guard.active = True
    try:
        exec(code, scope)
    except BaseException as e:  # noqa: BLE001 - everything the script raises is its answer
        failure = e
    finally:
        _guard.active = False
    error = None if failure is None else _describe(failure)
    result = scope.get("__result__", scope.get("result"))
    # Output and result share the limit; the result comes first, the output gets the rest.
    value = None if result is None else _value(result)
    text = output.text()
    if value is not None and len(value) > output.limit:
        value = value[: output.limit]
        output.cut = True
    room = output.limit - (0 if value is None else len(value))
    if len(text) > room:
        text = text[:room]
        output.cut = True
    return _dumps({
        "output": text,
        "result": value,
        "error": error,
        "cut": output.cut,
    })


def _describe(error):
    """The error and the script lines it went through (never the worker's own frames), with
    repeats folded (deep recursion) and at most the last few kept."""
    lines = []
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<script>":
            line = f"  script line {tb.tb_lineno}"
            if lines and lines[-1][0] == line:
                lines[-1][1] += 1
            else:
                lines.append([line, 1])
        tb = tb.tb_next
    shown = [line if n == 1 else f"{line} (x{n})" for line, n in lines[-8:]]
    where = ("\n" + "\n".join(shown)) if shown else ""
    return f"{type(error).__name__}: {str(error)[:1000]}{where}"


class _Guard:
    """Refuses, while a script runs, the audited operations a script has no business with."""

    BLOCKED_PREFIXES = (
        "open", "os.", "subprocess.", "socket.", "ctypes.", "sys._getframe", "sys._current_frames",
        "sys.settrace", "sys.setprofile", "sys.addaudithook", "gc.", "_thread.", "threading.",
        "marshal.", "pickle.", "code.__new__", "function.__new__", "mmap.", "resource.",
        "shutil.", "tempfile.", "glob.", "fcntl.", "import", "compile", "exec", "cpython.",
        "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "sqlite3.", "winreg.",
    )

    def __init__(self):
        self.active = False
        self.compiled_once = False

    def __call__(self, event, args):
        if not self.active:
            return
        if event == "exec" and not self.compiled_once:
            # The one exec of the script itself.
            self.compiled_once = True
            return
        if event.startswith(self.BLOCKED_PREFIXES):
            raise PermissionError(f"`{event}` is not allowed in Code Mode scripts")


_guard = _Guard()
sys.addaudithook(_guard)
