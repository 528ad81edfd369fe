"""The exporter's own behaviour, instrumented directly on an injected registry.

Upstream data (flows and runs) never goes through these objects: it is rendered by the snapshot
collector (collector.py). Only what the exporter itself does lives here.
"""

from __future__ import annotations

import contextlib
import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from exporter import __version__

RETRY_REASONS = ("throttled", "server_error", "timeout", "connection", "unauthorized")
RUNS_STRATEGIES = ("created_at", "started_at", "newest_first", "full")
"""runsquery.Strategy's values (kept here as strings: self-metrics import nothing of the poller)."""
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SelfMetrics:
    """Every ``aep_exporter_*`` metric that is not derived from the flow snapshot."""

    def __init__(self, registry: CollectorRegistry) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series only add noise here; Prometheus does not need them
        self.registry = registry
        build = Gauge("aep_exporter_build_info", "Version of the exporter and of the Python running it.",
                      ["version", "python_version"], registry=registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.api_requests = Counter("aep_exporter_api_requests_total",
                                    "Requests to Adobe APIs, by HTTP status (or error for transport failures).",
                                    ["sandbox", "endpoint", "code"], registry=registry)
        self.api_latency = Histogram("aep_exporter_api_request_duration_seconds",
                                     "Duration of requests to Adobe APIs.", ["endpoint"],
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.api_retries = Counter("aep_exporter_api_retries_total", "Requests retried, by reason.",
                                   ["endpoint", "reason"], registry=registry)
        for endpoint in ("flows", "runs"):  # at 0 from the start, so rate() and alerts see the first retry
            for reason in RETRY_REASONS:
                self.api_retries.labels(endpoint, reason)
        self.polls = Counter("aep_exporter_polls_total", "Poll cycles started.", ["sandbox"], registry=registry)
        self.poll_failures = Counter("aep_exporter_poll_failures_total", "Poll cycles that failed.", ["sandbox"],
                                     registry=registry)
        self.poll_interval = Gauge("aep_exporter_poll_interval_seconds",
                                   "Configured time between poll cycles (for 'no successful poll for N intervals').",
                                   ["sandbox"], registry=registry)
        self.poll_duration = Gauge("aep_exporter_poll_duration_seconds", "Duration of the last poll cycle.",
                                   ["sandbox"], registry=registry)
        self.last_poll_success = Gauge("aep_exporter_last_poll_success_timestamp_seconds",
                                       "Unix time of the last successful poll cycle.", ["sandbox"], registry=registry)
        self.flows = Gauge("aep_exporter_flows", "Flows tracked.", ["sandbox"], registry=registry)
        self.flows_dropped = Gauge("aep_exporter_flows_dropped",
                                   "Flows not tracked because of metrics.max_flows_per_sandbox.", ["sandbox"],
                                   registry=registry)
        self.token_expiry = Gauge("aep_exporter_token_expiry_timestamp_seconds",
                                  "Unix time at which the current IMS access token expires.", registry=registry)
        self.token_requests = Counter("aep_exporter_token_requests_total", "IMS token requests.", registry=registry)
        self.token_failures = Counter("aep_exporter_token_request_failures_total", "IMS token requests that failed.",
                                      registry=registry)
        self.shard_index = Gauge("aep_exporter_shard_index", "This process's shard.", registry=registry)
        # Named like kube-state-metrics' kube_state_metrics_total_shards: a gauge may not end in _total.
        self.shard_total = Gauge("aep_exporter_total_shards", "Number of shards.", registry=registry)
        self.reload_ok = Gauge("aep_exporter_config_last_reload_successful",
                               "1 when the last config (re)load succeeded.", registry=registry)
        self.runs_strategy = Gauge("aep_exporter_runs_query_strategy",
                                   "How /runs is queried in each sandbox (one-hot): created_at, started_at, "
                                   "newest_first or full.", ["sandbox", "strategy"], registry=registry)
        self.reload_time = Gauge("aep_exporter_config_last_reload_success_timestamp_seconds",
                                 "Unix time of the last successful config (re)load.", registry=registry)

    def set_runs_strategy(self, sandbox: str, strategy: str) -> None:
        """One-hot: 1 for the strategy the sandbox's runs queries use now, 0 for the others."""
        for name in RUNS_STRATEGIES:
            self.runs_strategy.labels(sandbox, name).set(1 if name == strategy else 0)

    def forget_sandbox(self, sandbox: str) -> None:
        """Drop the per-sandbox series of a sandbox no longer configured."""
        for metric in (self.polls, self.poll_failures, self.poll_interval, self.poll_duration, self.last_poll_success,
                       self.flows, self.flows_dropped):
            with contextlib.suppress(KeyError):
                metric.remove(sandbox)
        for name in RUNS_STRATEGIES:
            with contextlib.suppress(KeyError):
                self.runs_strategy.remove(sandbox, name)
