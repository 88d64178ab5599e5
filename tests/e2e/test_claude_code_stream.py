"""Claude Code opens Sluice's GET notification stream (issue 14): while the real CLI runs a
`claude -p` round trip through Sluice, the gateway's `sluice_notification_streams` gauge shows
an open GET stream (sampled in the background while Claude Code runs).

Reuses test_claude_code.py's fixtures (the HTTPS gateway, the fake Messages API, the scratch
Claude home) without running its tests again.
"""

from __future__ import annotations

import threading
import time

import httpx

from harness import Metrics
from test_claude_code import (  # noqa: F401  (fixtures are used by name)
    CLAUDE_KEY,
    ECHO_TOOL,
    SERVER,
    cc_gateway,
    cc_tmp,
    certs,
    claude,
    fake,
    token,
)


class GaugeSampler:
    """Samples a gauge on the admin listener every 50 ms in a background thread."""

    def __init__(self, admin_url: str, name: str):
        self.admin_url, self.name = admin_url, name
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                try:
                    text = http.get(f"{self.admin_url}/metrics").text
                    self.samples.append(Metrics.parse(text).sum(self.name))
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def test_claude_code_opens_the_get_stream(cc_gateway, claude, fake, token):
    claude.mcp_add(SERVER, cc_gateway.url, CLAUDE_KEY)
    sampler = GaugeSampler(cc_gateway.admin_url, "sluice_notification_streams")
    try:
        done = claude.run("-p", f"Call the echo tool with the message {token} and report what it says.",
                          "--allowedTools", ECHO_TOOL)
    finally:
        samples = sampler.stop()
    context = f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    assert done.returncode == 0 and f"FINAL-{token}" in done.stdout, context
    assert samples, "the metrics sampler got no sample"
    print(f"sluice_notification_streams while Claude Code ran: max {max(samples)} over {len(samples)} samples")
    assert max(samples) >= 1, (
        f"no GET notification stream was open while Claude Code ran ({len(samples)} samples, all 0)\n{context}")
    assert cc_gateway.alive()
