"""Fault campaign: Adobe misbehaving in every documented way; the exporter stays up, truthful, and exact."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.simulator import Faults
from tests.helpers import (
    assert_matches_truth,
    assert_monotone,
    assert_not_above_truth,
    parse_samples,
    pick,
    scrape,
    serve,
    value,
)
from tests.simulation import Sim, make_config, make_exporter


@dataclass
class Phase:
    name: str
    faults: Faults = field(default_factory=Faults)
    revoke_each_cycle: bool = False
    hostile: bool = False  # two flows of prod get hostile payloads (ids known only once the world exists)


PHASES = [
    Phase("random 5xx", Faults(error_rate=0.3)),
    Phase("429 storm with Retry-After", Faults(throttle_rate=0.5, retry_after="0")),
    Phase("429 storm without Retry-After", Faults(throttle_rate=0.5)),
    Phase("answers slower than the timeout", Faults(slow_rate=0.3, slow_s=0.6)),
    Phase("connections reset mid-body", Faults(truncate_rate=0.3)),
    Phase("malformed JSON", Faults(malformed_rate=0.2)),
    Phase("token revoked mid-cycle", revoke_each_cycle=True),
    Phase("sandbox answers 403", Faults(forbidden_sandboxes=["dev"])),
    Phase("IMS outage", Faults(ims_down=True)),
    Phase("hostile values in two flows' payloads", hostile=True),
    Phase("runs filter refused with a 400", Faults(runs_filters="refuse")),
    Phase("runs filter and order ignored", Faults(runs_filters="ignore")),
]


async def test_fault_campaign_keeps_counts_exact(sim: Sim) -> None:
    """Through every fault the process answers /metrics, never over-counts, and ends equal to ground truth."""
    exporter = make_exporter(make_config(sim.url, timeout=0.3, retries=3))
    server = await serve(exporter)
    previous: dict[Any, float] = {}
    try:
        assert await exporter.poll_once()
        for phase in PHASES:
            sim.simulator.faults = phase.faults
            if phase.hostile:
                sim.simulator.faults = Faults(hostile_flows=sorted(sim.world.flows["prod"])[:2])
            if phase.name == "IMS outage":
                sim.simulator.revoke_tokens()  # the cached token goes, and no new one can be had
            for _ in range(3):
                sim.world.clock.advance(10 * 60)
                if phase.revoke_each_cycle:
                    sim.simulator.revoke_tokens()
                await exporter.poll_once()
                status, text, _h = await scrape(server)
                assert status == 200, phase.name
                samples = parse_samples(text)
                assert_not_above_truth(samples, sim.world.truth())
                assert_monotone(previous, samples)
                previous = samples
            if phase.name == "sandbox answers 403":
                assert set(pick(samples, "aep_exporter_flow_up", sandbox="dev").values()) == {0.0}
                assert set(pick(samples, "aep_exporter_flow_up", sandbox="prod").values()) == {1.0}
                assert (value(samples, "aep_exporter_poll_failures_total", sandbox="dev") or 0) >= 3
            if phase.hostile:
                assert set(pick(samples, "aep_exporter_flow_up").values()) == {1.0}
                assert_matches_truth(samples, sim.world.truth())
            if phase.name == "IMS outage":
                assert set(pick(samples, "aep_exporter_flow_up").values()) == {0.0}
                assert (value(samples, "aep_exporter_token_request_failures_total") or 0) >= 3
                assert (await scrape(server, "/healthz"))[0] == 200
        sim.simulator.faults = Faults()
        for _ in range(2):
            assert await exporter.poll_once()
        _s, text, _h = await scrape(server)
    finally:
        await server.close()
    samples = parse_samples(text)
    counted = assert_matches_truth(samples, sim.world.truth())
    assert set(pick(samples, "aep_exporter_flow_up").values()) == {1.0}
    injected = sum(sim.simulator.faults_injected.values())
    print(f"fault campaign: {injected} faults injected {dict(sim.simulator.faults_injected)}, {counted} runs counted")
    assert injected > 50
    assert counted > 100
