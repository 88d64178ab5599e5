"""The current Claude Code talks to Sluice in the MCP 2026-07-28 era, over HTTPS.

Claude Code (2.1.332) probes `server/discover` with `MCP-Protocol-Version: 2026-07-28` before it
would fall back to `initialize`. Now that Sluice answers the probe, the whole `claude -p` round
trip runs in the new era: the tool list and the call of server-everything's echo tool (a legacy
stdio upstream) are stateless requests. The proof of the era is Sluice's own count,
`sluice_mcp_requests_total{protocol="2026-07-28"}` on the admin listener, which must grow by at
least the discover, the tools/list and the tools/call, while no legacy session is opened.

The fixtures (scratch HOME, fake Messages API, dev certificates, the HTTPS Sluice) are
test_claude_code.py's.
"""

from __future__ import annotations

import sys

import httpx

from harness import NEW_ERA, TESTS, Metrics, wait_until
from test_claude_code import (  # noqa: F401  (pytest fixtures, used by name)
    CLAUDE_KEY,
    CLAUDE_KEY_NAME,
    ECHO_TOOL,
    SERVER,
    cc_gateway,
    cc_tmp,
    certs,
    claude,
    fake,
    token,
)
from tls_support import audit_records

sys.path.insert(0, str(TESTS / "fixtures"))
from fake_anthropic import result_text, tool_results, tool_uses  # noqa: E402

METRIC = "sluice_mcp_requests_total"


def metrics(gateway) -> Metrics:
    response = httpx.get(f"{gateway.admin_url}/metrics", timeout=10)
    assert response.status_code == 200, f"/metrics: HTTP {response.status_code} {response.text}"
    return Metrics.parse(response.text)


def test_claude_code_round_trip_in_the_2026_era(cc_gateway, claude, fake, token):
    claude.mcp_add(SERVER, cc_gateway.url, CLAUDE_KEY)
    before = metrics(cc_gateway)
    new_era_before = before.sum(METRIC, protocol=NEW_ERA)
    audit_before = len(audit_records(cc_gateway.audit_path))

    done = claude.run("-p", f"Call the echo tool with the message {token} and report what it says.",
                      "--allowedTools", ECHO_TOOL)
    context = (
        f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}\n"
        f"requests to the fake API: {[(r['method'], r['path']) for r in fake.requests]}"
    )

    # The round trip: the model was offered the tool, Claude Code called it through Sluice, the
    # echo went back to the model, and its final answer was printed.
    conversation = fake.conversation_requests()
    assert len(conversation) >= 2, f"no tool round trip happened:\n{context}"
    follow_up = conversation[1]
    uses = [u for u in tool_uses(follow_up) if u.get("name") == ECHO_TOOL]
    assert uses and uses[-1]["input"] == {"message": token}, tool_uses(follow_up)
    results = [r for r in tool_results(follow_up) if r.get("tool_use_id") == uses[-1]["id"]]
    assert results and not results[0].get("is_error"), results
    assert f"Echo: {token}" in result_text(results[0]), results[0]
    assert done.returncode == 0 and f"FINAL-{token}" in done.stdout, context

    def echo_audited():
        records = audit_records(cc_gateway.audit_path)[audit_before:]
        return [r for r in records if r.get("method") == "tools/call" and r.get("tool") == "everything__echo"]

    calls = wait_until(echo_audited, 10, "Sluice's audit log to record the everything__echo call")
    assert calls[0]["status"] == "ok" and calls[0]["key"] == CLAUDE_KEY_NAME, calls

    # The era: Sluice counted Claude Code's requests as 2026-07-28 ones (discover, tools/list and
    # the call at least).
    after = metrics(cc_gateway)
    new_era_after = after.sum(METRIC, protocol=NEW_ERA)
    by_protocol = {labels.get("protocol"): value for name, labels, value in after.samples if name == METRIC}
    assert new_era_after >= new_era_before + 3, (
        f"{METRIC}{{protocol={NEW_ERA!r}}} went from {new_era_before} to {new_era_after}; "
        f"all protocols now: {by_protocol}\n{context}"
    )
    # ...and fell back to no legacy session.
    legacy_before = before.sum(METRIC) - new_era_before
    assert after.sum(METRIC) - new_era_after == legacy_before, (
        f"Claude Code also sent requests of another era: {by_protocol}\n{context}"
    )
    print(f"{METRIC} by protocol after the round trip: {by_protocol}")
    assert cc_gateway.alive()
