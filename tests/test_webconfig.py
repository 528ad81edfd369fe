"""Exporter-toolkit web config: TLS, mutual TLS and bcrypt basic auth, with generated certificates."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web

from exporter.cli import main
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from tests.helpers import free_port
from tests.simulation import Sim, make_config, make_exporter

PASSWORD = "correct horse battery staple"


@dataclass
class Certs:
    ca: trustme.CA
    dir: Path

    def client_context(self, *, with_cert: bool = False, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_cert:
            self.ca.issue_cert("prometheus@example.test").configure_cert(context)
        if max_version is not None:
            context.maximum_version = max_version
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return Certs(ca, tmp_path)


def write_web_config(certs: Certs, body: str) -> Path:
    path = certs.dir / "web.yml"
    path.write_text(body)
    return path


def users_block() -> str:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"basic_auth_users:\n  prometheus: '{hashed}'\n"


@pytest.fixture
async def serve_with(sim: Sim) -> AsyncIterator[object]:
    runners: list[web.AppRunner] = []

    async def start(web_config: Path) -> str:
        config = make_config(sim.url)
        config = replace(
            config, server=replace(config.server, web=load_web_config(web_config), web_config_path=web_config)
        )
        exporter = make_exporter(config)
        runner = web.AppRunner(exporter.web_app(poll=False))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=config.server.web.ssl_context).start()
        runners.append(runner)
        scheme = "https" if config.server.web.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def get(url: str, *, context: ssl.SSLContext | bool | None = None, auth: str | None = None) -> int:
    headers = {"Authorization": auth} if auth else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else True, headers=headers) as resp,
    ):
        return resp.status


async def test_basic_auth_right_wrong_and_no_password(certs: Certs, serve_with: object) -> None:
    """Right password: 200; wrong or none: 401 with a challenge; /healthz needs no password."""
    url = await serve_with(write_web_config(certs, users_block()))  # type: ignore[operator]
    assert await get(f"{url}/metrics", auth=basic("prometheus", PASSWORD)) == 200
    assert await get(f"{url}/metrics", auth=basic("prometheus", "wrong")) == 401
    assert await get(f"{url}/metrics", auth=basic("nobody", PASSWORD)) == 401
    assert await get(f"{url}/metrics") == 401
    assert await get(f"{url}/") == 401
    assert await get(f"{url}/healthz") == 200


async def test_tls_serves_https_and_refuses_plain_http(certs: Certs, serve_with: object) -> None:
    """With tls_server_config, HTTPS with the CA works and plain HTTP to the port does not."""
    url = await serve_with(
        write_web_config(
            certs,
            "tls_server_config:\n  cert_file: server.crt\n"  # type: ignore[operator]
            "  key_file: server.key\n",
        )
    )
    assert url.startswith("https://")
    assert await get(f"{url}/metrics", context=certs.client_context()) == 200
    with pytest.raises(aiohttp.ClientError):
        await get(url.replace("https://", "http://") + "/metrics")


async def test_client_certificate_required_and_missing_is_refused(certs: Certs, serve_with: object) -> None:
    """RequireAndVerifyClientCert: a client with a certificate from the CA gets in, one without does not."""
    body = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    url = await serve_with(write_web_config(certs, body + users_block()))  # type: ignore[operator]
    auth = basic("prometheus", PASSWORD)
    assert await get(f"{url}/metrics", context=certs.client_context(with_cert=True), auth=auth) == 200
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/metrics", context=certs.client_context(with_cert=False), auth=auth)


async def test_min_version_refuses_older_clients(certs: Certs, serve_with: object) -> None:
    """min_version TLS13 refuses a client limited to TLS 1.2."""
    body = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n"
    url = await serve_with(write_web_config(certs, body))  # type: ignore[operator]
    assert await get(f"{url}/healthz", context=certs.client_context()) == 200
    with pytest.raises(aiohttp.ClientError):
        await get(f"{url}/healthz", context=certs.client_context(max_version=ssl.TLSVersion.TLSv1_2))


def test_bad_web_config_lists_every_problem_with_its_path(certs: Certs) -> None:
    """Missing files, unknown auth types, bad hashes and unknown keys are all reported, each with its path."""
    path = write_web_config(
        certs,
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n"
        "  client_auth_type: Sometimes\nbasic_auth_users:\n  bob: plaintext\ncolour: x\n",
    )
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    text = "\n".join(info.value.problems)
    for where in (
        "tls_server_config.cert_file",
        "tls_server_config.client_auth_type",
        "basic_auth_users.bob",
        "server.web_config_file.colour",
    ):
        assert where in text, where
    assert "plaintext" not in text  # a would-be password is never echoed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tls_server_config:\n\tcert_file: a.crt\n", "line 2, column 1: a tab: YAML indents with spaces only"),
        ("basic_auth_users:\n  bob: '$2y$10$abc\n", "line 2, column 8: a quote or a bracket that is never closed"),
    ],
)
def test_a_web_config_that_is_not_yaml_says_where_and_what_in_plain_words(certs: Certs, text: str, words: str) -> None:
    """The web config file's YAML mistakes are worded like the config file's: its key, the file, the line and
    what to change; never the hash or password being typed."""
    path = write_web_config(certs, text)
    with pytest.raises(ConfigError) as info:
        load_web_config(path, where="events.webhook.web_config_file")
    (problem,) = info.value.problems
    assert problem == f"events.webhook.web_config_file: {path}: not valid YAML: {words}"
    assert "$2y$" not in problem


def test_check_config_exits_2_on_a_bad_web_config(certs: Certs, tmp_path: Path) -> None:
    """A config whose web_config_file is invalid fails check-config with status 2."""
    write_web_config(certs, "tls_server_config:\n  key_file: server.key\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "adobe: {client_id: a, client_secret: b, org_id: c}\n"
        "sandboxes: [{name: prod, discover: {enabled: true}}]\n"
        "server: {web_config_file: web.yml}\n"
    )
    assert main(["check-config", "--config", str(config)]) == 2


def test_shipped_example_web_config_is_valid(tmp_path: Path) -> None:
    """deploy/web-config.example.yml parses once its certificate files exist."""
    example = Path(__file__).parent.parent / "deploy" / "web-config.example.yml"
    ca = trustme.CA()
    cert = ca.issue_cert("exporter.example.test")
    (tmp_path / "tls").mkdir()
    cert.private_key_pem.write_to_path(str(tmp_path / "tls" / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "tls" / "prometheus-ca.crt"))
    copy = tmp_path / "web.yml"
    copy.write_text(example.read_text())
    loaded = load_web_config(copy)
    assert loaded.ssl_context is not None
    assert set(loaded.users) == {"prometheus"}
