"""`healthcheck` (the image's HEALTHCHECK) asks its own process on loopback: never through a proxy, and its
--timeout bounds the whole check, however slowly the port answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

from tests.helpers import free_port

PY = [sys.executable, "-m", "exporter"]


def config_for(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(
        "adobe: {client_id: x, client_secret: y, org_id: z}\nsandboxes: [{name: prod, discover: "
        f"{{enabled: true}}}}]\nserver:\n  listen: 127.0.0.1:{port}\n"
    )
    return config


async def test_healthcheck_ignores_the_proxy_settings(tmp_path: Path) -> None:
    """With HTTP_PROXY and HTTPS_PROXY pointing at a proxy that is not there (as behind a corporate proxy in a
    container), the loopback check still reaches the exporter: exit 0."""
    port = free_port()
    app = web.Application()

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    try:
        command = [*PY, "healthcheck", "--config", str(config_for(tmp_path, port))]
        proc = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60, check=False, env=env
        )
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, proc.stderr


async def test_the_timeout_bounds_the_whole_check_against_a_trickling_port(tmp_path: Path) -> None:
    """A port that accepts and then sends one byte a second, never a whole answer: `healthcheck --timeout 2` says
    unhealthy (exit 1) after about 2 s, not after the port has trickled for as long as it likes."""
    port = free_port()

    async def trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(120):
                writer.write(b"H")
                await writer.drain()
                await asyncio.sleep(1)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", port)
    started = time.monotonic()
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [*PY, "healthcheck", "--config", str(config_for(tmp_path, port)), "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.close()
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "no answer within 2 s" in proc.stderr
    assert elapsed < 10, elapsed  # the interpreter's start plus the 2 s; a per-read timeout would run 120 s
