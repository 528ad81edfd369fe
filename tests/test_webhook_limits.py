"""The internet-facing webhook cannot be turned against the exporter: idle, slow-header and trickled-body clients
are closed, a flood of connections is capped so /metrics and /healthz keep answering, forged deliveries cost no
key fetch before everything checkable is checked (and at most a few a minute after), key fetches run on their
own pool so polling never waits for them, and error answers never echo what the client sent."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from exporter.app import Exporter
from exporter.configfile import load_config
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from exporter.webhook import KEY_FETCHES_PER_MINUTE
from tests.helpers import free_port, sim_config_yaml, wait_http
from tests.simulation import Sim
from tests.test_events import HOOK, outcomes, render, with_events

PY = [sys.executable, "-m", "exporter"]
FORGED_SIGNATURE = base64.b64encode(b"\x01" * 256).decode()


@pytest.fixture
async def hook(sim: Sim) -> AsyncIterator[tuple[Exporter, str]]:
    """An exporter with its webhook on 127.0.0.1 (1 s header and body timeouts, 20 connections at most)."""
    exporter = with_events(sim, journal=False, webhook=True)
    assert exporter.config.events.webhook is not None
    webhook = dataclasses.replace(
        exporter.config.events.webhook, read_header_timeout=1.0, read_body_timeout=1.0, max_connections=20
    )
    exporter.config = dataclasses.replace(
        exporter.config, events=dataclasses.replace(exporter.config.events, webhook=webhook)
    )
    await exporter.start()
    assert await exporter.poll_once()
    await exporter.start_events()
    yield exporter, f"http://127.0.0.1:{exporter.webhook_port}{HOOK}"
    await exporter.close()


def forged(path: str) -> dict[str, str]:
    """Signature headers of the right shape that verify with no key."""
    return {
        "x-adobe-digital-signature-1": FORGED_SIGNATURE,
        "x-adobe-public-key1-path": path,
        "Content-Type": "application/json",
    }


async def closed_within(port: int, send: bytes, seconds: float) -> bool:
    """Whether the server closes a connection that sends ``send`` and then nothing, within ``seconds``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(send)
    await writer.drain()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(1024):
                pass
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_idle_slow_header_and_trickled_body_clients_are_closed(hook: tuple[Exporter, str]) -> None:
    """events.webhook.read_header_timeout closes a connection that sends nothing, or half a request head;
    read_body_timeout one that trickles its body: none is left open past its timeout."""
    exporter, _url = hook
    port = exporter.webhook_port
    assert port is not None
    head = f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
    signed = "".join(f"{k}: {v}\r\n" for k, v in forged("/prod/keys/pub-key-aa.pem").items())
    assert await closed_within(port, b"", 5)
    assert await closed_within(port, f"POST {HOOK} HTTP/1.1\r\nHost: x\r\n".encode(), 5)
    assert await closed_within(port, (head + signed + "\r\n").encode() + b"{", 5)


async def test_a_connection_flood_is_capped_and_metrics_keep_answering(tmp_path: Path, sim: Sim) -> None:
    """A real exporter process held to 1,024 open files: 1,100 idle connections to its webhook leave it at its
    cap of webhook connections (the rest closed at once), and /metrics and /healthz answer throughout."""
    metrics_port, hook_port = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        sim_config_yaml(
            sim.url,
            sandboxes="  - {name: prod, discover: {enabled: true}}",
            rest=(
                f'server: {{listen: "127.0.0.1:{metrics_port}"}}\npoll: {{interval: 1h}}\nstate: {{path: null}}\n'
                f'events: {{webhook: {{listen: "127.0.0.1:{hook_port}", public_key_base_url: "{sim.url}", '
                "max_connections: 100}}\n"
            ),
        )
    )

    def cap_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # this test process holds the 1,100
    proc = subprocess.Popen(
        [*PY, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=cap_files,  # noqa: PLW1509 -- a limit, no threads
    )
    sockets: list[socket.socket] = []
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{metrics_port}/healthz")
        for _ in range(1100):
            with_socket = socket.create_connection(("127.0.0.1", hook_port), timeout=5)
            sockets.append(with_socket)
        answers = []
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/metrics", "/healthz"):
                async with session.get(
                    f"http://127.0.0.1:{metrics_port}{path}", timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    answers.append(resp.status)
        open_files = len(os.listdir(f"/proc/{proc.pid}/fd"))
    finally:
        for each in sockets:
            each.close()
        proc.terminate()
        proc.wait(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert answers == [200, 200, 200]
    assert open_files < 1024 - 100, open_files  # the cap held: the flood took 100 descriptors, not 1,100


async def test_forged_deliveries_fetch_no_key_before_they_could_verify(sim: Sim, hook: tuple[Exporter, str]) -> None:
    """No signature, a signature that is not base64, one of the wrong length, or a key path not of the documented
    shape (another host, .., a query): refused (401) and counted, with no request to the key host."""
    _exporter, url = hook
    bad = [
        {},
        {"x-adobe-digital-signature-1": "not base64!!", "x-adobe-public-key1-path": "/prod/keys/pub-key-a.pem"},
        {
            "x-adobe-digital-signature-1": base64.b64encode(b"short").decode(),
            "x-adobe-public-key1-path": "/prod/keys/pub-key-a.pem",
        },
        forged("//evil.example/prod/keys/pub-key-a.pem"),
        forged("/prod/keys/../pub-key-a.pem"),
        forged("/prod/keys/pub-key-a.pem?x=1"),
        forged("/keys/key.pem"),
    ]
    async with aiohttp.ClientSession() as session:
        statuses = []
        for headers in bad:
            async with session.post(url, data=b"{}", headers=headers) as resp:
                statuses.append(resp.status)
    assert statuses == [401] * len(bad)
    assert sim.simulator.events.key_requests == 0


async def test_a_key_is_fetched_once_at_a_time_failures_are_kept_and_fetches_are_capped(
    sim: Sim, hook: tuple[Exporter, str]
) -> None:
    """Fifty deliveries at once naming one new key path fetch it once; a path whose key cannot be fetched is not
    asked again within a minute; three hundred forged deliveries naming new paths fetch at most the minute's
    budget."""
    exporter, url = hook
    async with aiohttp.ClientSession() as session:

        async def post(path: str) -> int:
            async with session.post(url, data=b"{}", headers=forged(path)) as resp:
                return resp.status

        assert set(await asyncio.gather(*(post("/prod/keys/pub-key-once.pem") for _ in range(50)))) == {401}
        once = sim.simulator.events.key_requests
        await post("/prod/keys/pub-key-once.pem")
        again = sim.simulator.events.key_requests
        for i in range(300):
            await post(f"/prod/keys/pub-key-forged-{i}.pem")
        flood = sim.simulator.events.key_requests
    assert once == 1 and again == 1
    assert flood <= KEY_FETCHES_PER_MINUTE
    samples = await render(exporter)
    assert outcomes(samples, "webhook")["rejected_signature"] == 351


async def test_polling_never_waits_for_a_key_fetch(sim: Sim, hook: tuple[Exporter, str]) -> None:
    """With Adobe's key host hanging and forged deliveries waiting on it, a poll cycle still completes: key
    fetches have their own connection pool. The cycle's duration, before and during the flood, is printed."""
    exporter, url = hook
    sim.simulator.events.faults.key_delay_s = 30.0
    started = time.perf_counter()
    assert await exporter.poll_once()
    quiet = time.perf_counter() - started
    async with aiohttp.ClientSession() as session:

        async def post(i: int) -> None:
            try:
                async with session.post(
                    url,
                    data=b"{}",
                    headers=forged(f"/prod/keys/pub-key-slow-{i}.pem"),
                    timeout=aiohttp.ClientTimeout(total=20),
                ) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                pass

        flood = [asyncio.get_running_loop().create_task(post(i)) for i in range(150)]
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        assert await asyncio.wait_for(exporter.poll_once(), 15)
        during = time.perf_counter() - started
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
    print(
        f"poll cycle: {quiet * 1000:.0f} ms quiet, {during * 1000:.0f} ms during a forged flood on a hanging key host"
    )


async def test_error_answers_never_echo_what_the_client_sent(hook: tuple[Exporter, str]) -> None:
    """A malformed request (a header with a control character, one over the size limit) gets a 400 that names no
    header and no value, an Authorization included."""
    exporter, _url = hook
    port = exporter.webhook_port
    assert port is not None
    answers = []
    for bad in (b"Authorization: Basic c2VjcmV0LXZhbHVl\x01\r\n", b"Authorization: " + b"A" * 20000 + b"\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {HOOK} HTTP/1.1\r\nHost: x\r\n".encode() + bad + b"\r\n")
        await writer.drain()
        answers.append(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()
    for answer in answers:
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]
        assert b"c2VjcmV0" not in answer and b"AAAA" not in answer and b"Authorization" not in answer


def test_the_webhook_web_config_is_applied_in_full_or_refused(tmp_path: Path) -> None:
    """events.webhook.web_config_file: a problem in it is reported under that key (not server's), and
    basic_auth_users, which Adobe could never satisfy, is refused with why."""
    (tmp_path / "bad.yml").write_text("tls_server_config: {cert_file: missing.pem, key_file: missing.pem}\n")
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "users.yml").write_text(f"basic_auth_users: {{adobe: '{hashed}'}}\n")
    for name, expected in (
        ("bad.yml", "events.webhook.web_config_file.tls_server_config"),
        ("users.yml", "events.webhook.web_config_file.basic_auth_users: not on the webhook"),
    ):
        (tmp_path / "c.yaml").write_text(
            sim_config_yaml(
                "http://127.0.0.1:9",
                sandboxes="  - {name: p, discover: {enabled: true}}",
                rest=f"events: {{webhook: {{web_config_file: {name}}}}}\n",
            )
        )
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "c.yaml")
        problems = "\n".join(info.value.problems)
        assert expected in problems and "server.web_config_file" not in problems, problems


async def test_the_webhook_web_configs_headers_are_on_its_answers(sim: Sim, tmp_path: Path) -> None:
    """http_server_config.headers of the webhook's web config file are on every webhook answer."""
    (tmp_path / "web.yml").write_text("http_server_config:\n  headers: {X-Frame-Options: deny}\n")
    exporter = with_events(sim, journal=False, webhook=True)
    assert exporter.config.events.webhook is not None
    webhook = dataclasses.replace(
        exporter.config.events.webhook,
        web_config_file="web.yml",
        web_config_path=tmp_path / "web.yml",
        web=load_web_config(tmp_path / "web.yml"),
    )
    exporter.config = dataclasses.replace(
        exporter.config, events=dataclasses.replace(exporter.config.events, webhook=webhook)
    )
    try:
        await exporter.start()
        await exporter.start_events()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{exporter.webhook_port}{HOOK}", params={"challenge": "c1"}) as resp,
        ):
            header = resp.headers.get("X-Frame-Options")
    finally:
        await exporter.close()
    assert header == "deny"
