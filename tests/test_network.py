"""Corporate networks: a CONNECT proxy from the environment or adobe.proxy, NO_PROXY, a TLS-intercepting proxy's
CA (adobe.ca_file), and transport errors that name the host and the reason. Everything on 127.0.0.1: the
simulator serves HTTPS with a throwaway CA (trustme), and the proxy is a real CONNECT tunnel."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from exporter.app import Exporter
from exporter.simulator import Simulator, World
from exporter.simulator.server import API_PREFIX, IMS_PATH
from exporter.transport import describe_failure
from tests.helpers import free_port
from tests.servers import ConnectProxy
from tests.simulation import make_config, make_exporter, make_world

Tls = tuple[str, Path, World]


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[Tls]:
    """The simulator over HTTPS on 127.0.0.1, its certificate from a CA the system does not trust."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "proxy-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    world = make_world()
    runner = web.AppRunner(Simulator(world).app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", ca_file, world
    finally:
        await runner.cleanup()


def exporter_for(tls: Tls, *, proxy: str | None = None, ca: bool = True) -> Exporter:
    url, ca_file, world = tls
    config = make_config(url, sandboxes=("prod",), retries=0)
    adobe = dataclasses.replace(
        config.adobe,
        ims_token_url=f"{url}{IMS_PATH}",
        flow_service_url=f"{url}{API_PREFIX}",
        proxy=proxy,
        ca_file=ca_file if ca else None,
    )
    return make_exporter(dataclasses.replace(config, adobe=adobe), world=world)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_https_proxy_from_the_environment_carries_every_adobe_request(
    tls_sim: Tls, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set, the token request and the Flow Service calls go through the CONNECT proxy, and TLS
    to the (simulated) Adobe host is verified with adobe.ca_file."""
    async with ConnectProxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        exporter = exporter_for(tls_sim)
        try:
            await exporter.start()
            assert await exporter.poll_once()
            flows = exporter.snapshot().flows
        finally:
            await exporter.close()
    port = tls_sim[0].rsplit(":", 1)[1]
    assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{port}"}
    assert flows and all(f.up for f in flows)


async def test_no_proxy_sends_requests_direct(tls_sim: Tls, no_proxy_env: pytest.MonkeyPatch) -> None:
    """A host in NO_PROXY is reached directly: the proxy sees no tunnel, and polling works."""
    async with ConnectProxy() as proxy:
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        exporter = exporter_for(tls_sim)
        try:
            await exporter.start()
            assert await exporter.poll_once()
        finally:
            await exporter.close()
    assert proxy.targets == []


async def test_adobe_proxy_in_the_config_is_used_without_any_environment(
    tls_sim: Tls, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """adobe.proxy sends every Adobe request through the proxy even with no proxy variable set."""
    async with ConnectProxy() as proxy:
        exporter = exporter_for(tls_sim, proxy=proxy.url)
        try:
            await exporter.start()
            assert await exporter.poll_once()
        finally:
            await exporter.close()
    assert proxy.targets


async def test_an_untrusted_certificate_fails_naming_the_host_and_the_ca_file_setting(
    tls_sim: Tls, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """Without adobe.ca_file the intercepting CA is not trusted: the poll fails, and the error says TLS to which
    host failed, why, and that adobe.ca_file is the fix."""
    exporter = exporter_for(tls_sim, ca=False)
    try:
        await exporter.start()
        assert not await exporter.poll_once()
        error = exporter.snapshot().sandboxes[0].last_error or ""
    finally:
        await exporter.close()
    port = tls_sim[0].rsplit(":", 1)[1]
    assert f"TLS to 127.0.0.1:{port} failed" in error and "adobe.ca_file" in error
    assert "certificate" in error


async def test_a_refused_connection_names_the_host_and_the_reason(no_proxy_env: pytest.MonkeyPatch) -> None:
    """Nothing listens at the IMS URL: the sandbox's error names host:port and 'Connection refused'."""
    port = free_port()
    exporter = exporter_for((f"http://127.0.0.1:{port}", Path("unused"), make_world()), ca=False)
    try:
        await exporter.start()
        assert not await exporter.poll_once()
        error = exporter.snapshot().sandboxes[0].last_error or ""
    finally:
        await exporter.close()
    assert f"IMS token request failed: cannot connect to 127.0.0.1:{port}" in error
    assert "refused" in error.lower()


def test_dns_and_proxy_failures_are_described_with_the_host() -> None:
    """A failed name lookup names the host and suggests a proxy; a proxy that cannot be reached is named without
    the credentials in its URL."""
    key = ConnectionKey("ims-na1.adobelogin.com", 443, True, True, None, None, None)
    dns = aiohttp.ClientConnectorError(key, socket.gaierror(-2, "Name or service not known"))
    text = describe_failure(dns, "https://ims-na1.adobelogin.com/ims/token/v3")
    assert text.startswith("cannot resolve ims-na1.adobelogin.com: Name or service not known")
    assert "HTTPS_PROXY" in text
    proxy_down = aiohttp.ClientProxyConnectionError(key, ConnectionRefusedError(111, "Connection refused"))
    text = describe_failure(proxy_down, "https://platform.adobe.io/x", proxy="http://me:s3cret@proxy.corp:3128")
    assert text == "cannot connect to proxy proxy.corp:3128: Connection refused (check HTTPS_PROXY or adobe.proxy)"
    assert "s3cret" not in text
