"""The exporter's own behaviour, instrumented directly on an injected registry.

Upstream data (flows and runs) never goes through these objects: it is rendered by the snapshot collector
(metrics.py). Only what the exporter itself does lives here. Names, help and labels come from metrics.py, the one
module that writes a metric's name.
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from exporter import __version__
from exporter import metrics as m
from exporter.values import Strategy

RETRY_REASONS = ("throttled", "server_error", "timeout", "connection", "unauthorized")
RUNS_STRATEGIES = tuple(s.value for s in Strategy)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _counter(family: m.Family, registry: CollectorRegistry) -> Counter:
    return Counter(family.name, family.help, family.labels, registry=registry)


def _gauge(family: m.Family, registry: CollectorRegistry) -> Gauge:
    return Gauge(family.name, family.help, family.labels, registry=registry)


EVENT_OUTCOMES = (
    "applied",
    "duplicate",
    "already_counted",
    "untracked",
    "not_a_flow",
    "rejected_signature",
    "rejected_recipient",
    "invalid",
)
EVENT_LAG_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class SelfMetrics:
    """Every ``aep_exporter_*`` metric that is not derived from the flow snapshot."""

    def __init__(self, registry: CollectorRegistry) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series only add noise here; Prometheus does not need them
        self.registry = registry
        # process_* (start time, memory, CPU, open files) and python_* (version, GC), as every exporter serves them.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        _gauge(m.BUILD_INFO, registry).labels(__version__, platform.python_version()).set(1)
        self.api_requests = _counter(m.API_REQUESTS, registry)
        self.api_latency = Histogram(
            m.API_LATENCY.name, m.API_LATENCY.help, m.API_LATENCY.labels, buckets=LATENCY_BUCKETS, registry=registry
        )
        self.api_retries = _counter(m.API_RETRIES, registry)
        for endpoint in ("flows", "runs"):  # at 0 from the start, so rate() and alerts see the first retry
            for reason in RETRY_REASONS:
                self.api_retries.labels(endpoint, reason)
        self.polls = _counter(m.POLLS, registry)
        self.poll_failures = _counter(m.POLL_FAILURES, registry)
        self.poll_interval = _gauge(m.POLL_INTERVAL, registry)
        self.poll_duration = _gauge(m.POLL_DURATION, registry)
        self.last_poll_success = _gauge(m.LAST_POLL_SUCCESS, registry)
        self.flows = _gauge(m.FLOWS, registry)
        self.flows_dropped = _gauge(m.FLOWS_DROPPED, registry)
        self.token_expiry = _gauge(m.TOKEN_EXPIRY, registry)
        self.token_requests = _counter(m.TOKEN_REQUESTS, registry)
        self.token_failures = _counter(m.TOKEN_FAILURES, registry)
        self.shard_index = _gauge(m.SHARD_INDEX, registry)
        self.shard_total = _gauge(m.TOTAL_SHARDS, registry)
        self.reload_ok = _gauge(m.RELOAD_OK, registry)
        self.reload_time = _gauge(m.RELOAD_TIME, registry)
        self.runs_strategy = _gauge(m.RUNS_STRATEGY, registry)
        self.events = _counter(m.EVENTS, registry)
        self.event_lag = Histogram(
            m.EVENT_LAG.name, m.EVENT_LAG.help, m.EVENT_LAG.labels, buckets=EVENT_LAG_BUCKETS, registry=registry
        )
        self.journal_read: Gauge | None = None  # only with a journal configured (its alert reads it)

    def start_events(self, sources: tuple[str, ...]) -> None:
        """Every events outcome of each configured source at 0, so rate() and alerts see the first one."""
        for source in sources:
            self.event_lag.labels(source)
            for outcome in EVENT_OUTCOMES:
                self.events.labels(source, outcome)
        if "journal" in sources and self.journal_read is None:
            self.journal_read = _gauge(m.JOURNAL_READ, self.registry)
            self.journal_read.set_to_current_time()  # a journal never read is "not read since start"

    def set_runs_strategy(self, sandbox: str, strategy: str) -> None:
        """One-hot: 1 for the strategy the sandbox's runs queries use now, 0 for the others."""
        for name in RUNS_STRATEGIES:
            self.runs_strategy.labels(sandbox, name).set(1 if name == strategy else 0)

    def forget_sandbox(self, sandbox: str) -> None:
        """Drop the per-sandbox series of a sandbox no longer configured."""
        for metric in (
            self.polls,
            self.poll_failures,
            self.poll_interval,
            self.poll_duration,
            self.last_poll_success,
            self.flows,
            self.flows_dropped,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(sandbox)
        for name in RUNS_STRATEGIES:
            with contextlib.suppress(KeyError):
                self.runs_strategy.remove(sandbox, name)
