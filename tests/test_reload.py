"""Config reload (SIGHUP): new flows appear, removed ones vanish, the rest keep their state; bad configs are refused."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.app import Exporter, Tuning
from exporter.config import load_config
from exporter.simulator import Credentials
from exporter.simulator.server import API_PREFIX, IMS_PATH
from tests.conftest import Sim
from tests.helpers import parse_samples, pick, scrape, serve, value


def _yaml(sim_url: str, flows: list[str], *, extra: str = "") -> str:
    creds = Credentials()
    items = "\n".join(f"      - {f}" for f in flows)
    return f"""
adobe:
  client_id: {creds.client_id}
  client_secret: {creds.client_secret}
  org_id: {creds.org_id}
  ims_token_url: {sim_url}{IMS_PATH}
  flow_service_url: {sim_url}{API_PREFIX}
sandboxes:
  - name: prod
    flows:
{items}
poll: {{requests_per_second: 500, jitter: 0%}}
state: {{path: null}}
{extra}
"""


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
    assert pick(after, "aep_flow_runs_total", flow_id=a) == pick(parse_samples(before), "aep_flow_runs_total",
                                                                  flow_id=a)
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
