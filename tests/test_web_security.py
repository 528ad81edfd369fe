"""Web security at exporter-toolkit parity: the web config file is live (a rotated or removed password stops
working), every key is implemented or refused, bcrypt cannot be turned into a denial of service, and aiohttp's
own reports never carry request header values."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.configfile import load_config
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from tests.helpers import free_port, sim_config_yaml, wait_http
from tests.simulation import Sim
from tests.test_webconfig import Certs, certs  # noqa: F401 -- the certificate fixture

PY = [sys.executable, "-m", "exporter"]


def hashed(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def status(server: TestServer, path: str, method: str = "GET", **headers: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.make_url(path), headers=headers) as resp,
    ):
        return resp.status


def exporter_with_web_config(sim: Sim, tmp_path: Path, web_body: str) -> tuple[Exporter, Path]:
    web = tmp_path / "web.yml"
    web.write_text(web_body)
    path = tmp_path / "config.yaml"
    path.write_text(
        sim_config_yaml(
            sim.url,
            sandboxes="  - {name: prod, discover: {enabled: true}}",
            rest="server: {web_config_file: web.yml, enable_lifecycle: true}",
        )
    )
    return Exporter(
        load_config(path), registry=CollectorRegistry(), tuning=Tuning(self_metrics_ttl=0.0), config_path=path
    ), web


async def test_a_rotated_or_removed_password_stops_working_at_once(sim: Sim, tmp_path: Path) -> None:
    """The web config is re-read when it changes: after a rotation the old password gets 401 and the new one
    200; a removed user gets 401; a file made invalid fails closed (500) but /healthz still answers."""
    exporter, web = exporter_with_web_config(sim, tmp_path, f"basic_auth_users:\n  prom: '{hashed('old')}'\n")
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert await status(server, "/metrics", **basic("prom", "old")) == 200
        web.write_text(f"basic_auth_users:\n  prom: '{hashed('new')}'\n  other: '{hashed('x')}'\n")
        assert await status(server, "/metrics", **basic("prom", "old")) == 401
        assert await status(server, "/metrics", **basic("prom", "new")) == 200
        web.write_text(f"basic_auth_users:\n  other: '{hashed('x')}'\n")
        assert await status(server, "/metrics", **basic("prom", "new")) == 401
        web.write_text("basic_auth_users: [not, a, mapping]\n")
        assert await status(server, "/metrics", **basic("other", "x")) == 500
        assert await status(server, "/healthz") == 200
    finally:
        await server.close()


async def test_reload_rereads_the_web_config_even_when_its_timestamp_did_not_change(sim: Sim, tmp_path: Path) -> None:
    """POST /-/reload (as SIGHUP) re-reads the file unconditionally: a swap that kept size and mtime still
    takes effect, and the reload reports success only then."""
    exporter, web = exporter_with_web_config(sim, tmp_path, f"basic_auth_users:\n  prom: '{hashed('aaaa')}'\n")
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert await status(server, "/metrics", **basic("prom", "aaaa")) == 200
        before = os.stat(web)
        web.write_text(f"basic_auth_users:\n  prom: '{hashed('bbbb')}'\n")  # same length
        os.utime(web, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert await status(server, "/-/reload", "POST", **basic("prom", "aaaa")) == 200
        assert await status(server, "/metrics", **basic("prom", "aaaa")) == 401
        assert await status(server, "/metrics", **basic("prom", "bbbb")) == 200
    finally:
        await server.close()


TLS_HEAD = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            TLS_HEAD + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  curve_preferences: [X25519]\n",
            "tls_server_config.curve_preferences",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_allowed_sans: [a]\n"
            "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_allowed_sans",
        ),
        (
            TLS_HEAD + "  client_auth_type: RequireAnyClientCert\n",
            "tls_server_config.client_auth_type: RequireAnyClientCert means 'accept any client certificate without",
        ),
        (
            TLS_HEAD + "  client_auth_type: RequestClientCert\n",
            "tls_server_config.client_auth_type: RequestClientCert",
        ),
        ("http_server_config:\n  http2: true\n", "http_server_config.http2"),
        ("http_server_config:\n  headers: {'Bad Header': x}\n", "http_server_config.headers.Bad Header"),
    ],
)
def test_every_unimplemented_exporter_toolkit_setting_is_refused_by_name(
    certs: Certs,  # noqa: F811
    body: str,
    named: str,
) -> None:
    """No exporter-toolkit key is silently ignored: what is not implemented is refused, naming the key."""
    path = certs.dir / "web.yml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert any(named in problem for problem in caught.value.problems), caught.value.problems


async def test_max_version_prefer_server_ciphers_and_headers_are_applied(
    certs: Certs,  # noqa: F811
    sim: Sim,
    tmp_path: Path,
) -> None:
    """max_version caps the TLS version (a TLS 1.3-only client is refused), prefer_server_cipher_suites sets
    the server's preference, and http_server_config.headers are on every response, /metrics included."""
    body = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n"
        "  prefer_server_cipher_suites: true\n"
        "http_server_config:\n  http2: false\n  headers:\n    Strict-Transport-Security: max-age=31536000\n"
        "    X-Frame-Options: deny\n"
    )
    (certs.dir / "web.yml").write_text(body)
    config = load_web_config(certs.dir / "web.yml")
    assert config.ssl_context is not None
    assert config.ssl_context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert config.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    exporter, _web = exporter_with_web_config(
        sim, tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/metrics", "/", "/healthz"):
                async with session.get(server.make_url(path)) as resp:
                    assert resp.headers.get("X-Frame-Options") == "deny", path
    finally:
        await server.close()
    tls13_only = certs.client_context()
    tls13_only.minimum_version = ssl.TLSVersion.TLSv1_3
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    wrapped = config.ssl_context.wrap_socket(listener, server_side=True, do_handshake_on_connect=True)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        accept = asyncio.get_running_loop().run_in_executor(None, _accept_quietly, wrapped)
        with pytest.raises(ssl.SSLError), tls13_only.wrap_socket(client, server_hostname="127.0.0.1"):
            pass
        await accept
    finally:
        wrapped.close()


def _accept_quietly(listener: ssl.SSLSocket) -> None:
    try:
        conn, _addr = listener.accept()
        conn.close()
    except (ssl.SSLError, OSError):
        pass


async def test_a_password_over_72_bytes_gets_401_not_500(sim: Sim, tmp_path: Path) -> None:
    """bcrypt refuses passwords over 72 bytes; to a client that is a wrong password, never a server error."""
    exporter, _web = exporter_with_web_config(sim, tmp_path, f"basic_auth_users:\n  prom: '{hashed('ok')}'\n")
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert await status(server, "/metrics", **basic("prom", "x" * 73)) == 401
        assert await status(server, "/metrics", **basic("nobody", "y" * 500)) == 401
        assert await status(server, "/metrics", **basic("prom", "ok")) == 200
    finally:
        await server.close()


async def test_a_wrong_password_flood_does_not_hold_up_authenticated_scrapes(sim: Sim, tmp_path: Path) -> None:
    """While 40 requests with distinct wrong passwords queue for bcrypt (its own two threads), a scrape whose
    password was verified before is answered from the cache: it completes while the flood is still pending."""
    exporter, _web = exporter_with_web_config(
        sim, tmp_path, f"basic_auth_users:\n  prom: '{hashed('good', rounds=12)}'\n"
    )
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    try:
        assert await status(server, "/healthz", **basic("prom", "good")) == 200
        assert await status(server, "/metrics", **basic("prom", "good")) == 200  # verified once, then cached
        flood = [asyncio.create_task(status(server, "/metrics", **basic("prom", f"wrong-{i}"))) for i in range(40)]
        await asyncio.sleep(0)
        assert await status(server, "/metrics", **basic("prom", "good")) == 200
        pending = sum(not task.done() for task in flood)
        assert pending > 0, "the flood finished before the authenticated scrape"
        assert set(await asyncio.gather(*flood)) == {401}
    finally:
        await server.close()


def test_aiohttp_reports_are_one_json_line_without_header_values(sim: Sim, tmp_path: Path) -> None:
    """An over-long header makes aiohttp report an error: it is one JSON log line, and neither it nor anything
    else the exporter prints contains the client's Authorization credentials."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        sim_config_yaml(
            sim.url,
            sandboxes="  - {name: prod, discover: {enabled: true}}",
            rest=f'server: {{listen: "127.0.0.1:{port}"}}\nlog: {{format: json}}\npoll: {{interval: 1h}}',
        )
    )
    proc = subprocess.Popen(
        [*PY, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    credentials = base64.b64encode(b"prom:VerySecretPassw0rd").decode()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n"
                f"X-Long: {'a' * 20000}\r\n\r\n".encode()
            )
            answer = conn.recv(65536)
        assert answer.split(b" ")[1] == b"400"  # aiohttp refuses the request
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert credentials not in out + err and "VerySecretPassw0rd" not in out + err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    assert any(e.get("logger", "").startswith("aiohttp") for e in lines), err[-2000:]


def test_a_client_that_sends_headers_too_slowly_is_disconnected(sim: Sim, tmp_path: Path) -> None:
    """server.read_header_timeout: a client that opens a connection and dribbles a request is closed."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        sim_config_yaml(
            sim.url,
            sandboxes="  - {name: prod, discover: {enabled: true}}",
            rest=f'server: {{listen: "127.0.0.1:{port}", read_header_timeout: 1s}}\npoll: {{interval: 1h}}',
        )
    )
    proc = subprocess.Popen([*PY, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            try:
                closed = conn.recv(1024) == b""
            except ConnectionResetError:
                closed = True
        assert closed
    finally:
        proc.terminate()
        proc.wait(timeout=30)
