"""What a script could do if it got past the prelude's checks: `sluice code-worker --probe`
loads these modules before the sandbox closes, then tries each escape from plain Python, so
that tests see the process boundary hold on its own."""

import json
import os
import socket
import subprocess
import threading


def attempts():
    results = {}

    def attempt(name, action):
        try:
            action()
            results[name] = "allowed"
        except BaseException as e:  # noqa: BLE001 - every failure is the answer
            results[name] = f"denied: {type(e).__name__}: {e}"

    attempt("read a file", lambda: open("/etc/passwd").read())
    attempt("write a file", lambda: open("/tmp/sluice-probe", "w").write("x"))
    attempt("list a directory", lambda: os.listdir("/"))
    attempt("open a socket", lambda: socket.socket())
    attempt("connect", lambda: socket.create_connection(("127.0.0.1", 9), timeout=1))
    attempt("fork", lambda: os.fork())
    attempt("start a thread", lambda: threading.Thread(target=lambda: None).start())
    attempt("run a program", lambda: subprocess.run(["/bin/true"]))
    attempt("exec", lambda: os.execv("/bin/true", ["true"]))
    attempt("allocate 1 GiB", lambda: bytearray(1 << 30))
    return json.dumps(results)
