"""Real Prometheus and Alertmanager (Debian's binaries) on 127.0.0.1 for end-to-end tests, plus a webhook sink."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers import free_port

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "aep-flows.rules.yml"


def binary(name: str) -> str:
    """A Debian-packaged binary; the test command installs them, so absence is a failure, never a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run the suite with `scripts/test`, which installs it")
    return path


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout}s")


@asynccontextmanager
async def process(cmd: list[str], ready_url: str, log: Path, ready_within: float = 30.0) -> AsyncIterator[None]:
    """``cmd`` running (its output in ``log``) once ``ready_url`` answers 200; stopped on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            await wait_ready(ready_url, ready_within)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@asynccontextmanager
async def prometheus(
    tmp: Path,
    exporter_url: str,
    *,
    alertmanager: str | None = None,
    every_group_each_second: bool = False,
    flags: tuple[str, ...] = (),
) -> AsyncIterator[str]:
    """Prometheus scraping the exporter every second, with the shipped rules evaluated every second (groups with an
    interval of their own keep it, unless ``every_group_each_second``)."""
    port = free_port()
    rules = RULES
    if every_group_each_second:
        loaded = yaml.safe_load(RULES.read_text())
        for group in loaded["groups"]:
            group.pop("interval", None)
        rules = tmp / "rules-each-second.yml"
        rules.write_text(yaml.safe_dump(loaded, width=1_000_000))
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "aep-flow-exporter",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [exporter_url.split("//", 1)[1]]}],
            }
        ],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        binary("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
        *flags,
    ]
    async with process(cmd, f"http://127.0.0.1:{port}/-/ready", tmp / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def alertmanager(tmp: Path, config: dict[str, Any]) -> AsyncIterator[str]:
    port = free_port()
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [
        binary("prometheus-alertmanager"),
        f"--config.file={path}",
        f"--storage.path={tmp / 'am'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    async with process(cmd, f"http://127.0.0.1:{port}/-/ready", tmp / "alertmanager.log"):
        yield f"127.0.0.1:{port}"


class WebhookSink:
    """Collects Alertmanager webhook notifications, keyed by the receiver name in the URL path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.server: TestServer | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["receiver"], await request.json()))
        return web.Response(text="ok")

    async def __aenter__(self) -> WebhookSink:
        app = web.Application()
        app.router.add_post("/{receiver}", self._hook)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()

    def url(self, receiver: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/{receiver}"))


async def query(prom_url: str, expr: str) -> dict[str, Any]:
    """An instant query through Prometheus's HTTP API."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prom_url}/api/v1/query", params={"query": expr}) as resp,
    ):
        return dict(await resp.json())


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1, as corporate proxies are: it records each tunnel's target and pipes
    bytes both ways (TLS stays end to end). Anything but CONNECT gets 405."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _version = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            pipes = [
                asyncio.ensure_future(_pipe(reader, upstream_writer)),
                asyncio.ensure_future(_pipe(upstream_reader, writer)),
            ]
            for pipe in pipes:
                self._tasks.add(pipe)
                pipe.add_done_callback(self._tasks.discard)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            upstream_writer.close()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
