"""What can be configured: frozen, typed dataclasses, each key's default and its rule side by side (``setting``
keeps the rule in the field's metadata), and the value syntax the rules read (durations, sizes, percentages,
URLs, ``host:port``), and ``config_warnings``: what is valid but will not do what it seems. configfile.py turns a
YAML file into a :class:`Config` from these fields alone; nothing here reads a file or the environment.

A rule takes the YAML value (strings already ``${VAR}``-expanded) and returns the typed value, or raises
ValueError/TypeError with a message that never echoes an expanded environment value (configfile.py replaces
it). The client secret is wrapped in :class:`Secret` so that no repr, log line or exception can show it.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def string(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return str(value)


def optional_string(value: object) -> str | None:
    """A string; empty means none."""
    return string(value) or None


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise TypeError(f"expected true or false, got {value!r}")


def integer(minimum: int) -> Callable[[object], int]:
    """A whole number of at least ``minimum`` (a string of digits too)."""

    def rule(value: object) -> int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        number = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
        if not isinstance(number, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return rule


def one_of(*choices: str) -> Callable[[object], str]:
    """One of ``choices`` (any case)."""

    def rule(value: object) -> str:
        text = string(value).lower()
        if text not in choices:
            listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
            raise ValueError(f"{text!r} is not {listed}")
        return text

    return rule


def parse_duration(value: object) -> float:
    """``90s``, ``5m``, ``1h``, ``1d``, ``250ms`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise TypeError("expected a duration such as 90s, 5m, 1h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use 90s, 5m, 1h or 1d)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative duration")
    return seconds


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def durations(value: object) -> tuple[float, ...]:
    """A non-empty, strictly increasing list of durations (histogram buckets)."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of durations")
    parsed = [parse_duration(b) for b in value]
    if any(b <= a for a, b in itertools.pairwise(parsed)):
        raise ValueError("buckets must be strictly increasing")
    return tuple(parsed)


def words(value: object) -> tuple[str, ...]:
    """A non-empty list of plain words (letters, digits, ``_``, ``-``), as label values to match."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of words")
    out = tuple(string(v) for v in value)
    bad = [w for w in out if not re.fullmatch(r"[A-Za-z0-9_-]+", w)]
    if bad:
        raise ValueError(f"not a plain word (letters, digits, _ and - only): {bad[0][:64]!r}")
    return out


def size(value: object) -> int:
    """A byte size: a whole number, or with a unit (``32MiB``, ``500KiB``, ``1GB``); at least 1 KiB."""
    if isinstance(value, bool):
        raise TypeError("expected a size such as 32MiB")
    if isinstance(value, int):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 32MiB, got {value!r}")
        number = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number < 1024:
        raise ValueError("must be at least 1KiB")
    return number


def positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return number


def fraction(value: object) -> float:
    """``10%`` or ``0.1``, between 0 and 1."""
    if isinstance(value, bool):
        raise TypeError(f"expected a percentage such as 10%, got {value!r}")
    text = str(value).strip()
    number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0% and 100%, got {value!r}")
    return number


def url(value: object) -> str:
    text = string(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text


def optional_url(value: object) -> str | None:
    return url(value) if string(value) else None


def proxy_url(value: object) -> str:
    """An http:// (or https://) proxy URL; user:password in it is allowed and never echoed in an error."""
    text = string(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}..." if "@" in text else repr(text)
        raise ValueError(f"{shown} is not a proxy URL such as http://proxy.example.com:3128")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValueError("the proxy URL's port is not a number") from None
    return text


def parse_listen(value: object) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or ``:port`` (every interface) -> (host, port)."""
    text = string(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 -- ":9847" means every interface, as in Prometheus
    return host, int(port)


def webhook_path(value: object) -> str:
    text = string(value)
    if not re.match(r"^/[A-Za-z0-9/_.-]*$", text) or text.startswith("/metrics"):
        raise ValueError(f"{text!r} is not a path such as /adobe-events")
    return text


def shard_problem(index: int, total: int) -> str | None:
    """What is wrong with a shard index and count (from the file or the command line), or None."""
    if total < 1:
        return f"shard.total must be at least 1, got {total}"
    if not 0 <= index < total:
        return f"must be below shard.total ({total}) and not negative, got {index}"
    return None


# --- settings: a field with its default and its rule ----------------------------------------------------------

Rule = Callable[[Any], Any]


def setting(default: Any = MISSING, rule: Rule | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A configurable field: its YAML key is the field's name, ``rule`` reads the YAML value, ``default`` (or
    ``factory()``) applies when the key is absent or null."""
    metadata = {"rule": rule} if rule is not None else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(item: Any) -> Rule | None:
    """The rule of a dataclass field (None: the field is not read by the generic reader)."""
    rule: Rule | None = item.metadata.get("rule")
    return rule


def rule_for(cls: type, name: str) -> Rule:
    """The rule of the field ``name`` of the dataclass ``cls``."""
    rule = rule_of(next(f for f in fields(cls) if f.name == name))
    assert rule is not None  # noqa: S101 -- asked only for fields that have one
    return rule


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
