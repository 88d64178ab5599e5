"""Shared fixtures: real upstream MCP servers, a running Sluice, raw and SDK clients.

Processes are started in their own process groups and torn down even when a
test fails; on a failure, the tail of every running process's log is attached
to the test report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from harness import EverythingHttp, Gateway, Proc, RawMcp, main_servers

LOG_TAIL_LINES = 200


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the recent output of every running process to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in list(Proc.running):
            report.sections.append(
                (f"{proc.name} log ({proc.log_path}, last {LOG_TAIL_LINES} lines)", proc.log(LOG_TAIL_LINES))
            )


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory) -> Path:
    """A directory for this run's configs and logs."""
    return tmp_path_factory.mktemp("sluice-e2e")


@pytest.fixture(scope="session")
def everything_http(e2e_tmp) -> Iterator[EverythingHttp]:
    """server-everything in Streamable HTTP mode, shared by the whole run."""
    server = EverythingHttp(e2e_tmp)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(e2e_tmp, everything_http) -> Iterator[Gateway]:
    """A Sluice fronting the standard upstream set, shared by the whole run."""
    gw = Gateway(e2e_tmp / "main", main_servers(everything_http.url), name="sluice-main")
    yield gw
    gw.stop()


@pytest.fixture
def raw(gateway) -> Iterator[RawMcp]:
    """A raw JSON-RPC client with an initialized session on the shared gateway."""
    client = gateway.client()
    client.initialize()
    yield client
    client.close()
