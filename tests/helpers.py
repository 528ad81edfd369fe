"""Test helpers: scrape and parse /metrics, and derive the expected counters from the simulator's ground truth."""

from __future__ import annotations

import math
import socket
import time
import urllib.request
from collections import Counter
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import LEAN_BUCKETS
from exporter.simulator import Credentials
from exporter.simulator.server import API_PREFIX, IMS_PATH

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

COUNTER_FIELDS = [
    ("records", k) for k in ("input", "output", "failed", "skipped", "warning", "created", "updated", "deleted")
] + [
    ("bytes", "input"),
    ("bytes", "output"),
    ("bytes", "skipped"),
    ("bytes", "failed"),
    ("files", "input"),
    ("files", "output"),
    ("files", "failed"),
    ("files", "skipped"),
]


def parse_samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, label set), parsed by prometheus-client."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lbls: v for (n, lbls), v in samples.items() if n == name and want <= set(lbls)}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` with these labels (None when absent)."""
    found = pick(samples, name, **labels)
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return next(iter(found.values()), None)


async def serve(exporter: Exporter) -> TestServer:
    """The exporter's web app on 127.0.0.1 (pollers built, not started: tests drive cycles)."""
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    return server


async def scrape(server: TestServer, path: str = "/metrics", **headers: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path), headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def expected_counters(
    truth: dict[str, Any], buckets: tuple[float, ...] = LEAN_BUCKETS, *, audiences: bool = False
) -> Samples:
    """What every ``aep_flow_*_total`` counter and the duration histogram must show, from the simulator's runs
    (with ``audiences``, the per-audience counters too)."""
    out: Samples = {}
    for sandbox, flows in truth["sandboxes"].items():
        for flow_id, flow in flows.items():
            base = {"sandbox": sandbox, "flow_id": flow_id, "env": "test"}

            def put(name: str, val: float, _base: dict[str, str] = base, **extra: str) -> None:
                key = (name, frozenset({**_base, **extra}.items()))
                out[key] = out.get(key, 0.0) + val

            for status in ("success", "partial_success", "failed"):
                put("aep_flow_runs_total", 0, status=status)
            durations = []
            codes: Counter[str] = Counter()
            for run in flow["runs"]:
                if not run["completed"]:
                    continue
                for outcome, code, count in run.get("record_codes", []):
                    put("aep_flow_record_codes_total", count, outcome=outcome, code=code)
                for audience, outcome, count in run.get("audiences", []) if audiences else []:
                    put("aep_flow_audience_records_total", count, audience_id=audience, outcome=outcome)
                put("aep_flow_runs_total", 1, status=run["status"])
                for group, field in COUNTER_FIELDS:
                    if run[group].get(field) is not None:
                        put(f"aep_flow_{field}_{group}_total", run[group][field])
                durations.append(run["duration_seconds"])
                codes.update(run["error_codes"])
            for code, n in codes.items():
                put("aep_flow_run_errors_total", n, code=code)
            for bound in (*buckets, math.inf):
                le = "+Inf" if bound == math.inf else repr(float(bound))
                put("aep_flow_run_duration_seconds_bucket", sum(1 for d in durations if d <= bound), le=le)
            put("aep_flow_run_duration_seconds_count", len(durations))
            put("aep_flow_run_duration_seconds_sum", sum(durations))
    return out


def counter_samples(samples: Samples) -> Samples:
    """Only the run-derived counters and histogram, the part ground truth determines."""
    names = {
        "aep_flow_runs_total",
        "aep_flow_run_errors_total",
        "aep_flow_run_duration_seconds_bucket",
        "aep_flow_run_duration_seconds_count",
        "aep_flow_run_duration_seconds_sum",
        "aep_flow_record_codes_total",
        "aep_flow_audience_records_total",
    }
    names |= {f"aep_flow_{field}_{group}_total" for group, field in COUNTER_FIELDS}
    return {k: v for k, v in samples.items() if k[0] in names}


def assert_matches_truth(samples: Samples, truth: dict[str, Any], *, audiences: bool = False) -> int:
    """Every counter equals ground truth exactly (sums to 1e-6); returns how many completed runs that covers."""
    expected = expected_counters(truth, audiences=audiences)
    actual = counter_samples(samples)
    missing = sorted(set(expected) - set(actual), key=str)
    extra = sorted(set(actual) - set(expected), key=str)
    assert not missing, f"absent from /metrics: {missing[:5]}"
    assert not extra, f"not in ground truth: {extra[:5]}"
    wrong = [(k, actual[k], v) for k, v in expected.items() if not math.isclose(actual[k], v, abs_tol=1e-6)]
    assert not wrong, f"{len(wrong)} counters differ from ground truth, e.g. {wrong[:3]}"
    return int(sum(v for (n, _), v in expected.items() if n == "aep_flow_runs_total"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, status: int = 200) -> str:
    """Poll a loopback URL until it answers ``status`` (bounded), returning the body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 -- loopback test URL
                if resp.status == status:
                    return str(resp.read().decode())
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s: {last}")


def assert_not_above_truth(samples: Samples, truth: dict[str, Any]) -> None:
    """No counter exceeds ground truth: a run may be counted late, never twice."""
    expected = expected_counters(truth)
    for key, value in counter_samples(samples).items():
        if key[0] == "aep_flow_run_duration_seconds_sum":
            continue  # a partial sum of different runs can be larger than another partial sum: counts cover it
        assert value <= expected.get(key, 0.0) + 1e-6, (key, value, expected.get(key))


def assert_monotone(before: Samples, after: Samples) -> None:
    """Counters never go down between two scrapes."""
    for key, value in counter_samples(before).items():
        assert counter_samples(after).get(key, 0.0) >= value - 1e-6, (key, value)


def sim_config_yaml(sim_url: str, *, sandboxes: str, rest: str = "", secret: str | None = None) -> str:
    """Config YAML for the simulator's credentials and URLs, with the given sandboxes list and other sections."""
    creds = Credentials()
    return f"""adobe:
  client_id: {creds.client_id}
  client_secret: {secret or creds.client_secret}
  org_id: {creds.org_id}
  ims_token_url: {sim_url}{IMS_PATH}
  flow_service_url: {sim_url}{API_PREFIX}
sandboxes:
{sandboxes}
{rest}
"""


async def poll_and_scrape(exporter: Exporter, *, cycles: int = 1, world: Any = None, step_s: float = 0.0) -> str:
    """Serve the exporter, run ``cycles`` poll cycles (advancing the world's clock by ``step_s`` before each),
    and return one scrape of /metrics."""
    server = await serve(exporter)
    try:
        for _ in range(cycles):
            if world is not None and step_s:
                world.clock.advance(step_s)
            assert await exporter.poll_once()
        _status, text, _headers = await scrape(server)
        return text
    finally:
        await server.close()
