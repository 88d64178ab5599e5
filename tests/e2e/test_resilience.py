"""A crashed stdio upstream is reported, restarted, and does not disturb other upstreams."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness import EVERYTHING_JS, Gateway, http_upstream, is_running, stdio_everything, wait_until

RECOVERY_TIMEOUT = 45  # the gateway should be back within ~30 s; allow slack on a loaded machine


@pytest.fixture
def resilience_gateway(e2e_tmp, everything_http):
    """A Sluice of its own, fronting a stdio server-everything and the HTTP one."""
    gw = Gateway(
        e2e_tmp / "resilience",
        {"everything": stdio_everything(), "remote": http_upstream(everything_http.url)},
        name="sluice-resilience",
    )
    yield gw
    gw.stop()


def test_killed_stdio_upstream_fails_then_recovers(resilience_gateway):
    """Kill the stdio child mid-traffic: its calls fail naming it, then succeed again after a
    restart, while every call to the HTTP upstream keeps succeeding."""
    gw = resilience_gateway
    client = gw.client()
    client.initialize()
    http_calls = 0

    def call_remote() -> None:
        nonlocal http_calls
        http_calls += 1
        message = client.call_tool("remote__echo", {"message": f"remote-{http_calls}"})
        assert message.get("result", {}).get("content") == [
            {"type": "text", "text": f"Echo: remote-{http_calls}"}
        ], f"HTTP upstream call #{http_calls} was disturbed: {message}"

    def call_stdio(i: int) -> dict:
        return client.call_tool("everything__echo", {"message": f"stdio-{i}"})

    try:
        # Healthy traffic on both upstreams first.
        for i in range(20):
            assert "result" in call_stdio(i), "stdio upstream failed before it was killed"
            call_remote()

        children = gw.stdio_children(str(EVERYTHING_JS))
        assert len(children) == 1, f"expected one stdio server-everything under sluice, found {children}"
        victim = children[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not is_running(victim), 10, "the killed stdio server to die")

        # The very next call to it must fail with an error that names the server.
        message = call_stdio(1000)
        assert "error" in message, f"a call to the killed stdio upstream did not fail: {message}"
        assert "everything" in message["error"].get("message", ""), (
            f"the error does not name the server `everything`: {message}"
        )
        call_remote()

        # Keep calling both; the stdio upstream must come back, the HTTP one never falters.
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        recovered = None
        i = 1001
        while recovered is None:
            assert time.monotonic() < deadline, f"stdio upstream not back after {RECOVERY_TIMEOUT}s: {message}"
            message = call_stdio(i)
            if "result" in message:
                recovered = message
            else:
                assert "everything" in message["error"].get("message", ""), message
                time.sleep(0.2)
            call_remote()
            i += 1
        assert recovered["result"]["content"] == [{"type": "text", "text": f"Echo: stdio-{i - 1}"}], recovered

        # A fresh child really runs, and the upstream keeps serving.
        restarted = gw.stdio_children(str(EVERYTHING_JS))
        assert restarted and victim not in restarted, f"no new stdio child (was {victim}, now {restarted})"
        for j in range(10):
            assert "result" in call_stdio(2000 + j)
            call_remote()
    finally:
        client.close()
