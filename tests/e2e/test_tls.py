"""TLS listeners and HTTPS upstreams, end to end: the real gateway with certificates made by
`scripts/dev-certs.sh` and the openssl CLI, real MCP servers, real TLS clients (the official
Python SDK, httpx, Python's ssl)."""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Iterator

import anyio
import httpx
import pytest

from harness import DEFAULT_KEY, bearer, stdio_everything, wait_until, wire
from tls_support import (
    CertSet,
    TlsGateway,
    client_context,
    cert_serial,
    dev_certs,
    handshake,
    https_client,
    make_ca_set,
    make_key,
    replace_file,
    run_sluice_expecting_failure,
    sdk_https_session,
)

REFUSAL = "This port speaks HTTPS only: use https:// in the URL."


def token() -> str:
    return f"tls-{secrets.token_hex(6)}"


def echo_text(message: dict) -> str:
    assert "result" in message, f"tools/call failed: {message}"
    return "".join(block.get("text", "") for block in message["result"]["content"] if block.get("type") == "text")


def text_of(result) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


async def sdk_tool_names(session) -> set[str]:
    from mcp.types import PaginatedRequestParams

    names, cursor = set(), None
    for _ in range(100):
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        names |= {tool.name for tool in page.tools}
        cursor = wire(page).get("nextCursor")
        if not cursor:
            return names
    raise AssertionError("tools/list never stopped returning nextCursor")


def serves(gw: TlsGateway, certs: CertSet, **client_kw) -> None:
    """Assert `gw` answers a fresh trusting client: initialize, then an echo round trip."""
    client = gw.client(certs.ca, **client_kw)
    try:
        client.initialize()
        text = token()
        assert echo_text(client.call_tool("everything__echo", {"message": text})) == f"Echo: {text}"
    finally:
        client.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tls_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sluice-tls")


@pytest.fixture(scope="module")
def certs(tls_tmp) -> CertSet:
    """The development CA and localhost certificate, made by scripts/dev-certs.sh."""
    return dev_certs(tls_tmp / "dev-certs")


@pytest.fixture(scope="module")
def rogue(tls_tmp) -> CertSet:
    """Another CA, which the gateway's certificate is not signed by."""
    return make_ca_set(tls_tmp / "rogue", "Rogue test CA")


@pytest.fixture(scope="module")
def tls_gateway(tls_tmp, certs) -> Iterator[TlsGateway]:
    """A Sluice with one TLS listener (defaults: min 1.2, HTTP/2 on) fronting server-everything."""
    gw = TlsGateway(
        tls_tmp / "main",
        {"everything": stdio_everything()},
        {"cert": certs.cert, "key": certs.key, "min_version": "1.2", "http2": True},
        name="sluice-tls-main",
    )
    yield gw
    gw.stop()


# --------------------------------------------------------------------------- clients over HTTPS


def test_sdk_lists_and_calls_tools_over_https(tls_gateway, certs):
    """The official Python SDK, trusting the dev CA, lists and calls tools over HTTPS/1.1."""
    versions: list[str] = []
    text = token()

    async def scenario():
        async with sdk_https_session(tls_gateway.url, DEFAULT_KEY, certs.ca, versions=versions) as session:
            names = await sdk_tool_names(session)
            result = await session.call_tool("everything__echo", {"message": text})
            return names, result

    names, result = anyio.run(scenario)
    assert "everything__echo" in names, f"everything__echo not listed over HTTPS: {sorted(names)}"
    assert not result.is_error, f"everything__echo failed over HTTPS: {result}"
    assert text_of(result) == f"Echo: {text}"
    assert versions and set(versions) == {"HTTP/1.1"}, f"HTTP versions seen without http2: {versions}"


def test_http2_negotiated_by_alpn_for_raw_json_rpc(tls_gateway, certs):
    """A client offering h2 gets HTTP/2 (ALPN), and the whole MCP exchange runs over it."""
    seen = handshake(tls_gateway.port, client_context(certs.ca, alpn=["h2", "http/1.1"]))
    assert seen.alpn == "h2", f"ALPN chose {seen.alpn!r}, expected h2"
    only_h1 = handshake(tls_gateway.port, client_context(certs.ca, alpn=["http/1.1"]))
    assert only_h1.alpn == "http/1.1", f"an HTTP/1.1-only client got ALPN {only_h1.alpn!r}"

    client = tls_gateway.client(certs.ca, http2=True)
    try:
        init = client.initialize()
        assert init.http_version == "HTTP/2", f"initialize went over {init.http_version}"
        listed, message = client.request("tools/list", {})
        assert listed.http_version == "HTTP/2", f"tools/list went over {listed.http_version}"
        assert "everything__echo" in {t["name"] for t in message["result"]["tools"]}
        text = token()
        called, message = client.request("tools/call", {"name": "everything__echo", "arguments": {"message": text}})
        assert called.http_version == "HTTP/2", f"tools/call went over {called.http_version}"
        assert called.status_code == 200, f"tools/call: HTTP {called.status_code} {called.text}"
        assert echo_text(message) == f"Echo: {text}"
        deleted = client.delete()
        assert deleted.http_version == "HTTP/2"
        assert deleted.status_code in (200, 202, 204), f"DELETE: HTTP {deleted.status_code} {deleted.text}"
    finally:
        client.close()


def test_sdk_over_http2(tls_gateway, certs):
    """The official SDK on an h2-enabled client works, and every response came over HTTP/2."""
    versions: list[str] = []
    text = token()

    async def scenario():
        async with sdk_https_session(tls_gateway.url, DEFAULT_KEY, certs.ca, http2=True, versions=versions) as session:
            names = await sdk_tool_names(session)
            result = await session.call_tool("everything__echo", {"message": text})
            return names, result

    names, result = anyio.run(scenario)
    assert "everything__echo" in names
    assert not result.is_error, f"everything__echo failed over HTTP/2: {result}"
    assert text_of(result) == f"Echo: {text}"
    assert versions and set(versions) == {"HTTP/2"}, f"HTTP versions seen with http2=True: {versions}"


def test_http2_off_keeps_http11(tls_tmp, certs):
    """With `http2: false` the listener does not offer h2: an h2-capable client speaks HTTP/1.1."""
    gw = TlsGateway(
        tls_tmp / "no-h2",
        {"everything": stdio_everything()},
        {"cert": certs.cert, "key": certs.key, "http2": False},
        name="sluice-tls-no-h2",
    )
    try:
        seen = handshake(gw.port, client_context(certs.ca, alpn=["h2", "http/1.1"]))
        assert seen.alpn in (None, "http/1.1"), f"h2 was negotiated although http2 is off: {seen.alpn!r}"
        client = gw.client(certs.ca, http2=True)
        try:
            init = client.initialize()
            assert init.http_version == "HTTP/1.1", f"initialize went over {init.http_version}"
        finally:
            client.close()
        serves(gw, certs)
    finally:
        gw.stop()


# --------------------------------------------------------------------------- refusals


def test_untrusting_client_fails_handshake_and_others_are_served(tls_gateway, certs, rogue):
    """A client that does not trust the gateway's CA fails the handshake with a certificate
    error; clients that do trust it, including one with a session open all along, are served."""
    steady = tls_gateway.client(certs.ca)
    try:
        steady.initialize()

        with pytest.raises(ssl.SSLCertVerificationError) as raised:
            handshake(tls_gateway.port, client_context(rogue.ca))
        assert "certificate verify failed" in str(raised.value), raised.value

        # Neither the wrong CA nor the system roots (without the dev CA) accept the certificate.
        for cafile in (rogue.ca, None):
            with https_client(cafile) as http:
                with pytest.raises(httpx.ConnectError) as raised:
                    http.post(tls_gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=bearer(DEFAULT_KEY))
            assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value), raised.value

        text = token()
        assert echo_text(steady.call_tool("everything__echo", {"message": text})) == f"Echo: {text}"
        serves(tls_gateway, certs)
        assert tls_gateway.alive()
    finally:
        steady.close()


def read_until_closed(sock: socket.socket, timeout: float = 10) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or `timeout` passes (False)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_plain_http_to_tls_port_gets_clear_refusal(tls_gateway, certs):
    """Plain HTTP sent to the TLS port gets a 400 that says to use https://, then the
    connection closes; the port keeps serving TLS."""
    request = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{tls_gateway.port}\r\n"
        f"Authorization: Bearer {DEFAULT_KEY}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 40\r\n\r\n"
        '{"jsonrpc":"2.0","id":1,"method":"ping"}'
    ).encode()
    with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=10) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock)
    text = data.decode(errors="replace")
    assert text.startswith("HTTP/1.1 400 Bad Request\r\n"), f"plain HTTP on the TLS port got: {text!r}"
    head, _, body = text.partition("\r\n\r\n")
    assert REFUSAL in body, f"the refusal does not say to use https: {text!r}"
    assert closed, f"the connection stayed open after the refusal: {text!r}"

    # An ordinary HTTP client pointed at http:// sees the same answer.
    response = httpx.post(
        f"http://127.0.0.1:{tls_gateway.port}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers=bearer(DEFAULT_KEY),
        timeout=10,
    )
    assert response.status_code == 400, f"HTTP {response.status_code} {response.text!r}"
    assert REFUSAL in response.text

    serves(tls_gateway, certs)


def test_min_version_13_refuses_tls12_client(tls_tmp, certs, tls_gateway):
    """`min_version: "1.3"` refuses a client capped at TLS 1.2 and accepts TLS 1.3; the default
    listener (1.2) accepts and serves the same TLS 1.2-only client."""
    tls12_only = dict(maximum_version=ssl.TLSVersion.TLSv1_2)
    gw = TlsGateway(
        tls_tmp / "tls13",
        {"everything": stdio_everything()},
        {"cert": certs.cert, "key": certs.key, "min_version": "1.3"},
        name="sluice-tls13",
    )
    try:
        with pytest.raises(ssl.SSLError) as raised:
            handshake(gw.port, client_context(certs.ca, **tls12_only))
        assert not isinstance(raised.value, ssl.SSLCertVerificationError), raised.value
        with https_client(certs.ca, **tls12_only) as http:
            with pytest.raises(httpx.ConnectError):
                http.post(gw.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=bearer(DEFAULT_KEY))

        assert handshake(gw.port, client_context(certs.ca)).version == "TLSv1.3"
        serves(gw, certs)
    finally:
        gw.stop()

    assert handshake(tls_gateway.port, client_context(certs.ca, **tls12_only)).version == "TLSv1.2"
    serves(tls_gateway, certs, **tls12_only)


# --------------------------------------------------------------------------- start-up errors


def startup_config(tls_tmp: Path, cert: Path, key: Path) -> dict:
    from harness import free_port

    return {
        "listen": [{"address": f"127.0.0.1:{free_port()}", "tls": {"cert": str(cert), "key": str(key)}}],
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "grace_period": "1s",
        "audit": {"path": str(tls_tmp / "startup-audit.jsonl")},
        "keys": [{"name": "tester", "key": DEFAULT_KEY, "tools": ["*"]}],
        "mcp": {"servers": [{"name": "everything", **stdio_everything()}]},
    }


@pytest.mark.parametrize("case", ["missing cert", "missing key", "mismatched key", "cert not PEM"])
def test_bad_certificate_files_stop_startup(tls_tmp, certs, case):
    """A TLS listener whose certificate or key is missing, unusable or mismatched makes sluice
    exit non-zero at start, with a message naming the file."""
    work = tls_tmp / "startup" / case.replace(" ", "-")
    work.mkdir(parents=True, exist_ok=True)
    cert, key = certs.cert, certs.key
    if case == "missing cert":
        cert = work / "absent.crt"
        named = [cert]
    elif case == "missing key":
        key = work / "absent.key"
        named = [key]
    elif case == "mismatched key":
        key = make_key(work / "other.key")
        named = [key]
    else:
        cert = work / "garbage.crt"
        cert.write_text("this is not a certificate\n")
        named = [cert]

    done = run_sluice_expecting_failure(startup_config(work, cert, key), work, "sluice")
    output = done.stderr + done.stdout
    assert done.returncode != 0, f"sluice exited 0 with {case}:\n{output}"
    for path in named:
        assert str(path) in output, f"the start-up error for {case} does not name {path}:\n{output}"
    if case == "mismatched key":
        assert "does not match" in output, output


# --------------------------------------------------------------------------- certificate reload


def test_sighup_reloads_certificate(tls_tmp, certs):
    """SIGHUP re-reads the certificate files: new connections get the new certificate (from a
    new CA), sessions survive, the gateway keeps serving; an unusable replacement is refused and
    the certificate in use is kept."""
    work = tls_tmp / "reload"
    live = work / "live"
    live.mkdir(parents=True)
    cert, key = live / "sluice.crt", live / "sluice.key"
    shutil.copyfile(certs.cert, cert)
    shutil.copyfile(certs.key, key)
    gw = TlsGateway(work, {"everything": stdio_everything()}, {"cert": cert, "key": key}, name="sluice-reload")
    try:
        before = handshake(gw.port, client_context(certs.ca))
        assert before.serial == cert_serial(certs.cert)
        assert before.issuer_cn == "Sluice development CA", before.peer
        old = gw.client(certs.ca)
        old.initialize()
        session_id, protocol = old.session_id, old.protocol_version
        old.close()

        fresh = make_ca_set(work / "new-ca", "Rotated test CA")
        replace_file(cert, fresh.cert)
        replace_file(key, fresh.key)
        gw.reload_certificates()

        after = handshake(gw.port, client_context(fresh.ca))
        assert after.serial == cert_serial(fresh.cert), f"serial {after.serial:x} is not the new certificate's"
        assert after.issuer_cn == "Rotated test CA", after.peer
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(gw.port, client_context(certs.ca))

        # The session opened before the rotation goes on, over a connection with the new cert.
        resumed = gw.client(fresh.ca)
        try:
            resumed.session_id, resumed.protocol_version = session_id, protocol
            text = token()
            assert echo_text(resumed.call_tool("everything__echo", {"message": text})) == f"Echo: {text}"
        finally:
            resumed.close()
        serves(gw, fresh)

        # A replacement whose key does not match is refused; the rotated certificate stays.
        make_key(key)
        gw.sighup("TLS certificate reload refused")
        assert str(key) in gw.log(20) or str(cert) in gw.log(20), gw.log(20)
        kept = handshake(gw.port, client_context(fresh.ca))
        assert kept.serial == cert_serial(fresh.cert)
        serves(gw, fresh)
        assert gw.alive()
    finally:
        gw.stop()


# --------------------------------------------------------------------------- HTTPS upstreams


def test_https_upstream_with_ca_file(tls_tmp, certs, rogue):
    """An upstream reached over HTTPS (here another Sluice with a TLS listener) works when
    `ca_file` holds its CA; with a ca_file of another CA, or none (system roots only), that
    server is reported failed in /readyz with a certificate error, and the rest keeps serving."""
    inner = TlsGateway(
        tls_tmp / "upstream-inner",
        {"everything": stdio_everything()},
        {"cert": certs.cert, "key": certs.key},
        name="sluice-inner",
    )
    try:
        auth = {"Authorization": f"Bearer {DEFAULT_KEY}"}
        outer = TlsGateway(
            tls_tmp / "upstream-outer",
            {
                "local": stdio_everything(),
                "secure": {"http": {"url": inner.url, "ca_file": str(certs.ca), "headers": auth}},
                "wrongca": {"http": {"url": inner.url, "ca_file": str(rogue.ca), "headers": auth}},
                "noca": {"http": {"url": inner.url, "headers": auth}},
            },
            {"cert": certs.cert, "key": certs.key},
            name="sluice-outer",
        )
        try:
            ready = outer.readyz()
            servers = ready["servers"]
            assert servers["secure"]["health"] == "ready", f"/readyz: {ready}"
            assert servers["local"]["health"] == "ready", f"/readyz: {ready}"
            for name in ("wrongca", "noca"):
                assert servers[name]["health"] == "failed", f"{name} should have failed: {ready}"
                error = servers[name].get("error", "")
                assert any(word in error.lower() for word in ("certificate", "verif", "unknownissuer")), (
                    f"{name}'s error does not mention the certificate: {error!r}"
                )

            client = outer.client(certs.ca)
            try:
                client.initialize()
                names = client.tool_names()
                # The inner gateway's tools are `everything__*`; the outer one prefixes them again.
                assert "secure__everything__echo" in names and "local__echo" in names, sorted(names)
                assert not any(n.startswith(("wrongca__", "noca__")) for n in names), sorted(names)
                text = token()
                assert echo_text(client.call_tool("secure__everything__echo", {"message": text})) == f"Echo: {text}"
                assert echo_text(client.call_tool("local__echo", {"message": text})) == f"Echo: {text}"
            finally:
                client.close()

            # The call really went over HTTPS to the inner gateway: its audit log has it.
            def inner_audited():
                if not inner.audit_path.exists():
                    return False
                return any('"everything__echo"' in line and '"ok"' in line for line in inner.audit_path.read_text().splitlines())

            wait_until(inner_audited, 10, "the inner gateway's audit log to record everything__echo")
        finally:
            outer.stop()
    finally:
        inner.stop()
