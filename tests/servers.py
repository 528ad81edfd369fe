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
        pytest.fail(f"{name} not found: run the suite with `bash .ci/dev test`, which installs it")
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
async def process(cmd: list[str], ready_url: str, log: Path) -> AsyncIterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            await wait_ready(ready_url)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@asynccontextmanager
async def prometheus(tmp: Path, exporter_url: str, *, alertmanager: str | None = None) -> AsyncIterator[str]:
    """Prometheus scraping the exporter every second, with the shipped rules evaluated every second."""
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "aep-flow-exporter", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [exporter_url.split("//", 1)[1]]}]}],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
           f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s"]
    async with process(cmd, f"http://127.0.0.1:{port}/-/ready", tmp / "prometheus.log"):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def alertmanager(tmp: Path, config: dict[str, Any]) -> AsyncIterator[str]:
    port = free_port()
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    cmd = [binary("prometheus-alertmanager"), f"--config.file={path}", f"--storage.path={tmp / 'am'}",
           f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
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
    async with aiohttp.ClientSession() as session, session.get(f"{prom_url}/api/v1/query",
                                                               params={"query": expr}) as resp:
        return dict(await resp.json())
