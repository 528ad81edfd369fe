"""What can be configured: frozen, typed dataclasses, each key's default and its rule side by side (``setting``
keeps the rule in the field's metadata; the rules are syntax.py's), and ``config_warnings``: what is valid but will
not do what it seems. configfile.py turns a YAML file into a :class:`Config` from these fields alone; nothing here
reads a file or the environment. The client secret is wrapped in :class:`Secret` so that no repr, log line or
exception can show it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.syntax import (
    boolean,
    durations,
    fraction,
    integer,
    objective,
    one_of,
    optional_string,
    optional_url,
    parse_duration,
    positive_duration,
    positive_float,
    proxy_url,
    setting,
    share,
    size,
    string,
    url,
    webhook_path,
    words,
)
from exporter.values import ADOBE_RUN_RETENTION_DAYS, Secret
from exporter.webconfig import WebConfig

FULL_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)
# A subset of FULL_BUCKETS, so a state file written under either profile is re-bucketed exactly.
LEAN_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 14400.0)
DEFAULT_SCOPES = "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session"
ADOBE_KEY_HOST = "https://static.adobeioevents.com"
RESERVED_LABELS = frozenset(
    {
        "sandbox",
        "flow_id",
        "flow_name",
        "status",
        "code",
        "activity",
        "le",
        "quantile",
        "kind",
        "state",
        "flow_spec_id",
        "source_connection_spec_id",
        "target_connection_spec_id",
        "job",
        "instance",
        "outcome",
        "audience_id",
    }
)
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
FLOW_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SANDBOX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
KINDS = ("source", "destination")


# --- the value syntax -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AdobeConfig:
    client_id: str  # required; client_secret / client_secret_file and org_id are read in configfile.py
    client_secret: Secret
    org_id: str
    scopes: str = setting(DEFAULT_SCOPES, string)
    ims_token_url: str = setting("https://ims-na1.adobelogin.com/ims/token/v3", url)
    flow_service_url: str = setting("https://platform.adobe.io/data/foundation/flowservice", url)
    proxy: str | None = setting(None, proxy_url)  # explicit proxy; else HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply
    ca_file: Path | None = None  # extra CA certificates (PEM), e.g. a TLS-intercepting proxy's


@dataclass(frozen=True, kw_only=True)
class DiscoverConfig:
    enabled: bool = setting(False, boolean)
    kinds: tuple[str, ...] = KINDS
    include: tuple[re.Pattern[str], ...] = (re.compile(".*"),)
    exclude: tuple[re.Pattern[str], ...] = ()

    def accepts(self, name: str) -> bool:
        """Whether a discovered flow's name passes the include and exclude regexes."""
        return any(p.search(name) for p in self.include) and not any(p.search(name) for p in self.exclude)


@dataclass(frozen=True, kw_only=True)
class FlowRef:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PollConfig:
    interval: float = setting(60.0, positive_duration)
    jitter: float = setting(0.10, fraction)
    timeout: float = setting(30.0, positive_duration)
    max_concurrency: int = setting(8, integer(1))
    requests_per_second: float = setting(10.0, positive_float)
    initial_lookback: float = setting(86400.0, parse_duration)
    retries: int = setting(3, integer(0))
    max_response_bytes: int = setting(32 * 1024 * 1024, size)


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    flows: tuple[FlowRef, ...] = ()
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    interval: float = 60.0  # sandboxes[].poll.interval, else poll.interval
    jitter: float = 0.10  # sandboxes[].poll.jitter, else poll.jitter

    @functools.cached_property
    def _flow_labels(self) -> dict[str, Mapping[str, str]]:
        return {ref.id: ref.labels for ref in self.flows if ref.labels}

    def labels_for(self, flow_id: str) -> dict[str, str]:
        """Static labels of a flow: the sandbox's, overridden by the flow's own (a dict lookup, not a scan)."""
        return {**self.labels, **self._flow_labels.get(flow_id, {})}


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    path: str | None = setting("./state/aep-flow-exporter.db", optional_string)  # relative to the config's folder


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Cardinality controls. The defaults are the lean profile; ``PROFILES["full"]`` gives every series."""

    profile: str = setting("lean", one_of("lean", "full"))  # lean: what alerts and dashboards use + every counter
    activities: bool = setting(True, boolean)
    sparse_status: bool = setting(True, boolean)
    duration_buckets: tuple[float, ...] = setting(LEAN_BUCKETS, durations)
    duration_histogram: bool = setting(True, boolean)  # false: no aep_flow_run_duration_seconds series at all
    audiences: bool = setting(False, boolean)  # per-audience counts of destination runs
    exemplars: bool = setting(True, boolean)  # OpenMetrics: the newest run behind each run counter (exemplars.py)
    max_audiences_per_flow: int = setting(50, integer(1))
    max_error_codes_per_flow: int = setting(20, integer(1))
    max_activities_per_flow: int = setting(20, integer(1))
    max_flows_per_sandbox: int = setting(5000, integer(1))

    @property
    def lean(self) -> bool:
        """Only the families the lean profile serves."""
        return self.profile == "lean"


PROFILES = {
    "lean": MetricsConfig(),
    "full": MetricsConfig(profile="full", sparse_status=False, duration_buckets=FULL_BUCKETS),
}
"""The defaults each ``metrics.profile`` sets; a key set in the file wins."""


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    index: int = setting(0, integer(0))
    total: int = setting(1, integer(1))


AEP_UI = "https://experience.adobe.com/#/@your-org"
"""Experience Platform's UI address up to the sandbox part, as the dashboards' ``aep_ui`` variable (README,
"Dashboards"): set it to your organization's."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 -- server.listen; every interface by default, like node_exporter
    port: int = 9847
    web_config_file: str | None = setting(None, optional_string)
    web_config_path: Path | None = None  # web_config_file resolved against the config file's folder
    web: WebConfig = field(default_factory=WebConfig)
    enable_lifecycle: bool = setting(False, boolean)  # POST /-/reload, as Prometheus's --web.enable-lifecycle
    read_header_timeout: float = setting(30.0, positive_duration)  # a whole request within this, no longer idle
    max_connections: int = setting(512, integer(1))  # over this, closed at once (the file limit must hold them)
    aep_ui: str = setting(AEP_UI, url)  # Experience Platform's UI up to the sandbox part: flow pages link to it


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = setting("info", one_of("debug", "info", "warning", "error"))
    format: str = setting("json", one_of("json", "console"))


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """The optional push receiver: its own listener (and TLS), serving only ``path``."""

    host: str = "0.0.0.0"  # noqa: S104 -- events.webhook.listen; Adobe must reach it: put it behind your ingress
    port: int = 9849
    path: str = setting("/adobe-events", webhook_path)
    web_config_file: str | None = setting(None, optional_string)  # TLS and headers; basic auth is refused
    web_config_path: Path | None = None  # web_config_file resolved against the config file's folder
    web: WebConfig = field(default_factory=WebConfig)
    public_key_base_url: str = setting(ADOBE_KEY_HOST, url)
    max_body_bytes: int = setting(1024 * 1024, size)
    read_header_timeout: float = setting(10.0, positive_duration)  # a whole head within this; Adobe posts at once
    read_body_timeout: float = setting(10.0, positive_duration)  # a whole body within this once the head is in
    max_connections: int = setting(128, integer(1))  # over this, closed at once: a flood cannot take /metrics down


@dataclass(frozen=True, kw_only=True)
class EventsConfig:
    """Adobe I/O Events: a run's event refreshes its flow at once; polling stays the source of truth."""

    journal_url: str | None = setting(None, optional_url)  # the registration's journaling endpoint
    journal_wait: float = setting(1.0, positive_duration)  # between reads while nothing is new, without retry-after
    webhook: WebhookConfig | None = None


@dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    """What ``aep-flow-exporter rules`` writes into the alert rules; the daemon itself does not read it."""

    runbook_url: str | None = setting(None, optional_url)  # None: the exporter's own /runbook page
    dashboard_url: str = setting("http://localhost:3000", url)  # Grafana, for the links in alert descriptions
    paging_tiers: tuple[str, ...] = setting(("production",), words)  # values of the tier label whose alerts page


@dataclass(frozen=True, kw_only=True)
class SloOverride:
    """Other objectives or thresholds for the flows whose labels match every ``match`` pair (the first override
    that matches wins; a key left out keeps the default's)."""

    match: Mapping[str, str] = field(default_factory=dict)
    run_success: float | None = setting(None, objective)
    freshness: float | None = setting(None, objective)
    freshness_max_age: float | None = setting(None, positive_float)
    late_grace: float | None = setting(None, share)


@dataclass(frozen=True, kw_only=True)
class SloConfig:
    """What `aep-flow-exporter rules` writes the SLO rules and the lateness alert from; the daemon does not read it."""

    window: float = setting(30 * 86400.0, positive_duration)  # the period an error budget covers
    run_success: float = setting(0.99, objective)  # the share of completed runs that succeed (partially included)
    freshness: float = setting(0.99, objective)  # the share of time a scheduled flow's data is fresh
    freshness_max_age: float = setting(
        3.0, positive_float
    )  # fresh: younger than this many intervals (one failed run is fresh)
    late_grace: float = setting(0.25, share)  # late: no run started by the next expected time plus this share
    overrides: tuple[SloOverride, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Config:
    adobe: AdobeConfig
    sandboxes: tuple[SandboxConfig, ...]
    poll: PollConfig = field(default_factory=PollConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    slo: SloConfig = field(default_factory=SloConfig)


def config_warnings(config: Config) -> list[str]:
    """What is valid but will not do what it seems to: each with its path (check-config prints, run logs them)."""
    warnings = []
    if config.poll.initial_lookback > ADOBE_RUN_RETENTION_DAYS * 86400.0:
        days = config.poll.initial_lookback / 86400
        warnings.append(
            f"poll.initial_lookback: {days:g}d is longer than Adobe's {ADOBE_RUN_RETENTION_DAYS}-day "
            f"run retention; runs older than {ADOBE_RUN_RETENTION_DAYS} days cannot be read, so the first "
            f"counts cover at most {ADOBE_RUN_RETENTION_DAYS} days"
        )
    tiers = {
        labels.get("tier")
        for sandbox in config.sandboxes
        for labels in (sandbox.labels, *(ref.labels for ref in sandbox.flows))
    }
    if not tiers & set(config.alerts.paging_tiers):
        warnings.append(
            f"sandboxes[].labels.tier: no sandbox or flow has a tier of alerts.paging_tiers "
            f"({', '.join(config.alerts.paging_tiers)}), so no flow alert will page, only open tickets; label the "
            "production sandboxes, e.g. labels: {tier: production}"
        )
    return warnings
