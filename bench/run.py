"""Fleet-scale benchmark: API economy, cold start, /metrics cost, memory and event-loop lag.

For each fleet size it starts, on 127.0.0.1 only: the simulator (5 sandboxes, 50 ms API latency, clock
standing still), the exporter as a real daemon (``run``) with a state file, Debian's
prometheus-pushgateway and a plain prometheus-client server for comparison. Every request loop is bounded.

    python bench/run.py [--sizes 500,2000,5000] [--out bench/results.md]

Figures are measured side by side in one run (the machine is noisy); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PY = [sys.executable, "-m", "exporter"]
SANDBOXES = 5
LATENCY = 0.05
SCRAPERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    flows: int
    cold_calls: int = 0
    cold_seconds: float = 0.0
    cold_bound: float = 0.0
    quiet_calls: int = 0
    quiet_floor: int = 0
    changed_calls: int = 0
    changed_floor: int = 0
    naive_calls: int = 0
    series: int = 0
    payload_mb: float = 0.0
    scrape: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_mb: float = 0.0
    state_mb: float = 0.0
    lag: dict[str, Any] = field(default_factory=dict)


async def wait_http(session: aiohttp.ClientSession, url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


async def get_json(session: aiohttp.ClientSession, url: str, method: str = "GET") -> Any:
    async with session.request(method, url) as resp:
        return await resp.json()


async def self_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    """aep_exporter_* samples by name and sandbox (the flow block is skipped by name)."""
    async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:  # as Prometheus asks
        text = await resp.text()
    start = text.find("# HELP aep_exporter_build_info")
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text[start:]):
        for sample in family.samples:
            out.setdefault(sample.name, {})[sample.labels.get("sandbox", "")] = sample.value
    return out


async def wait_cycle(session: aiohttp.ClientSession, url: str, after: float, timeout: float = 600.0) -> dict[str, Any]:
    """Wait until every sandbox finished a successful cycle after ``after`` (a Unix time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = await self_metrics(session, url)
        done = metrics.get("aep_exporter_last_poll_success_timestamp_seconds", {})
        if len(done) == SANDBOXES and all(v > after for v in done.values()):
            return metrics
        await asyncio.sleep(0.2)
    raise RuntimeError("poll cycle did not complete in time")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


async def one_scrape(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds one scrape takes (to size the storm rounds)."""
    started = time.perf_counter()
    async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
        await resp.read()
    return time.perf_counter() - started


async def storm(url: str, seconds: float, *, gzip: bool = True, connections: int = SCRAPERS) -> dict[str, float]:
    """wrk with ``connections`` for ``seconds``: requests, p50 and p99 latency (ms) as wrk measured them."""
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "120s",
        "-H",
        f"Accept-Encoding: {'gzip' if gzip else 'identity'}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 120)
    text = out.decode()
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", text)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    if not (requests and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    return {
        "n": float(requests.group(1)),
        "seconds": float(requests.group(2)) * _UNITS[requests.group(3)] / 1000,
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
    }


def summarize(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Throughput over all rounds; the median round's p50 and the worst round's p99."""
    return {
        "rps": sum(r["n"] for r in rounds) / sum(r["seconds"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": max(r["p99_ms"] for r in rounds),
        "n": sum(r["n"] for r in rounds),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_config(
    path: Path,
    sim_url: str,
    ids: dict[str, list[str]],
    *,
    port: int,
    state: Path,
    interval: float,
    rps: float,
    concurrency: int,
) -> None:
    sandboxes = "\n".join(
        f"  - name: {sb}\n    flows:\n" + "\n".join(f"      - {fid}" for fid in flow_ids)
        for sb, flow_ids in ids.items()
    )
    path.write_text(f"""
adobe:
  client_id: sim-client-id
  client_secret: sim-client-secret
  org_id: SIMULATED000000000000000@AdobeOrg
  ims_token_url: {sim_url}/ims/token/v3
  flow_service_url: {sim_url}/data/foundation/flowservice
sandboxes:
{sandboxes}
poll: {{interval: {interval}s, jitter: 0%, timeout: 60s, requests_per_second: {rps}, max_concurrency: {concurrency}}}
state: {{path: {state}}}
server: {{listen: "127.0.0.1:{port}"}}
log: {{level: warning, format: json}}
""")


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def bench_size(flows: int, work: Path, args: argparse.Namespace) -> Result:
    result = Result(flows=flows)
    per_sandbox = flows // SANDBOXES
    sim_port, exp_port, pgw_port, naive_port = free_port(), free_port(), free_port(), free_port()
    sim_url, exp_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{exp_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sandbox_names = ",".join(f"sb{i}" for i in range(SANDBOXES))
        procs.append(
            start(
                [
                    *PY,
                    "simulate",
                    "--port",
                    str(sim_port),
                    "--sandboxes",
                    sandbox_names,
                    "--flows",
                    str(per_sandbox),
                    "--speed",
                    "0",
                    "--latency",
                    str(LATENCY),
                    "--min-interval",
                    "1d",
                    "--max-duration",
                    "60s",
                    "--log-format",
                    "json",
                ],
                work / f"sim-{flows}.log",
            )
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            await wait_http(session, f"{sim_url}/")
            ids = await get_json(session, f"{sim_url}/_sim/flows")
            # Cold start lower bound: flow listings + one runs call per flow (first sight) + the token.
            expected_cold = SANDBOXES * math.ceil(per_sandbox / 100) + flows + 1
            bound = max(expected_cold / args.rps, expected_cold * LATENCY / args.concurrency)
            interval = max(10.0, bound * 1.5 + 5)
            state = work / f"state-{flows}.db"
            config = work / f"config-{flows}.yaml"
            write_config(
                config,
                sim_url,
                ids,
                port=exp_port,
                state=state,
                interval=interval,
                rps=args.rps,
                concurrency=args.concurrency,
            )
            await get_json(session, f"{sim_url}/_sim/requests/reset", "POST")

            # Cold start, with a scrape storm and the lag probe running through it.
            started = time.time()
            exporter = start([*PY, "run", "--config", str(config)], work / f"exporter-{flows}.log")
            procs.append(exporter)
            await wait_http(session, f"{exp_url}/healthz")
            probe = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "probe.py"),
                    "--port",
                    str(exp_port),
                    "--seconds",
                    str(bound * 1.3 + 4),
                ],
                stdout=subprocess.PIPE,
            )
            storm_task = asyncio.create_task(storm(f"{exp_url}/metrics", bound * 1.3 + 4))
            metrics = await wait_cycle(session, f"{exp_url}/metrics", started)
            counts = (await get_json(session, f"{sim_url}/_sim/requests"))["requests"]
            result.cold_calls = counts.get("flows", 0) + counts.get("runs", 0) + counts.get("token", 0)
            result.cold_seconds = max(metrics["aep_exporter_poll_duration_seconds"].values())
            result.cold_bound = max(result.cold_calls / args.rps, result.cold_calls * LATENCY / args.concurrency)
            await storm_task
            probe_out, _ = probe.communicate(timeout=120)
            result.lag = json.loads(probe_out)

            # Steady state, nothing new: one full cycle after the cold one.
            await get_json(session, f"{sim_url}/_sim/requests/reset", "POST")
            mark = time.time()
            await wait_cycle(session, f"{exp_url}/metrics", mark)
            counts = (await get_json(session, f"{sim_url}/_sim/requests"))["requests"]
            result.quiet_calls = counts.get("flows", 0) + counts.get("runs", 0)
            result.quiet_floor = SANDBOXES * math.ceil(per_sandbox / 100)
            result.naive_calls = flows

            # Steady state with 5 % of the flows having a new run.
            changed = await get_json(session, f"{sim_url}/_sim/trigger?fraction=0.05&duration=1", "POST")
            await get_json(session, f"{sim_url}/_sim/advance?seconds=5", "POST")
            await get_json(session, f"{sim_url}/_sim/requests/reset", "POST")
            mark = time.time()
            await wait_cycle(session, f"{exp_url}/metrics", mark)
            counts = (await get_json(session, f"{sim_url}/_sim/requests"))["requests"]
            result.changed_calls = counts.get("flows", 0) + counts.get("runs", 0)
            result.changed_floor = result.quiet_floor + len(changed["flows"])

            # /metrics: the exporter and the pushgateway (same payload) alternately, then plain generate_latest.
            async with session.get(f"{exp_url}/metrics", headers={"Accept-Encoding": "identity"}) as resp:
                payload = await resp.read()
            result.payload_mb = len(payload) / 1e6
            result.series = sum(1 for line in payload.split(b"\n") if line and not line.startswith(b"#"))
            procs.append(
                start(
                    ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{pgw_port}"], work / f"pgw-{flows}.log"
                )
            )
            await wait_http(session, f"http://127.0.0.1:{pgw_port}/-/ready")
            async with session.put(f"http://127.0.0.1:{pgw_port}/metrics/job/bench", data=payload) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"pushgateway refused the payload: {resp.status} {await resp.text()}")
            mine: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            rounds = 3
            pgw_url = f"http://127.0.0.1:{pgw_port}/metrics"
            # A round must be long enough for every connection to finish a few scrapes of the slower server.
            round_s = max(args.scrape_seconds / rounds, 4 * await one_scrape(session, pgw_url))
            for _ in range(rounds):
                mine.append(await storm(f"{exp_url}/metrics", round_s))
                theirs.append(await storm(pgw_url, round_s))
            result.scrape["exporter"] = summarize(mine)
            result.scrape["pushgateway"] = summarize(theirs)
            result.rss_mb = rss_mb(exporter.pid)
            copy = work / f"naive-{flows}.db"
            with sqlite3.connect(state) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)
            result.state_mb = sum(p.stat().st_size for p in state.parent.glob(f"{state.name}*")) / 1e6
            procs.append(
                start(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "naive_server.py"),
                        "--state",
                        str(copy),
                        "--port",
                        str(naive_port),
                    ],
                    work / f"naive-{flows}.log",
                )
            )
            await wait_http(session, f"http://127.0.0.1:{naive_port}/metrics")
            naive_url = f"http://127.0.0.1:{naive_port}/metrics"
            # One connection: a CPU-bound single-threaded server's throughput does not grow with concurrency,
            # and 8 connections would need minutes per round at 5,000 flows.
            naive = await storm(
                naive_url, max(args.scrape_seconds, 3 * await one_scrape(session, naive_url)), gzip=False, connections=1
            )
            result.scrape["generate_latest"] = summarize([naive])
    finally:
        for proc in reversed(procs):
            stop(proc)
    return result


def table(results: list[Result]) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}; simulator: {SANDBOXES} sandboxes, "
        f"{LATENCY * 1000:.0f} ms API latency; scrapes by wrk, {SCRAPERS} connections, gzip as Prometheus asks "
        "(generate_latest: 1 connection, uncompressed: it is CPU-bound on one core either way).",
        "",
        "| flows | series | quiet cycle calls (floor) | 5% changed calls (floor) | naive calls | naive / quiet "
        "| cold start s (bound) | cold / bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.flows} | {r.series} | {r.quiet_calls} ({r.quiet_floor}) | {r.changed_calls} ({r.changed_floor}) "
            f"| {r.naive_calls} | {r.naive_calls / max(r.quiet_calls, 1):.0f}x | {r.cold_seconds:.1f} "
            f"({r.cold_bound:.1f}) | {r.cold_seconds / r.cold_bound:.2f} |"
        )
    lines += [
        "",
        "| flows | payload MB | exporter scrapes/s (p50 / p99 ms) | pushgateway scrapes/s (p50 / p99 ms) "
        "| generate_latest scrapes/s (p50 / p99 ms) | vs pushgateway | vs generate_latest | peak RSS MB "
        "| state file MB | worst /healthz ms during cold poll + storm |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        e, p, n = r.scrape["exporter"], r.scrape["pushgateway"], r.scrape["generate_latest"]
        lines.append(
            f"| {r.flows} | {r.payload_mb:.1f} | {e['rps']:.1f} ({e['p50_ms']:.1f} / {e['p99_ms']:.1f}) "
            f"| {p['rps']:.1f} ({p['p50_ms']:.1f} / {p['p99_ms']:.1f}) "
            f"| {n['rps']:.2f} ({n['p50_ms']:.0f} / {n['p99_ms']:.0f}) "
            f"| {e['rps'] / max(p['rps'], 1e-9):.1f}x | {e['rps'] / max(n['rps'], 1e-9):.0f}x | {r.rss_mb:.0f} "
            f"| {r.state_mb:.1f} | {r.lag.get('max_ms') or float('nan'):.1f} |"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large.scrape["exporter"]["p99_ms"] / small.scrape["exporter"]["p99_ms"]
        lines += ["", f"p99 scrape latency at {large.flows} flows / at {small.flows} flows: {ratio:.2f}x"]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--rps", type=float, default=200.0, help="exporter requests_per_second")
    parser.add_argument("--concurrency", type=int, default=16, help="exporter max_concurrency")
    parser.add_argument("--scrape-seconds", type=float, default=6.0, help="storm length per target")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument("--workdir", help="keep configs, state files and every process's log here")
    args = parser.parse_args()
    for tool in ("prometheus-pushgateway", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run `scripts/bench`, which installs it")
    results = []
    with tempfile.TemporaryDirectory(prefix="aep-bench-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"benchmarking {size} flows ...", file=sys.stderr, flush=True)
            results.append(await bench_size(size, work, args))
    text = table(results)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
