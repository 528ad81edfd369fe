"""YAML config -> frozen, typed ``Config``. Every problem is collected with its path, then raised at once.

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment inside string values; ``*_file``
keys read secrets from files. Unknown keys are errors. The client secret is wrapped in :class:`Secret`
so that no repr, log line or exception can show it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from exporter.errors import ConfigError
from exporter.values import Secret
from exporter.webconfig import WebConfig, load_web_config

T = TypeVar("T")

FULL_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)
# A subset of FULL_BUCKETS, so a state file written under either profile is re-bucketed exactly.
LEAN_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 14400.0)
DEFAULT_SCOPES = "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session"
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
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True, kw_only=True)
class AdobeConfig:
    client_id: str
    client_secret: Secret
    org_id: str
    scopes: str = DEFAULT_SCOPES
    ims_token_url: str = "https://ims-na1.adobelogin.com/ims/token/v3"  # noqa: S105 -- a URL, not a password
    flow_service_url: str = "https://platform.adobe.io/data/foundation/flowservice"
    proxy: str | None = None  # an explicit HTTP(S) proxy; otherwise HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply
    ca_file: Path | None = None  # extra CA certificates (PEM) to trust, e.g. a TLS-intercepting proxy's


@dataclass(frozen=True, kw_only=True)
class DiscoverConfig:
    enabled: bool = False
    kinds: tuple[str, ...] = ("source", "destination")
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
    interval: float = 60.0
    jitter: float = 0.10
    timeout: float = 30.0
    max_concurrency: int = 8
    requests_per_second: float = 10.0
    initial_lookback: float = 86400.0
    retries: int = 3
    max_response_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    flows: tuple[FlowRef, ...] = ()
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    interval: float = 60.0
    jitter: float = 0.10

    @functools.cached_property
    def _flow_labels(self) -> dict[str, Mapping[str, str]]:
        return {ref.id: ref.labels for ref in self.flows if ref.labels}

    def labels_for(self, flow_id: str) -> dict[str, str]:
        """Static labels of a flow: the sandbox's, overridden by the flow's own (a dict lookup, not a scan)."""
        return {**self.labels, **self._flow_labels.get(flow_id, {})}


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    path: str | None = "./state/aep-flow-exporter.db"


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Cardinality controls. The defaults are the lean profile; ``PROFILES["full"]`` gives every series."""

    profile: str = "lean"  # lean: what alerts and dashboards use, plus every counter; full: every series
    activities: bool = True
    sparse_status: bool = True
    duration_buckets: tuple[float, ...] = LEAN_BUCKETS
    duration_histogram: bool = True  # false: no aep_flow_run_duration_seconds series at all
    audiences: bool = False  # per-audience counts of destination runs (aep_flow_audience_records_total)
    max_audiences_per_flow: int = 50
    max_error_codes_per_flow: int = 20
    max_activities_per_flow: int = 20
    max_flows_per_sandbox: int = 5000


PROFILES = {
    "lean": MetricsConfig(),
    "full": MetricsConfig(profile="full", sparse_status=False, duration_buckets=FULL_BUCKETS),
}


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    index: int = 0
    total: int = 1


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 -- an exporter listens on all interfaces by default, like node_exporter
    port: int = 9847
    web_config_file: str | None = None
    web_config_path: Path | None = None  # web_config_file resolved against the config file's folder
    web: WebConfig = field(default_factory=WebConfig)
    enable_lifecycle: bool = False  # POST /-/reload, as Prometheus's --web.enable-lifecycle
    read_header_timeout: float = 30.0  # a client must send a whole request within this, and not idle longer
    max_connections: int = 512  # connections over this are closed at once (the file limit must hold them all)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = "info"
    format: str = "json"


ADOBE_KEY_HOST = "https://static.adobeioevents.com"


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """The optional push receiver: its own listener (and TLS), serving only ``path``."""

    host: str = "0.0.0.0"  # noqa: S104 -- Adobe must reach it; put it behind your ingress
    port: int = 9849
    path: str = "/adobe-events"
    web_config_file: str | None = None
    web_config_path: Path | None = None  # web_config_file resolved against the config file's folder
    web: WebConfig = field(default_factory=WebConfig)
    public_key_base_url: str = ADOBE_KEY_HOST
    max_body_bytes: int = 1024 * 1024
    read_header_timeout: float = 10.0  # a whole request head within this (and no longer idle); Adobe posts at once
    read_body_timeout: float = 10.0  # a whole body within this once the head is in
    max_connections: int = 128  # connections over this are closed at once: a flood cannot take /metrics down


@dataclass(frozen=True, kw_only=True)
class EventsConfig:
    """Adobe I/O Events: a run's event refreshes its flow at once; polling stays the source of truth."""

    journal_url: str | None = None  # the registration's journaling endpoint (Developer Console)
    journal_wait: float = 1.0  # between reads when the journal has nothing new and says no Retry-After
    webhook: WebhookConfig | None = None


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


ADOBE_RUN_RETENTION_S = 90 * 86400.0
"""Adobe keeps dataflow runs for 90 days."""


def config_warnings(config: Config) -> list[str]:
    """What is valid but will not do what it seems to: each with its path (check-config prints, run logs them)."""
    warnings = []
    if config.poll.initial_lookback > ADOBE_RUN_RETENTION_S:
        days = config.poll.initial_lookback / 86400
        warnings.append(
            f"poll.initial_lookback: {days:g}d is longer than Adobe's 90-day run retention; runs older "
            "than 90 days cannot be read, so the first counts cover at most 90 days"
        )
    return warnings


SECRET_FILE_MAX = 64 * 1024


def read_secret_file(path: Path) -> str:
    """The client secret from a file; ValueError (without the content) when the file is not a readable regular
    file of UTF-8 text (a FIFO or /dev/zero would hang or fill memory: refused before reading)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file")
    if info.st_size > SECRET_FILE_MAX:
        raise ValueError(f"is {info.st_size} bytes; a client secret file holds one short line")
    try:
        with path.open("rb") as handle:
            data = handle.read(SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    if not secret:
        raise ValueError("is empty")
    return secret


def _keys(cls: type, *, add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> set[str]:
    """The keys a config section accepts: its dataclass's fields (so they are never listed twice)."""
    return {f.name for f in dataclasses.fields(cls) if f.name not in drop} | set(add)


def shard_problem(index: int, total: int) -> str | None:
    """What is wrong with a shard index and count (from the file or the command line), or None."""
    if total < 1:
        return f"shard.total must be at least 1, got {total}"
    if not 0 <= index < total:
        return f"must be below shard.total ({total}) and not negative, got {index}"
    return None


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


class _Reader:
    """Walks the raw YAML tree, collecting every problem with its dotted path."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, raw: object, path: str, known: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, f"expected a mapping, got {type(raw).__name__}")
            return {}
        for key in raw:
            if key not in known:
                self.problem(f"{path}.{key}" if path else str(key), "unknown key")
        return raw

    def expand(self, value: str, path: str) -> str:
        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env and (default is None or self.env[name] != ""):
                return self.env[name]
            if default is not None:
                return default
            self.problem(path, f"environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(repl, value)

    def get(self, sec: dict[str, Any], key: str, path: str, conv: Callable[[Any], T], default: T) -> T:
        if key not in sec or sec[key] is None:
            return default
        raw = sec[key]
        full = f"{path}.{key}" if path else key
        if isinstance(raw, str):
            raw = self.expand(raw, full)
        try:
            return conv(raw)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if isinstance(sec[key], str) and raw != sec[key]:  # expanded from the environment: never echo it
                for shown in (repr(raw), str(raw)):
                    if shown:
                        message = message.replace(shown, f"<the value of {sec[key]}>")
            self.problem(full, message)
            return default


def _string(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise TypeError(f"expected true or false, got {value!r}")


def _int_at_least(minimum: int) -> Callable[[object], int]:
    def conv(value: object) -> int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        number = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
        if not isinstance(number, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return conv


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _size(value: object) -> int:
    """A byte size: a whole number, or with a unit (``32MiB``, ``500KiB``, ``1GB``); at least 1 KiB."""
    if isinstance(value, bool):
        raise TypeError("expected a size such as 32MiB")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 32MiB, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size < 1024:
        raise ValueError("must be at least 1KiB")
    return size


def _positive_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return number


def _fraction(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"expected a percentage such as 10%, got {value!r}")
    text = str(value).strip()
    number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0% and 100%, got {value!r}")
    return number


def _url(value: object) -> str:
    text = _string(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text


def _proxy_url(value: object) -> str:
    """An http:// (or https://) proxy URL; user:password in it is allowed and never echoed in an error."""
    text = _string(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}..." if "@" in text else repr(text)
        raise ValueError(f"{shown} is not a proxy URL such as http://proxy.example.com:3128")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValueError("the proxy URL's port is not a number") from None
    return text


def host_port(url: str) -> str:
    """host:port of a URL (a proxy's, an Adobe host's), for logs and errors (never a user or password in it)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def parse_listen(value: object) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or ``:port`` (every interface) -> (host, port)."""
    text = _string(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 -- ":9847" means every interface, as in Prometheus
    return host, int(port)


class _ConfigParser(_Reader):
    def labels(self, raw: object, path: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "expected a mapping of label names to values")
            return {}
        out: dict[str, str] = {}
        for key, value in raw.items():
            name = str(key)
            if not _LABEL_RE.match(name) or name.startswith("__"):
                self.problem(f"{path}.{name}", "not a valid Prometheus label name")
            elif name in RESERVED_LABELS:
                self.problem(f"{path}.{name}", "reserved: the exporter sets this label itself")
            elif isinstance(value, (dict, list)):
                self.problem(f"{path}.{name}", "label values must be strings")
            else:
                out[name] = self.expand(str(value), f"{path}.{name}")
        return out

    def patterns(self, raw: object, path: str, default: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
        values = default if raw is None else raw
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, (list, tuple)):
            self.problem(path, "expected a list of regular expressions")
            return ()
        out = []
        for i, pattern in enumerate(values):
            try:
                out.append(re.compile(str(pattern)))
            except re.error as exc:
                self.problem(f"{path}[{i}]", f"invalid regular expression: {exc}")
        return tuple(out)

    def adobe(self, raw: object) -> AdobeConfig:
        known = _keys(AdobeConfig, add=("client_secret_file",))
        sec = self.section(raw, "adobe", known)
        if raw is None:
            self.problem("adobe", "missing (client_id, client_secret and org_id are required)")
        client_id = self.get(sec, "client_id", "adobe", _string, "")
        org_id = self.get(sec, "org_id", "adobe", _string, "")
        secret = self.get(sec, "client_secret", "adobe", _string, "")
        secret_file = self.get(sec, "client_secret_file", "adobe", _string, "")
        if secret and secret_file:
            self.problem("adobe.client_secret_file", "set client_secret or client_secret_file, not both")
        elif secret_file:
            shown = secret_file if "${" not in str(sec.get("client_secret_file", "")) else "the file it names"
            try:
                secret = read_secret_file(self.base_dir / secret_file)
            except ValueError as exc:
                self.problem("adobe.client_secret_file", f"{shown}: {exc}")
        if raw is not None:
            for key, value in (("client_id", client_id), ("org_id", org_id)):
                if not value:
                    self.problem(f"adobe.{key}", "required")
            if not secret and not secret_file:
                self.problem("adobe.client_secret", "required (or client_secret_file)")
        if org_id and not org_id.endswith("@AdobeOrg"):
            org_id += "@AdobeOrg"
        return AdobeConfig(
            client_id=client_id,
            client_secret=Secret(secret),
            org_id=org_id,
            scopes=self.get(sec, "scopes", "adobe", _string, DEFAULT_SCOPES),
            ims_token_url=self.get(sec, "ims_token_url", "adobe", _url, AdobeConfig.ims_token_url),
            flow_service_url=self.get(sec, "flow_service_url", "adobe", _url, AdobeConfig.flow_service_url),
            proxy=self.get(sec, "proxy", "adobe", _proxy_url, None),
            ca_file=self.ca_file(sec),
        )

    def ca_file(self, sec: dict[str, Any]) -> Path | None:
        name = self.get(sec, "ca_file", "adobe", _string, "")
        if not name:
            return None
        path = self.base_dir / name
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            self.problem("adobe.ca_file", f"{name}: not a readable PEM file of CA certificates ({exc})")
        return path

    def poll(self, raw: object) -> PollConfig:
        known = _keys(PollConfig)
        sec = self.section(raw, "poll", known)
        d = PollConfig()
        return PollConfig(
            interval=self.get(sec, "interval", "poll", _positive_duration, d.interval),
            jitter=self.get(sec, "jitter", "poll", _fraction, d.jitter),
            timeout=self.get(sec, "timeout", "poll", _positive_duration, d.timeout),
            max_concurrency=self.get(sec, "max_concurrency", "poll", _int_at_least(1), d.max_concurrency),
            requests_per_second=self.get(sec, "requests_per_second", "poll", _positive_float, d.requests_per_second),
            initial_lookback=self.get(sec, "initial_lookback", "poll", parse_duration, d.initial_lookback),
            retries=self.get(sec, "retries", "poll", _int_at_least(0), d.retries),
            max_response_bytes=self.get(sec, "max_response_bytes", "poll", _size, d.max_response_bytes),
        )

    def flow_refs(self, raw: object, path: str) -> tuple[FlowRef, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.problem(path, "expected a list of flow ids")
            return ()
        refs: list[FlowRef] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            if isinstance(item, dict):
                sec = self.section(item, where, _keys(FlowRef))
                ident = self.get(sec, "id", where, _string, "")
                labels = self.labels(sec.get("labels"), f"{where}.labels")
            elif isinstance(item, str):
                ident, labels = self.expand(item, where), {}
            else:
                self.problem(where, "expected a flow id or {id, labels}")
                continue
            ident = ident.strip()
            if not ident:
                self.problem(where, "flow id is empty")
            elif not _UUID_RE.match(ident):
                self.problem(
                    where,
                    f"{ident!r} is not a flow id: Adobe's flow ids are UUIDs such as "
                    "c9cef9cb-c934-4467-8ef9-cbc934546741 (copy it from the dataflow's page in the "
                    "Experience Platform UI, or let discover: find flows by name)",
                )
            elif ident in seen:
                self.problem(where, f"duplicate flow id {ident}")
            else:
                seen.add(ident)
                refs.append(FlowRef(id=ident, labels=labels))
        return tuple(refs)

    def sandbox(self, raw: object, path: str, poll: PollConfig) -> SandboxConfig | None:
        sec = self.section(raw, path, _keys(SandboxConfig, add=("poll",), drop=("interval", "jitter")))
        name = self.get(sec, "name", path, _string, "").strip()
        if not name:
            self.problem(f"{path}.name", "required")
        elif name != name.lower() or not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
            self.problem(f"{path}.name", f"{name!r} is not a sandbox name (lowercase letters, digits, - and _)")
        dsec = self.section(sec.get("discover"), f"{path}.discover", _keys(DiscoverConfig))
        dpath = f"{path}.discover"
        kinds_raw = dsec.get("kinds", ["source", "destination"])
        kinds: tuple[str, ...] = ()
        if not isinstance(kinds_raw, list) or not kinds_raw:
            self.problem(f"{dpath}.kinds", "expected a non-empty list of source and/or destination")
        else:
            for i, kind in enumerate(kinds_raw):
                if kind not in ("source", "destination"):
                    self.problem(f"{dpath}.kinds[{i}]", f"{kind!r} is not source or destination")
            kinds = tuple(k for k in kinds_raw if k in ("source", "destination"))
        discover = DiscoverConfig(
            enabled=self.get(dsec, "enabled", dpath, _bool, False),
            kinds=kinds,
            include=self.patterns(dsec.get("include"), f"{dpath}.include", (".*",)),
            exclude=self.patterns(dsec.get("exclude"), f"{dpath}.exclude", ()),
        )
        flows = self.flow_refs(sec.get("flows"), f"{path}.flows")
        if not flows and not discover.enabled and name:
            self.problem(path, "lists no flows and has discover.enabled false: nothing to monitor")
        psec = self.section(sec.get("poll"), f"{path}.poll", {"interval", "jitter"})  # a sandbox overrides only these
        return SandboxConfig(
            name=name,
            labels=self.labels(sec.get("labels"), f"{path}.labels"),
            flows=flows,
            discover=discover,
            interval=self.get(psec, "interval", f"{path}.poll", _positive_duration, poll.interval),
            jitter=self.get(psec, "jitter", f"{path}.poll", _fraction, poll.jitter),
        )

    def sandboxes(self, raw: object, poll: PollConfig) -> tuple[SandboxConfig, ...]:
        if not isinstance(raw, list) or not raw:
            self.problem("sandboxes", "expected a non-empty list of sandboxes")
            return ()
        out: list[SandboxConfig] = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            sandbox = self.sandbox(item, f"sandboxes[{i}]", poll)
            if sandbox is None:
                continue
            if sandbox.name and sandbox.name in names:
                self.problem(f"sandboxes[{i}].name", f"duplicate sandbox {sandbox.name}")
            names.add(sandbox.name)
            out.append(sandbox)
        return tuple(out)

    def metrics(self, raw: object) -> MetricsConfig:
        known = _keys(MetricsConfig)
        sec = self.section(raw, "metrics", known)
        profile = self.get(sec, "profile", "metrics", _string, "lean").lower()
        if profile not in PROFILES:
            self.problem("metrics.profile", f"{profile!r} is not lean or full")
        d = PROFILES.get(profile, MetricsConfig())
        buckets = d.duration_buckets
        if sec.get("duration_buckets") is not None:
            raw_buckets = sec["duration_buckets"]
            try:
                if not isinstance(raw_buckets, list) or not raw_buckets:
                    raise ValueError("expected a non-empty list of durations")
                parsed = [parse_duration(b) for b in raw_buckets]
                if any(b <= a for a, b in itertools.pairwise(parsed)):
                    raise ValueError("buckets must be strictly increasing")
                buckets = tuple(parsed)
            except (ValueError, TypeError) as exc:
                self.problem("metrics.duration_buckets", str(exc))
        return MetricsConfig(
            profile=d.profile,
            activities=self.get(sec, "activities", "metrics", _bool, d.activities),
            sparse_status=self.get(sec, "sparse_status", "metrics", _bool, d.sparse_status),
            duration_buckets=buckets,
            duration_histogram=self.get(sec, "duration_histogram", "metrics", _bool, d.duration_histogram),
            audiences=self.get(sec, "audiences", "metrics", _bool, d.audiences),
            max_audiences_per_flow=self.get(
                sec, "max_audiences_per_flow", "metrics", _int_at_least(1), d.max_audiences_per_flow
            ),
            max_error_codes_per_flow=self.get(
                sec, "max_error_codes_per_flow", "metrics", _int_at_least(1), d.max_error_codes_per_flow
            ),
            max_activities_per_flow=self.get(
                sec, "max_activities_per_flow", "metrics", _int_at_least(1), d.max_activities_per_flow
            ),
            max_flows_per_sandbox=self.get(
                sec, "max_flows_per_sandbox", "metrics", _int_at_least(1), d.max_flows_per_sandbox
            ),
        )

    def shard(self, raw: object) -> ShardConfig:
        sec = self.section(raw, "shard", _keys(ShardConfig))
        index = self.get(sec, "index", "shard", _int_at_least(0), 0)
        total = self.get(sec, "total", "shard", _int_at_least(1), 1)
        problem = shard_problem(index, total)
        if problem:
            self.problem("shard.index", problem)
        return ShardConfig(index=index, total=total)

    def web_config(
        self, sec: dict[str, Any], path: str, *, users_refused: str | None = None
    ) -> tuple[str | None, WebConfig]:
        """A listener's ``web_config_file`` (relative to the config's folder) and what it sets up; its problems are
        reported under ``<path>.web_config_file``. ``users_refused`` says why the listener cannot honour
        ``basic_auth_users`` (it is then a problem, never silently ignored)."""
        name = self.get(sec, "web_config_file", path, _string, "") or None
        if not name:
            return None, WebConfig()
        try:
            web = load_web_config(self.base_dir / name, f"{path}.web_config_file")
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return name, WebConfig()
        if web.users and users_refused:
            self.problem(f"{path}.web_config_file.basic_auth_users", users_refused)
        return name, web

    def server(self, raw: object) -> ServerConfig:
        sec = self.section(
            raw, "server", _keys(ServerConfig, add=("listen",), drop=("host", "port", "web_config_path", "web"))
        )
        host, port = self.get(sec, "listen", "server", parse_listen, ("0.0.0.0", 9847))  # noqa: S104 -- see ServerConfig
        web_config, web = self.web_config(sec, "server")
        return ServerConfig(
            host=host,
            port=port,
            web_config_file=web_config,
            web_config_path=self.base_dir / web_config if web_config else None,
            web=web,
            enable_lifecycle=self.get(sec, "enable_lifecycle", "server", _bool, False),
            read_header_timeout=self.get(
                sec, "read_header_timeout", "server", _positive_duration, ServerConfig.read_header_timeout
            ),
            max_connections=self.get(sec, "max_connections", "server", _int_at_least(1), ServerConfig.max_connections),
        )

    def events(self, raw: object) -> EventsConfig:
        sec = self.section(raw, "events", {"journal_url", "journal_wait", "webhook"})
        webhook = None
        if sec.get("webhook") is not None:
            wsec = self.section(
                sec["webhook"],
                "events.webhook",
                _keys(WebhookConfig, add=("listen",), drop=("host", "port", "web", "web_config_path")),
            )
            host, port = self.get(wsec, "listen", "events.webhook", parse_listen, ("0.0.0.0", 9849))  # noqa: S104
            path = self.get(wsec, "path", "events.webhook", _string, WebhookConfig.path)
            if not re.match(r"^/[A-Za-z0-9/_.-]*$", path) or path.startswith("/metrics"):
                self.problem("events.webhook.path", f"{path!r} is not a path such as /adobe-events")
            web_config, web = self.web_config(
                wsec,
                "events.webhook",
                users_refused=(
                    "not on the webhook listener: Adobe I/O Events sends no credentials (a delivery is proven by its "
                    "signature), so every delivery would be refused and the registration disabled"
                ),
            )
            webhook = WebhookConfig(
                host=host,
                port=port,
                path=path,
                web_config_file=web_config,
                web=web,
                public_key_base_url=self.get(wsec, "public_key_base_url", "events.webhook", _url, ADOBE_KEY_HOST),
                max_body_bytes=self.get(wsec, "max_body_bytes", "events.webhook", _size, 1024 * 1024),
                web_config_path=self.base_dir / web_config if web_config else None,
                read_header_timeout=self.get(
                    wsec, "read_header_timeout", "events.webhook", _positive_duration, WebhookConfig.read_header_timeout
                ),
                read_body_timeout=self.get(
                    wsec, "read_body_timeout", "events.webhook", _positive_duration, WebhookConfig.read_body_timeout
                ),
                max_connections=self.get(
                    wsec, "max_connections", "events.webhook", _int_at_least(1), WebhookConfig.max_connections
                ),
            )
        return EventsConfig(
            journal_url=self.get(sec, "journal_url", "events", _url, None) or None,
            journal_wait=self.get(sec, "journal_wait", "events", _positive_duration, EventsConfig.journal_wait),
            webhook=webhook,
        )

    def log(self, raw: object) -> LogConfig:
        sec = self.section(raw, "log", _keys(LogConfig))
        level = self.get(sec, "level", "log", _string, "info").lower()
        if level not in ("debug", "info", "warning", "error"):
            self.problem("log.level", f"{level!r} is not debug, info, warning or error")
        fmt = self.get(sec, "format", "log", _string, "json").lower()
        if fmt not in ("json", "console"):
            self.problem("log.format", f"{fmt!r} is not json or console")
        return LogConfig(level=level, format=fmt)


def parse_config(raw: object, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Validate a loaded YAML document; raises ConfigError listing every problem."""
    parser = _ConfigParser(os.environ if env is None else env, base_dir or Path.cwd())
    top = parser.section(
        raw, "", {"adobe", "sandboxes", "poll", "state", "metrics", "shard", "server", "log", "events"}
    )
    if raw is None or not isinstance(raw, dict):
        if raw is not None:
            parser.problems.clear()
        parser.problem("(top level)", "expected a mapping with adobe and sandboxes")
        raise ConfigError(parser.problems)
    poll = parser.poll(top.get("poll"))
    state_sec = parser.section(top.get("state"), "state", {"path"})
    state_path = StateConfig().path
    if "state" in top and "path" in state_sec:
        state_path = parser.get(state_sec, "path", "state", _string, "") or None
    if state_path is not None:  # relative to the config file's folder, like the other paths in it
        state_path = str(parser.base_dir / state_path)
    config = Config(
        adobe=parser.adobe(top.get("adobe")),
        sandboxes=parser.sandboxes(top.get("sandboxes"), poll),
        poll=poll,
        state=StateConfig(path=state_path),
        metrics=parser.metrics(top.get("metrics")),
        shard=parser.shard(top.get("shard")),
        server=parser.server(top.get("server")),
        log=parser.log(top.get("log")),
        events=parser.events(top.get("events")),
    )
    if parser.problems:
        raise ConfigError(parser.problems)
    return config


CONFIG_ENV = "AEP_FLOW_EXPORTER_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/aep-flow-exporter/config.yaml"))


def find_config(given: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The config file to use: ``--config``, else $AEP_FLOW_EXPORTER_CONFIG, else ./config.yaml, else
    /etc/aep-flow-exporter/config.yaml; ConfigError naming all three when none is given or found."""
    env = os.environ if env is None else env
    if given:
        return Path(given)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        [
            f"no config file: give --config PATH, set {CONFIG_ENV}, or create ./config.yaml or "
            f"{DEFAULT_CONFIG_PATHS[1]} (config.example.yaml shows every key; `aep-flow-exporter demo` "
            "runs without one)"
        ]
    )


Overrides = Mapping[str, Mapping[str, object]]
"""Command-line flags as config values: section -> key -> value, applied over the file's (on reload too)."""


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, overrides: Overrides | None = None
) -> Config:
    """Read and validate a YAML config file, with ``overrides`` over its values; raises ConfigError (never a yaml
    or OS error)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError([f"{file}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from exc
    if overrides and isinstance(raw, dict):
        for section, values in overrides.items():
            current = raw.get(section)
            raw[section] = {**(current if isinstance(current, dict) else {}), **values}
    return parse_config(raw, env=env, base_dir=file.parent)
