"""The MCP conformance suite (@modelcontextprotocol/conformance, `server --suite active`) through
Sluice.

One fixture upstream (tests/fixtures/conformance_server.mjs, official TypeScript SDK) implements
everything the suite's server scenarios call. The suite runs twice, at the same time: directly
against the fixture, and against a Sluice that fronts the fixture as an `http:` upstream with
`prefix: ""` (so tool names are unchanged). Every active scenario must pass on both paths. A
scenario that fails directly means the fixture (or the suite) is at fault; one that fails only
through Sluice means Sluice is.

The suite cannot send an Authorization header, so this Sluice runs with `enforce_auth: false`.
Run it alone with `.venv/bin/pytest tests/e2e -m conformance -q`; the results (checks.json per
scenario, the suite's output, summary.json) are kept in the test's temporary directory.

The second test runs `--requirements 2026-07-28`: the scenarios conformance to MCP 2026-07-28
requires, sent statelessly (no initialize, version and capabilities in every request's `_meta`).
The fixture is a legacy (2025-11-25) server, so directly it passes almost none of them; through
Sluice, which serves the new era and bridges it to the legacy upstream (InputRequiredResult for
the upstream's elicitation/sampling/roots requests), it should pass many more. The assertion is
the issue's: every scored scenario that passes directly also passes through Sluice. The full list
of scored scenarios failing through Sluice, with the suite's reasons, is printed (`-s`) and kept
in `results/summary.json`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance_support import (
    CONFORMANCE_VERSION,
    ConformanceServer,
    SuiteRun,
    run_suite,
    scored_server_scenarios,
)
from harness import Gateway, http_upstream

pytestmark = pytest.mark.conformance

UPSTREAM = "conformance"


@pytest.fixture
def fixture_server(tmp_path) -> ConformanceServer:
    server = ConformanceServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def open_gateway(tmp_path, fixture_server) -> Gateway:
    """Sluice in front of the fixture, keyless (the suite sends no credentials)."""
    gw = Gateway(
        tmp_path / "gateway",
        {UPSTREAM: {**http_upstream(fixture_server.url), "prefix": ""}},
        name="sluice-conformance",
        default_key=False,
        top={"enforce_auth": False},
    )
    yield gw
    gw.stop()


def test_active_suite_direct_and_through_sluice(tmp_path, fixture_server, open_gateway):
    results = tmp_path / "results"
    with ThreadPoolExecutor(max_workers=2) as pool:
        direct_job = pool.submit(run_suite, fixture_server.url, results / "direct")
        sluice_job = pool.submit(run_suite, open_gateway.url, results / "through-sluice")
        direct: SuiteRun = direct_job.result()
        through: SuiteRun = sluice_job.result()

    summary = {
        "conformance": CONFORMANCE_VERSION,
        "direct": {"url": direct.url, "passed": direct.passed, "failures": direct.failures},
        "through_sluice": {"url": through.url, "passed": through.passed, "failures": through.failures},
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2))

    sluice_only = sorted(set(through.failed) - set(direct.failed))
    both = sorted(set(through.failed) & set(direct.failed))
    report = "\n".join(
        [
            f"MCP conformance {CONFORMANCE_VERSION}, active server suite (results in {results}):",
            direct.describe(f"direct to the fixture ({direct.url})"),
            through.describe(f"through Sluice ({through.url})"),
            f"failing only through Sluice (Sluice at fault): {', '.join(sluice_only) or 'none'}",
            f"failing on both paths (fixture or suite at fault): {', '.join(both) or 'none'}",
        ]
    )

    # The suite ran at all, both paths saw the same scenarios, and every one of them passed.
    problems = []
    if not direct.passed:
        problems.append("the direct run reported no scenarios")
    if set(through.passed) != set(direct.passed):
        problems.append(
            f"the two runs saw different scenarios: only direct {sorted(set(direct.passed) - set(through.passed))}, "
            f"only through Sluice {sorted(set(through.passed) - set(direct.passed))}"
        )
    if direct.failed or through.failed:
        problems.append("some scenarios failed")
    elif direct.returncode != 0 or through.returncode != 0:
        problems.append(f"the suite exited {direct.returncode} (direct) and {through.returncode} (through Sluice)")
    if not fixture_server.alive() or not open_gateway.alive():
        problems.append("the fixture or Sluice exited during the run")
    if problems:
        pytest.fail(f"{'; '.join(problems)}\n{report}", pytrace=False)


REVISION = "2026-07-28"


def test_requirements_2026_07_28_direct_and_through_sluice(tmp_path, fixture_server, open_gateway):
    results = tmp_path / "results"
    scored = set(scored_server_scenarios(REVISION))
    # One after the other: the runs mutate the fixture (test_trigger_*_change add tools and
    # prompts), and one run's list_changed must not land in the other's listen streams.
    direct = run_suite(fixture_server.url, results / "direct", requirements=REVISION)
    through = run_suite(open_gateway.url, results / "through-sluice", requirements=REVISION)

    def scored_view(run: SuiteRun) -> dict:
        return {
            "passed": sorted(n for n, ok in run.passed.items() if ok and n in scored),
            "failed": {n: run.reason(n) for n in run.failed if n in scored},
            "not_scored_failed": sorted(n for n in run.failed if n not in scored),
            "exit": run.returncode,
        }

    summary = {
        "conformance": CONFORMANCE_VERSION,
        "requirements": REVISION,
        "direct": {"url": direct.url, **scored_view(direct)},
        "through_sluice": {"url": through.url, **scored_view(through)},
    }
    (results / "summary.json").write_text(json.dumps(summary, indent=2))

    passed_direct = {n for n, ok in direct.passed.items() if ok and n in scored}
    passed_through = {n for n, ok in through.passed.items() if ok and n in scored}
    regressions = sorted(passed_direct - passed_through)
    failing_through = [n for n in sorted(scored) if not through.passed.get(n, False)]
    report = "\n".join(
        [
            f"MCP conformance {CONFORMANCE_VERSION}, --requirements {REVISION} ({len(scored)} scored server "
            f"scenarios; results in {results}):",
            f"direct to the (legacy) fixture: {len(passed_direct)} scored scenarios pass: "
            f"{', '.join(sorted(passed_direct)) or 'none'}",
            f"through Sluice: {len(passed_through)} scored scenarios pass: {', '.join(sorted(passed_through)) or 'none'}",
            f"scored scenarios failing through Sluice ({len(failing_through)}):",
            *[f"  - {n}: {through.reason(n) if n in through.passed else 'not run (missing from the summary)'}"
              for n in failing_through],
            f"passing directly but not through Sluice (Sluice at fault): {', '.join(regressions) or 'none'}",
        ]
    )
    print(report)

    problems = []
    if not direct.passed or not through.passed:
        problems.append("a run reported no scenarios")
    missing = sorted(scored - set(through.passed))
    if missing:
        problems.append(f"scored scenarios the run through Sluice did not report: {missing}")
    if regressions:
        problems.append(f"scenarios that pass directly but fail through Sluice: {regressions}")
    if not fixture_server.alive() or not open_gateway.alive():
        problems.append("the fixture or Sluice exited during the run")
    if problems:
        details = "\n".join([direct.describe("direct"), through.describe("through Sluice")])
        pytest.fail(f"{'; '.join(problems)}\n{report}\n{details}", pytrace=False)
