"""The webhook under load, side by side for two checkouts of the exporter (this one, and optionally another):
signed deliveries per second it holds, key fetches per forged delivery, how long a poll cycle takes while forged
deliveries wait on a slow key host, and the exporter's memory growth over the flood.

On 127.0.0.1 only: the simulator (``simulate``, its clock standing still), the exporter (``run``, polling every
2 s, its webhook on), both started from the checkout's source, and in this process a key host serving one RSA
key (and answering unknown key paths after a delay, as a slow ``static.adobeioevents.com`` would) and the
load generator. Every wait is bounded; nothing asserts a number.

    python bench/webhook_flood.py [--against OTHER_CHECKOUT] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = Path(__file__).resolve().parent.parent
KEY_PATH = "/prod/keys/pub-key-7d9c2b1e-0000-4000-8000-000000000001.pem"
CLIENT_ID = "sim-client-id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KeyHost:
    """One real key; every other path is answered 404 after ``delay`` seconds. Counts requests."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests = 0
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.path == KEY_PATH:
            pem = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return web.Response(body=pem)
        await asyncio.sleep(self.delay)
        return web.Response(status=404)

    def signed(self, body: bytes) -> dict[str, str]:
        signature = base64.b64encode(self.key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
        return {
            "x-adobe-digital-signature-1": signature,
            "x-adobe-public-key1-path": KEY_PATH,
            "Content-Type": "application/json",
        }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not up in {seconds} s")


async def longest_poll_gap(session: aiohttp.ClientSession, metrics: str, seconds: float) -> float:
    """Over ``seconds``, the longest time the sandbox went without a successful poll (read every 0.2 s from
    aep_exporter_last_poll_success_timestamp_seconds; a poll every 2 s keeps it near 2 s)."""
    gap = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with session.get(metrics, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith('aep_exporter_last_poll_success_timestamp_seconds{sandbox="prod"}'):
                gap = max(gap, time.time() - float(line.rsplit(" ", 1)[1]))
        await asyncio.sleep(0.2)
    return gap


async def measure(source: Path, keys: KeyHost, key_url: str, seconds: float, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    sim_port, port, hook_port = free_port(), free_port(), free_port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--port",
            str(sim_port),
            "--speed",
            "0",
            "--flows",
            "20",
            "--sandboxes",
            "prod",
            "--log-format",
            "json",
        ],
        cwd=source,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    config = tmp / f"config-{source.name}.yaml"
    config.write_text(f"""adobe:
  client_id: {CLIENT_ID}
  client_secret: sim-client-secret
  org_id: SIMULATED000000000000000@AdobeOrg
  ims_token_url: {sim_url}/ims/token/v3
  flow_service_url: {sim_url}/data/foundation/flowservice
sandboxes: [{{name: prod, discover: {{enabled: true}}}}]
poll: {{interval: 2s, jitter: 0%}}
state: {{path: null}}
server: {{listen: "127.0.0.1:{port}"}}
log: {{level: error}}
events: {{webhook: {{listen: "127.0.0.1:{hook_port}", public_key_base_url: "{key_url}"}}}}
""")
    exporter = None
    try:
        await wait_http(f"{sim_url}/")
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(config)],
            cwd=source,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_http(f"http://127.0.0.1:{port}/readyz")
        hook = f"http://127.0.0.1:{hook_port}/adobe-events"
        metrics = f"http://127.0.0.1:{port}/metrics"
        body = json.dumps(
            {
                "event_id": "bench",
                "recipient_client_id": CLIENT_ID,
                "event": {"flowId": "00000000-0000-4000-8000-00000000beef"},
            }
        ).encode()
        signed = keys.signed(body)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            latencies: list[float] = []
            stop = time.monotonic() + seconds

            async def deliverer() -> None:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    async with session.post(hook, data=body, headers=signed) as resp:
                        await resp.read()
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(deliverer() for _ in range(8)))
            held = len(latencies) / seconds
            p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000
            before_keys = keys.requests
            rss_before = rss_kib(exporter.pid)
            rng = random.Random(1)
            forged = 300
            for i in range(forged):  # what an attacker sends: a well-formed signature that verifies with no key
                headers = {
                    "x-adobe-digital-signature-1": base64.b64encode(rng.randbytes(256)).decode(),
                    "x-adobe-public-key1-path": f"/prod/keys/pub-key-forged-{i}.pem",
                    "x-adobe-digital-signature-2": base64.b64encode(rng.randbytes(256)).decode(),
                    "x-adobe-public-key2-path": f"/prod/keys/pub-key-forged-{i}-b.pem",
                }
                async with session.post(hook, data=body, headers=headers) as resp:
                    await resp.read()
            fetches = (keys.requests - before_keys) / forged
            quiet = await longest_poll_gap(session, metrics, 6.0)
            keys.delay = 8.0  # the key host hangs; 150 forged deliveries wait on it

            async def wait_on_key(i: int) -> None:
                headers = {
                    "x-adobe-digital-signature-1": base64.b64encode(rng.randbytes(256)).decode(),
                    "x-adobe-public-key1-path": f"/prod/keys/pub-key-slow-{i}.pem",
                }
                try:
                    async with session.post(
                        hook, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
                    ) as resp:
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError):
                    pass

            flood = [asyncio.get_running_loop().create_task(wait_on_key(i)) for i in range(150)]
            await asyncio.sleep(0.5)
            during = await longest_poll_gap(session, metrics, 7.0)
            rss_after = rss_kib(exporter.pid)
            await asyncio.gather(*flood)
            keys.delay = 0.0
        return {
            "held": held,
            "p99_ms": p99,
            "fetches_per_forged": fetches,
            "poll_quiet_s": quiet,
            "poll_flood_s": during,
            "rss_growth_mib": (rss_after - rss_before) / 1024,
        }
    finally:
        for proc in (exporter, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout of the exporter, measured the same way")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    keys = KeyHost()
    app = web.Application()
    app.router.add_get("/{tail:.*}", keys.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    key_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", key_port).start()
    tmp = Path(tempfile.gettempdir())
    rows = []
    try:
        for source in [ROOT, *([args.against.resolve()] if args.against else [])]:
            rows.append((source, await measure(source, keys, f"http://127.0.0.1:{key_port}", args.seconds, tmp)))
    finally:
        await runner.cleanup()
    print(
        "| checkout | signed deliveries/s (p99 ms) | key fetches per forged delivery | longest time without a "
        "poll (2 s interval), quiet / during a forged flood on a hanging key host | RSS growth over the flood |"
    )
    print("|---|---:|---:|---:|---:|")
    for source, r in rows:
        print(
            f"| {source.name} | {r['held']:.0f} ({r['p99_ms']:.1f}) | {r['fetches_per_forged']:.2f} | "
            f"{r['poll_quiet_s']:.1f} s / {r['poll_flood_s']:.1f} s | {r['rss_growth_mib']:.1f} MiB |"
        )


if __name__ == "__main__":
    asyncio.run(main())
