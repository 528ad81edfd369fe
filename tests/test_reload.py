"""Config reload (SIGHUP): new flows appear, removed ones vanish, the rest keep their state; bad configs are refused."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.configfile import load_config
from tests.helpers import parse_samples, pick, scrape, serve, sim_config_yaml, value
from tests.simulation import Sim


def _yaml(sim_url: str, flows: list[str], *, extra: str = "") -> str:
    sandboxes = "  - name: prod\n    flows:\n" + "\n".join(f"      - {f}" for f in flows)
    rest = "poll: {requests_per_second: 500, jitter: 0%}\nstate: {path: null}\n" + extra
    return sim_config_yaml(sim_url, sandboxes=sandboxes, rest=rest)


async def test_reload_adds_and_removes_flows_and_keeps_the_rest(sim: Sim, tmp_path: Path) -> None:
    """After a reload, a newly listed flow is polled, a removed one vanishes, a kept one keeps its counters."""
    a, b, c = list(sim.world.flows["prod"])[:3]
    path = tmp_path / "config.yaml"
    path.write_text(_yaml(sim.url, [a, b]))
    tuning = Tuning(backoff_base=0.01, self_metrics_ttl=0.0)
    exporter = Exporter(load_config(path), registry=CollectorRegistry(), tuning=tuning, config_path=path)
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _s, before, _h = await scrape(server)
        path.write_text(_yaml(sim.url, [a, c]))
        assert await exporter.reload()
        assert await exporter.poll_once()
        _s, after_text, _h = await scrape(server)
    finally:
        await server.close()
    after = parse_samples(after_text)
    assert {dict(k)["flow_id"] for k in pick(after, "aep_flow_info")} == {a, c}
    assert pick(after, "aep_flow_runs_total", flow_id=a) == pick(
        parse_samples(before), "aep_flow_runs_total", flow_id=a
    )
    assert value(after, "aep_exporter_config_last_reload_successful") == 1


async def test_invalid_new_config_keeps_the_old_one_and_reports_it(sim: Sim, tmp_path: Path) -> None:
    """A reload with an invalid file keeps polling with the old config and sets the reload gauge to 0."""
    a = next(iter(sim.world.flows["prod"]))
    path = tmp_path / "config.yaml"
    path.write_text(_yaml(sim.url, [a]))
    tuning = Tuning(backoff_base=0.01, self_metrics_ttl=0.0)
    exporter = Exporter(load_config(path), registry=CollectorRegistry(), tuning=tuning, config_path=path)
    server = await serve(exporter)
    try:
        path.write_text(_yaml(sim.url, [a], extra="poll: {interval: never}"))
        assert not await exporter.reload()
        assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_config_last_reload_successful") == 0
    assert len(pick(samples, "aep_flow_info")) == 1


async def test_post_reload_is_off_unless_enabled_and_reloads_when_on(sim: Sim, tmp_path: Path) -> None:
    """POST /-/reload is absent by default; with server.enable_lifecycle it reloads, and reports a bad config."""
    from tests.helpers import scrape as get

    a, b = list(sim.world.flows["prod"])[:2]
    path = tmp_path / "config.yaml"
    path.write_text(_yaml(sim.url, [a]))
    tuning = Tuning(backoff_base=0.01, self_metrics_ttl=0.0)
    off = Exporter(load_config(path), registry=CollectorRegistry(), tuning=tuning, config_path=path)
    server = await serve(off)
    try:
        async with aiohttp.ClientSession() as session, session.post(server.make_url("/-/reload")) as resp:
            assert resp.status == 403  # as Prometheus answers when its lifecycle API is off
    finally:
        await server.close()

    path.write_text(_yaml(sim.url, [a], extra="server: {enable_lifecycle: true}"))
    on = Exporter(load_config(path), registry=CollectorRegistry(), tuning=tuning, config_path=path)
    server = await serve(on)
    try:
        assert await on.poll_once()
        path.write_text(_yaml(sim.url, [a, b], extra="server: {enable_lifecycle: true}"))
        async with aiohttp.ClientSession() as session, session.post(server.make_url("/-/reload")) as resp:
            assert resp.status == 200
        assert await on.poll_once()
        _s, text, _h = await get(server)
        assert {dict(k)["flow_id"] for k in pick(parse_samples(text), "aep_flow_info")} == {a, b}
        path.write_text("sandboxes: nope\n")
        async with aiohttp.ClientSession() as session, session.post(server.make_url("/-/reload")) as resp:
            assert resp.status == 500
        _s, text, _h = await get(server)
        assert value(parse_samples(text), "aep_exporter_config_last_reload_successful") == 0
    finally:
        await server.close()


def test_sighup_reloads_the_running_daemon(simulator_process: str, tmp_path: Path) -> None:
    """SIGHUP to `aep-flow-exporter run` re-reads the config: a flow added to the file appears in /metrics."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import free_port, wait_http

    port = free_port()
    with urllib.request.urlopen(f"{simulator_process}/_sim/flows", timeout=5) as resp:  # noqa: S310 -- loopback
        ids = json.loads(resp.read())["prod"]
    path = tmp_path / "config.yaml"
    listen = f'server: {{listen: "127.0.0.1:{port}"}}'
    path.write_text(_yaml(simulator_process, ids[:1], extra=listen))
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        path.write_text(_yaml(simulator_process, ids[:2], extra=listen))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        found: set[str] = set()
        while time.monotonic() < deadline and len(found) < 2:
            body = wait_http(f"http://127.0.0.1:{port}/metrics")
            found = {dict(k)["flow_id"] for k in pick(parse_samples(body), "aep_flow_info")}
            time.sleep(0.2)
        assert found == set(ids[:2])
        assert proc.poll() is None  # still running: reloaded, not restarted
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
