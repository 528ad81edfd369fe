"""What a real Prometheus pays per flow: head series and memory, metrics.profile lean (the default) against full.

On 127.0.0.1 only, side by side in one run: the simulator (its default mix of source and destination flows,
6 hours of history, clock standing still), two exporters (``run``) polling it, one at the defaults and one with
``metrics.profile: full``, and three Debian ``prometheus`` servers: one scraping each exporter and one scraping
nothing (the baseline). After the scrapes settle it reads each Prometheus's own ``/metrics``
(``prometheus_tsdb_head_series``, ``process_resident_memory_bytes``, ``go_memstats_heap_inuse_bytes``) and
prints the cost per flow above the baseline, and the exporter's series per flow.

    python bench/prometheus_memory.py [--flows 2000] [--seconds 120] [--scrape-interval 5]

Nothing here asserts a number; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PY, free_port, start, stop  # the fleet benchmark's process helpers

SANDBOXES = ("prod", "dev")
PROMETHEUS_FIGURES = ("prometheus_tsdb_head_series", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes")


VARIANTS = {
    "lean": "{profile: lean}",
    "lean, no exemplars": "{profile: lean, exemplars: false}",
    "full": "{profile: full}",
}
"""The exporters side by side: the default, the default without exemplars (Prometheus asks for OpenMetrics, so
exemplars are in every scrape it makes), and every series."""


def exporter_config(path: Path, sim_url: str, *, port: int, profile: str) -> None:
    sandboxes = "\n".join(f"  - {{name: {sb}, discover: {{enabled: true}}}}" for sb in SANDBOXES)
    path.write_text(f"""
adobe:
  client_id: sim-client-id
  client_secret: sim-client-secret
  org_id: SIMULATED000000000000000@AdobeOrg
  ims_token_url: {sim_url}/ims/token/v3
  flow_service_url: {sim_url}/data/foundation/flowservice
sandboxes:
{sandboxes}
poll: {{interval: 10m, jitter: 0%, timeout: 60s, requests_per_second: 500, max_concurrency: 16}}
state: {{path: null}}
metrics: {VARIANTS[profile]}
server: {{listen: "127.0.0.1:{port}"}}
log: {{level: warning, format: json}}
""")


def prometheus_config(path: Path, target: str | None, interval: float) -> None:
    jobs = (
        f"""scrape_configs:
  - job_name: aep-flow-exporter
    static_configs: [{{targets: ["{target}"]}}]
"""
        if target
        else "scrape_configs: []\n"
    )
    every = f"{round(interval * 1000)}ms"
    path.write_text(f"global: {{scrape_interval: {every}, scrape_timeout: {every}}}\n{jobs}")


async def samples(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """name -> value of each unlabelled sample (and the sum over labels for labelled ones)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def flow_series(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """(flows tracked, flow series) on an exporter's /metrics."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as resp:
        text = await resp.text()
    flows = series = 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith("aep_flow_") or family.name == "aep_exporter_flow_up":
            series += len(family.samples)
        if family.name == "aep_exporter_flow_up":
            flows = len(family.samples)
    return flows, series


async def wait_flows(session: aiohttp.ClientSession, url: str, flows: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if (await samples(session, url)).get("aep_exporter_flows", 0) >= flows:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    raise RuntimeError(f"{url} did not track {flows} flows in time")


async def wait_ready(session: aiohttp.ClientSession, url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} was not ready in time (see the workdir's prometheus logs)")


async def measure(args: argparse.Namespace, work: Path) -> None:
    per_sandbox = args.flows // len(SANDBOXES)
    flows = per_sandbox * len(SANDBOXES)
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            start(
                [
                    *PY,
                    "simulate",
                    "--port",
                    str(sim_port),
                    "--sandboxes",
                    ",".join(SANDBOXES),
                    "--flows",
                    str(per_sandbox),
                    "--speed",
                    "0",
                ],
                work / "sim.log",
            )
        )
        exporters: dict[str, str] = {}
        for profile in VARIANTS:
            port = free_port()
            file = profile.replace(", ", "-").replace(" ", "-")
            exporter_config(work / f"{file}.yaml", sim_url, port=port, profile=profile)
            procs.append(start([*PY, "run", "--config", str(work / f"{file}.yaml")], work / f"{file}.log"))
            exporters[profile] = f"127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 600
            for target in exporters.values():
                await wait_flows(session, f"http://{target}/metrics", flows, deadline)
            per_flow = {p: await flow_series(session, f"http://{t}/metrics") for p, t in exporters.items()}
            proms: dict[str, str] = {}
            for name, target in (("baseline", None), *exporters.items()):
                port = free_port()
                file = name.replace(", ", "-").replace(" ", "-")
                prometheus_config(work / f"prometheus-{file}.yml", target, args.scrape_interval)
                procs.append(
                    start(
                        [
                            "prometheus",
                            f"--config.file={work / f'prometheus-{file}.yml'}",
                            f"--storage.tsdb.path={work / f'tsdb-{file}'}",
                            f"--web.listen-address=127.0.0.1:{port}",
                            "--log.level=warn",
                        ],
                        work / f"prometheus-{file}.log",
                    )
                )
                proms[name] = f"http://127.0.0.1:{port}/metrics"
            for url in proms.values():
                await wait_ready(session, url.replace("/metrics", "/-/ready"), deadline)
            readings: dict[str, list[dict[str, float]]] = {name: [] for name in proms}
            settle = time.monotonic() + args.seconds
            while time.monotonic() < settle:
                await asyncio.sleep(args.scrape_interval)
                if time.monotonic() > settle - args.seconds / 3:  # the last third: every server scraped many times
                    for name, url in proms.items():
                        readings[name].append(await samples(session, url))
    finally:
        for proc in reversed(procs):
            stop(proc)
    report(flows, per_flow, readings, args)


def report(
    flows: int,
    per_flow: dict[str, tuple[int, int]],
    readings: dict[str, list[dict[str, float]]],
    args: argparse.Namespace,
) -> None:
    median = {
        name: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in PROMETHEUS_FIGURES}
        for name, rs in readings.items()
    }
    base = median["baseline"]
    print(
        f"{flows} flows (simulator default mix, 6 h of history); Prometheus "
        f"{args.scrape_interval:g} s scrapes, medians over the last {args.seconds / 3:.0f} s of {args.seconds} s\n"
    )
    print(
        "| profile | exporter flow series per flow | Prometheus head series per flow | "
        "Prometheus RSS KiB per flow | Go heap in use KiB per flow |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in VARIANTS:
        tracked, series = per_flow[name]
        m = median[name]
        head = (m["prometheus_tsdb_head_series"] - base["prometheus_tsdb_head_series"]) / flows
        rss = (m["process_resident_memory_bytes"] - base["process_resident_memory_bytes"]) / 1024 / flows
        heap = (m["go_memstats_heap_inuse_bytes"] - base["go_memstats_heap_inuse_bytes"]) / 1024 / flows
        label = f"{name} (default)" if name == "lean" else name
        print(f"| {label} | {series / max(tracked, 1):.1f} | {head:.1f} | {rss:.1f} | {heap:.1f} |")
    print("\nRaw medians (baseline = a Prometheus scraping nothing):\n")
    print("| server | head series | RSS MiB | heap in use MiB |")
    print("|---|---:|---:|---:|")
    for name, m in median.items():
        print(
            f"| {name} | {m['prometheus_tsdb_head_series']:.0f} | "
            f"{m['process_resident_memory_bytes'] / 2**20:.1f} | {m['go_memstats_heap_inuse_bytes'] / 2**20:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=2000, help="flows in all (two sandboxes)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the Prometheus servers scrape")
    parser.add_argument("--scrape-interval", type=float, default=5.0)
    parser.add_argument("--workdir", help="keep configs, TSDBs and logs here")
    args = parser.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        asyncio.run(measure(args, Path(args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="aep-prom-bench-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
