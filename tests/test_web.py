"""/metrics end to end over HTTP: formats, compression, caching, validity (prometheus-client and promtool)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import subprocess

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import PROFILES
from exporter.metrics import FAMILIES
from tests.helpers import parse_samples, pick, scrape, serve, value
from tests.simulation import Sim, make_config, make_exporter


async def test_metrics_parse_and_pass_promtool_check_metrics(sim: Sim, promtool: str) -> None:
    """Under metrics.profile full with audiences on, the exposition after a few cycles holds every family of the
    contract, parses with prometheus-client and passes `promtool check metrics`."""
    exporter = make_exporter(make_config(sim.url, metrics=dataclasses.replace(PROFILES["full"], audiences=True)))
    server = await serve(exporter)
    try:
        for _ in range(3):
            assert await exporter.poll_once()
            sim.world.clock.advance(15 * 60)
        status, text, headers = await scrape(server)
    finally:
        await server.close()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_samples(text)
    names = {name for name, _labels in samples}
    for family, typ, *_rest in FAMILIES:  # every family of the contract is produced by the simulator's data
        wanted = {"counter": f"{family}_total", "histogram": f"{family}_count"}.get(typ, family)
        assert wanted in names, wanted
    for self_metric in (
        "aep_exporter_build_info",
        "aep_exporter_api_requests_total",
        "aep_exporter_polls_total",
        "aep_exporter_last_poll_success_timestamp_seconds",
        "aep_exporter_token_expiry_timestamp_seconds",
        "aep_exporter_flows",
        "aep_exporter_total_shards",
        "aep_exporter_config_last_reload_successful",
    ):
        assert self_metric in names, self_metric
    assert value(samples, "aep_exporter_flows", sandbox="prod") == 6
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_the_default_lean_profile_serves_exactly_the_lean_families(sim: Sim) -> None:
    """At the defaults every family marked lean is served (sparse statuses: only value-1 status series), and no
    family kept for metrics.profile full, nor the opt-in per-audience counters."""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        for _ in range(3):
            assert await exporter.poll_once()
            sim.world.clock.advance(15 * 60)
        status, text, _headers = await scrape(server)
    finally:
        await server.close()
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(text) if f.samples}
    flow_families = {f.name for f in FAMILIES}
    assert families & flow_families == {f.name for f in FAMILIES if f.lean} - {"aep_flow_audience_records"}
    samples = parse_samples(text)
    assert set(pick(samples, "aep_flow_last_run_status").values()) == {1.0}


async def test_openmetrics_is_served_when_asked_and_ends_with_one_eof(sim: Sim) -> None:
    """Accept: application/openmetrics-text gives valid OpenMetrics with a single # EOF at the end."""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        status, text, headers = await scrape(server, Accept="application/openmetrics-text; version=1.0.0")
    finally:
        await server.close()
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    families = {f.name for f in parse_openmetrics(text)}
    assert {"aep_flow_runs", "aep_flow_info", "aep_exporter_polls"} <= families


async def test_gzip_body_is_one_valid_stream_equal_to_the_plain_body(sim: Sim) -> None:
    """With Accept-Encoding: gzip the body decompresses (as one stream) to the same exposition."""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(server.make_url("/metrics"), headers={"Accept-Encoding": "gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                raw = await resp.read()
            async with session.get(server.make_url("/metrics"), headers={"Accept-Encoding": "identity"}) as resp:
                assert "Content-Encoding" not in resp.headers
                plain = await resp.read()
    finally:
        await server.close()
    unzipped = gzip.decompress(raw)
    strip = {
        b"aep_exporter_api_request_duration",
        b"aep_exporter_api_requests",
        b"aep_exporter_poll",
        b"process_",
        b"python_gc_",
    }

    def stable(body: bytes) -> list[bytes]:  # self-metrics may move between two scrapes; the flow block may not
        return [line for line in body.splitlines() if not any(line.startswith(p) for p in strip)]

    assert stable(unzipped) == stable(plain)
    assert b"aep_flow_runs_total" in unzipped


async def test_flow_block_is_rendered_once_per_change_not_per_scrape(sim: Sim) -> None:
    """Scrapes between polls reuse the rendered flow block; a poll that changes state renders it anew. (Two polls
    first: the one after first sight raises count floors, see test_only_flows_whose_state_changed_...)"""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        assert await exporter.poll_once()
        for _ in range(5):
            await scrape(server)
        assert exporter.renderer.renders == 1
        assert await exporter.poll_once()  # nothing new upstream: the snapshot is unchanged
        await scrape(server)
        assert exporter.renderer.renders == 1
        sim.world.clock.advance(3600)
        assert await exporter.poll_once()
        await scrape(server)
        assert exporter.renderer.renders == 2
    finally:
        await server.close()


async def test_landing_page_health_and_readiness(sim: Sim) -> None:
    """/ lists version, sandboxes and flows; /healthz is 200; /readyz turns 200 after every sandbox polled."""
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        assert (await scrape(server, "/healthz"))[0] == 200
        assert (await scrape(server, "/readyz"))[0] == 503
        assert await exporter.poll_once()
        assert (await scrape(server, "/readyz"))[0] == 200
        status, page, headers = await scrape(server, "/")
    finally:
        await server.close()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert 'href="/metrics"' in page and "0.1.0" in page
    some_flow = next(iter(sim.world.flows["prod"].values()))
    assert some_flow.id in page and some_flow.name in page
    assert "<td>prod</td>" in page and "<td>dev</td>" in page


async def test_landing_page_puts_trouble_first_with_colours_meanings_and_ages_on_one_clock(sim: Sim) -> None:
    """Unreadable flows, then failed ones, come first; each status has its colour class and its meaning in a
    legend (every status the exporter knows); every time shows its age against the exporter's clock, never in the
    future when the clock is the simulator's; counts are in words with the right number."""
    import html
    import re

    from exporter.pages import STATUS_MEANING
    from exporter.statuses import STATUSES

    world = sim.world
    failing = next(f for f in world.flows["prod"].values() if f.kind == "source")
    world.force_status(failing.id, "failed")
    failing.trigger_run(world.now_ms(), 1.0)
    world.clock.advance(5)
    exporter = make_exporter(
        make_config(sim.url, flows={"prod": ["f0000000-0000-4000-8000-00000000dead"]}), world=world
    )
    exporter.clock_note = "The demo's clock: simulated time, at 60x real time."
    server = await serve(exporter)
    try:
        assert await exporter.poll_once()
        _status, page, _headers = await scrape(server, "/")
    finally:
        await server.close()
    assert set(STATUS_MEANING) == set(STATUSES)
    for status, (colour, meaning) in STATUS_MEANING.items():
        assert f".s-{status}{{color:{colour}" in page and meaning in page
    flows = page[page.index("<h2>Flows</h2>") : page.index("<h2>Statuses</h2>")]
    rows = re.findall(r"<tr><td>(?:prod|dev)</td>.*?</tr>", flows)
    order = ["down" if "cannot be read" in r else (re.findall(r"class='s-(\w+)'", r) or ["none"])[0] for r in rows]
    assert order[0] == "down" and "f0000000-0000-4000-8000-00000000dead" in rows[0]
    failed = [i for i, status in enumerate(order) if status == "failed"]
    assert failed == list(range(1, 1 + len(failed))), order  # every failed flow right after the unreadable one
    assert any(failing.id in rows[i] for i in failed)
    assert order[-1] in ("success", "none"), order
    assert html.escape("The demo's clock: simulated time, at 60x real time.") in page
    ages = re.findall(r"<span class='age'>\(([^)]*)\)</span>", page)
    assert ages and all(age.endswith(" ago") for age in ages), ages
    assert re.search(r"2 sandboxes, \d+ flows:\s+\d+ failed flows?, 1 flow not readable\.", page), page[:1500]


async def test_readiness_stays_503_while_a_sandbox_keeps_failing(sim: Sim) -> None:
    """A sandbox whose polls fail keeps /readyz at 503 and counts its failures, the other sandbox goes on."""
    sim.simulator.faults.forbidden_sandboxes = ["dev"]
    exporter = make_exporter(make_config(sim.url))
    server = await serve(exporter)
    try:
        assert not await exporter.poll_once()
        assert (await scrape(server, "/readyz"))[0] == 503
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    assert value(samples, "aep_exporter_poll_failures_total", sandbox="dev") == 1
    assert value(samples, "aep_exporter_poll_failures_total", sandbox="prod") == 0
    assert value(samples, "aep_exporter_flows", sandbox="prod") == 6


async def test_self_metrics_block_is_reused_for_its_short_ttl_then_refreshed(sim: Sim) -> None:
    """Within the self-metrics TTL, scrapes share one rendered block; after it, the block shows new values."""
    from prometheus_client import CollectorRegistry

    from exporter.app import Exporter, Tuning

    exporter = Exporter(make_config(sim.url), registry=CollectorRegistry(), tuning=Tuning(self_metrics_ttl=1.0))
    server = await serve(exporter)
    try:
        _s, first, _h = await scrape(server)
        exporter.metrics.token_requests.inc(5)
        _s, second, _h = await scrape(server)
        assert value(parse_samples(second), "aep_exporter_token_requests_total") == value(
            parse_samples(first), "aep_exporter_token_requests_total"
        )
        await asyncio.sleep(1.05)
        _s, third, _h = await scrape(server)
    finally:
        await server.close()
    assert value(parse_samples(third), "aep_exporter_token_requests_total") == 5
