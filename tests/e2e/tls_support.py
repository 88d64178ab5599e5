"""Helpers for the TLS end-to-end tests: test certificates made with the real tools
(`scripts/dev-certs.sh`, the openssl CLI), a Sluice with TLS listeners, TLS clients.

Builds on harness.py (processes, raw JSON-RPC client); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import yaml

from harness import (
    run_in_group,
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    GRACE_PERIOD,
    REPO,
    Proc,
    RawMcp,
    bearer,
    free_port,
    sluice_bin,
    wait_until,
)

DEV_CERTS = REPO / "scripts" / "dev-certs.sh"
#: The line the gateway logs for each certificate it re-reads on SIGHUP.
CERT_RELOADED = "TLS certificate"
CERT_RELOADED_SUFFIX = "reloaded"
CERT_RELOAD_REFUSED = "TLS certificate reload refused"


def openssl(*args: str, cwd: Path | None = None) -> str:
    """Run the openssl CLI; its stdout."""
    exe = shutil.which("openssl")
    assert exe, "the TLS tests need the openssl CLI (apt-get install openssl)"
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


# --------------------------------------------------------------------------- certificates


@dataclass
class CertSet:
    """A CA and a server certificate for localhost, 127.0.0.1 and ::1 signed by it."""

    dir: Path
    ca: Path
    ca_key: Path
    cert: Path
    key: Path


def dev_certs(directory: Path) -> CertSet:
    """Certificates made by the project's own `scripts/dev-certs.sh DIR`."""
    done = subprocess.run(["bash", str(DEV_CERTS), str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{DEV_CERTS} failed: {done.stdout}{done.stderr}"
    certs = CertSet(directory, directory / "ca.crt", directory / "ca.key", directory / "sluice.crt", directory / "sluice.key")
    for path in (certs.ca, certs.ca_key, certs.cert, certs.key):
        assert path.exists() and path.stat().st_size > 0, f"dev-certs.sh did not create {path}"
    return certs


def make_ca(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A new self-signed CA (EC P-256) in `directory`: (ca.crt, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "ca.crt", directory / "ca.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
        "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(crt),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    return crt, key


def make_server_cert(directory: Path, ca: Path, ca_key: Path, name: str = "server", common_name: str = "localhost") -> tuple[Path, Path]:
    """A server certificate for localhost, 127.0.0.1 and ::1 signed by `ca`: (name.crt, name.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key, csr, ext = (directory / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(csr),
    )
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")), "-days", "30", "-extfile", str(ext), "-out", str(crt),
    )
    csr.unlink()
    ext.unlink()
    return crt, key


def make_ca_set(directory: Path, common_name: str) -> CertSet:
    """A fresh CA named `common_name` and a localhost server certificate signed by it."""
    ca, ca_key = make_ca(directory, common_name)
    cert, key = make_server_cert(directory, ca, ca_key, "sluice")
    return CertSet(directory, ca, ca_key, cert, key)


def make_key(path: Path) -> Path:
    """A fresh EC private key matching no certificate."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    return path


def cert_serial(path: Path) -> int:
    """The serial number of a PEM certificate, as openssl reads it."""
    out = openssl("x509", "-noout", "-serial", "-in", str(path)).strip()
    assert out.startswith("serial="), out
    return int(out.split("=", 1)[1], 16)


def replace_file(path: Path, source: Path) -> None:
    """Replace `path` with a copy of `source` atomically (as deployment tools do)."""
    tmp = path.with_name(path.name + ".new")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- TLS clients


def client_context(
    cafile: Path | None,
    *,
    alpn: list[str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    minimum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context trusting only `cafile` (the system roots if None)."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if minimum_version is not None:
        ctx.minimum_version = minimum_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@dataclass
class Handshake:
    """What a TLS client saw of a completed handshake."""

    version: str
    alpn: str | None
    peer: dict  # ssl.SSLSocket.getpeercert(): subject, issuer, serialNumber, ...

    @property
    def issuer_cn(self) -> str:
        return dict(pair[0] for pair in self.peer["issuer"])["commonName"]

    @property
    def serial(self) -> int:
        return int(self.peer["serialNumber"], 16)


def handshake(port: int, ctx: ssl.SSLContext, host: str = "localhost", timeout: float = 10) -> Handshake:
    """Open a new TCP connection to 127.0.0.1:`port`, complete a TLS handshake with `ctx`
    (server name `host`), and report it. Raises ssl.SSLError if the handshake fails."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return Handshake(tls.version() or "", tls.selected_alpn_protocol(), tls.getpeercert() or {})


def https_client(cafile: Path | None, http2: bool = False, **ctx_kw: Any) -> httpx.Client:
    """An httpx client trusting `cafile`, offering HTTP/2 by ALPN if `http2`."""
    return httpx.Client(verify=client_context(cafile, **ctx_kw), http2=http2, timeout=60)


@asynccontextmanager
async def sdk_https_session(
    url: str, key: str, cafile: Path, http2: bool = False, versions: list[str] | None = None
) -> AsyncIterator:
    """An initialized official-SDK `ClientSession` over Streamable HTTP to an https `url`,
    trusting `cafile`, presenting `key` as a Bearer token. If `versions` is given, the HTTP
    version of every response the SDK received is appended to it."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def seen(response: Any) -> None:
        if versions is not None:
            versions.append(response.http_version)

    async with httpx2.AsyncClient(
        headers=bearer(key),
        timeout=httpx2.Timeout(30.0, read=300.0),
        verify=client_context(cafile),
        http2=http2,
        event_hooks={"response": [seen]},
    ) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                yield session


# --------------------------------------------------------------------------- gateway


class TlsGateway(Proc):
    """A running Sluice with one listener, TLS unless `tls` is None.

    `tls` is the listener's `tls:` section (`cert`, `key`, optionally `min_version`, `http2`).
    Keys: the harness's default key (`tester`, every tool) plus `keys`. The audit log is
    `<tmp>/<name>-audit.jsonl`. `wait` = False skips waiting for /readyz.
    """

    def __init__(
        self,
        tmp: Path,
        servers: dict[str, dict],
        tls: dict[str, Any] | None,
        name: str = "sluice-tls",
        *,
        keys: list[dict] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ):
        tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        self.key = DEFAULT_KEY
        self.tls = tls
        self.audit_path = tmp / f"{name}-audit.jsonl"
        listener: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if tls is not None:
            listener["tls"] = {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()}
        self.config: dict[str, Any] = {
            "listen": [listener],
            "admin": {"address": f"127.0.0.1:{self.admin_port}"},
            "grace_period": GRACE_PERIOD,
            "audit": {"path": str(self.audit_path)},
            "keys": [{"name": DEFAULT_KEY_NAME, "key": DEFAULT_KEY, "tools": ["*"]}, *(keys or [])],
            "mcp": {"servers": [{"name": n, **spec} for n, spec in servers.items()]},
        }
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        binary = sluice_bin()
        if not binary.exists():
            raise FileNotFoundError(f"sluice binary not found at {binary}; build it with `cargo build -p sluice`")
        super().__init__(name, [str(binary), "--config", str(self.config_path)], tmp / f"{name}.log",
                         env={"NO_COLOR": "1", **(env or {})})
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://localhost:{self.port}/mcp"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        if wait:
            self.wait_ready(self.admin_url)

    def readyz(self) -> dict:
        """The /readyz JSON document."""
        response = httpx.get(f"{self.admin_url}/readyz", timeout=10)
        try:
            return response.json()
        except ValueError:
            raise AssertionError(f"/readyz: HTTP {response.status_code} is not JSON: {response.text!r}") from None

    def client(self, cafile: Path | None, key: Any = ..., http2: bool = False, **ctx_kw: Any) -> RawMcp:
        """A raw JSON-RPC client of this gateway trusting `cafile`."""
        return RawMcp(self.url, client=https_client(cafile, http2=http2, **ctx_kw), key=self.key if key is ... else key)

    def sighup(self, expect: str, count: int = 1) -> None:
        """Send SIGHUP; wait until the log holds `count` more lines containing `expect`."""
        before = self._count(expect)
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: self._count(expect) >= before + count, 20, f"{self.name} to log `{expect}` after SIGHUP")

    def _count(self, needle: str) -> int:
        return sum(1 for line in self.log().splitlines() if needle in line)

    def reload_certificates(self) -> None:
        """SIGHUP and wait for the gateway to log that it re-read its certificate."""
        before, refused = self._reloaded(), self._count(CERT_RELOAD_REFUSED)
        os.kill(self.pid, signal.SIGHUP)

        def done() -> bool:
            if self._count(CERT_RELOAD_REFUSED) > refused:
                raise AssertionError(f"{self.name} refused the new certificate:\n{self.log(30)}")
            return self._reloaded() > before

        wait_until(done, 20, f"{self.name} to log that its TLS certificate was reloaded")

    def _reloaded(self) -> int:
        return sum(
            1
            for line in self.log().splitlines()
            if CERT_RELOADED in line and line.rstrip().endswith(CERT_RELOADED_SUFFIX)
        )


def audit_records(path: Path) -> list[dict]:
    """Every record of a Sluice audit log (JSON lines; [] if the file does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_sluice_expecting_failure(config: dict, tmp: Path, name: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Start `sluice` with `config`; it must exit by itself within `timeout` seconds (it is
    killed, and the test fails, if it starts serving instead). Its exit status and output."""
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_in_group(
        [str(sluice_bin()), "--config", str(config_path)], timeout,
        "sluice, which should have refused to start,", env={**os.environ, "NO_COLOR": "1"},
    )
