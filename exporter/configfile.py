"""A YAML file -> a :class:`~exporter.config.Config`. Every problem is collected with its path, then raised at
once (ConfigError); no value from the environment is ever echoed.

One generic reader walks a section's dataclass: each field that has a rule (config.py's ``setting``) is read from
the key of its name, its default applying when the key is absent or null; the keys a section accepts are those
fields', so no key list is typed twice. What no single rule can say is read here, section by section: the
client secret (or its file), the CA file, the sandboxes (their flows, labels, discovery and poll overrides),
``listen`` (host and port), the web config files, the metrics profile (it sets the defaults of the other
metrics keys), the shard check, ``state.path`` (relative to the config file).

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment inside string values. An unknown key is
an error that suggests the nearest known one; YAML mistakes are reported with their line in plain words.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from exporter.config import (
    FLOW_ID,
    KINDS,
    LABEL_NAME,
    PROFILES,
    RESERVED_LABELS,
    SANDBOX_NAME,
    AdobeConfig,
    AlertsConfig,
    Config,
    DiscoverConfig,
    EventsConfig,
    FlowRef,
    LogConfig,
    MetricsConfig,
    PollConfig,
    SandboxConfig,
    ServerConfig,
    ShardConfig,
    SloConfig,
    SloOverride,
    StateConfig,
    WebhookConfig,
)
from exporter.errors import ConfigError
from exporter.syntax import fraction, parse_listen, positive_duration, rule_for, rule_of, shard_problem, string
from exporter.values import Secret
from exporter.webconfig import WebConfig, load_web_config
from exporter.yamlfile import read_yaml

T = TypeVar("T")

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_FILE_MAX = 64 * 1024
CONFIG_ENV = "AEP_FLOW_EXPORTER_CONFIG"
DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/aep-flow-exporter/config.yaml"))
SECTIONS = ("adobe", "sandboxes", "poll", "state", "metrics", "shard", "server", "log", "events", "alerts", "slo")

Overrides = Mapping[str, Mapping[str, object]]
"""Command-line flags as config values: section -> key -> value, applied over the file's (on reload too)."""


def keys_of(cls: type, *, add: tuple[str, ...] = ()) -> set[str]:
    """The YAML keys of a section: its fields that have a rule, and ``add`` (the keys read specially)."""
    return {f.name for f in dataclasses.fields(cls) if rule_of(f) is not None} | set(add)


class _Reader:
    """Walks the raw YAML tree, collecting every problem with its dotted path."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, raw: object, path: str, known: set[str]) -> dict[str, Any]:
        """A mapping's keys checked against ``known`` (an unknown one suggests the nearest known)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, f"expected a mapping, got {type(raw).__name__}")
            return {}
        for key in raw:
            if key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {near[0]}?)" if near else ""
                self.problem(f"{path}.{key}" if path else str(key), f"unknown key{hint}")
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

    def get(self, sec: dict[str, Any], key: str, path: str, rule: Callable[[Any], T], default: T) -> T:
        """``sec[key]`` read by ``rule`` (``default`` when absent or null, or when it is not valid)."""
        if key not in sec or sec[key] is None:
            return default
        raw = sec[key]
        full = f"{path}.{key}" if path else key
        if isinstance(raw, str):
            raw = self.expand(raw, full)
        try:
            return rule(raw)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if isinstance(sec[key], str) and raw != sec[key]:  # expanded from the environment: never echo it
                for shown in (repr(raw), str(raw)):
                    if shown:
                        message = message.replace(shown, f"<the value of {sec[key]}>")
            self.problem(full, message)
            return default

    def settings(self, cls: type, sec: dict[str, Any], path: str, defaults: Any = None) -> dict[str, Any]:
        """Every field of ``cls`` that has a rule, read from ``sec``; ``defaults`` (an instance) or the field's own
        default where the key is absent."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            rule = rule_of(item)
            if rule is None:
                continue
            if defaults is not None:
                default = getattr(defaults, item.name)
            elif item.default is not dataclasses.MISSING:
                default = item.default
            else:
                default = item.default_factory()  # type: ignore[operator]  # the field has one: no default
            out[item.name] = self.get(sec, item.name, path, rule, default)
        return out


class _ConfigReader(_Reader):
    """The sections no single rule can read (see the module docstring)."""

    def labels(self, raw: object, path: str, *, reserved_ok: bool = False) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "expected a mapping of label names to values")
            return {}
        out: dict[str, str] = {}
        for key, value in raw.items():
            name = str(key)
            if not LABEL_NAME.match(name) or name.startswith("__"):
                self.problem(f"{path}.{name}", "not a valid Prometheus label name")
            elif name in RESERVED_LABELS and not reserved_ok:
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
        sec = self.section(
            raw,
            "adobe",
            keys_of(AdobeConfig, add=("client_id", "org_id", "client_secret", "client_secret_file", "ca_file")),
        )
        if raw is None:
            self.problem("adobe", "missing (client_id, client_secret and org_id are required)")
        client_id = self.get(sec, "client_id", "adobe", string, "")
        org_id = self.get(sec, "org_id", "adobe", string, "")
        secret = self.get(sec, "client_secret", "adobe", string, "")
        secret_file = self.get(sec, "client_secret_file", "adobe", string, "")
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
            ca_file=self.ca_file(sec),
            **self.settings(AdobeConfig, sec, "adobe"),
        )

    def ca_file(self, sec: dict[str, Any]) -> Path | None:
        name = self.get(sec, "ca_file", "adobe", string, "")
        if not name:
            return None
        path = self.base_dir / name
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            self.problem("adobe.ca_file", f"{name}: not a readable PEM file of CA certificates ({exc})")
        return path

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
                sec = self.section(item, where, {"id", "labels"})
                ident = self.get(sec, "id", where, string, "")
                labels = self.labels(sec.get("labels"), f"{where}.labels")
            elif isinstance(item, str):
                ident, labels = self.expand(item, where), {}
            else:
                self.problem(where, "expected a flow id or {id, labels}")
                continue
            ident = ident.strip()
            if not ident:
                self.problem(where, "flow id is empty")
            elif not FLOW_ID.match(ident):
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

    def discover(self, raw: object, path: str) -> DiscoverConfig:
        sec = self.section(raw, path, keys_of(DiscoverConfig, add=("kinds", "include", "exclude")))
        kinds_raw = sec.get("kinds", list(KINDS))
        kinds: tuple[str, ...] = ()
        if not isinstance(kinds_raw, list) or not kinds_raw:
            self.problem(f"{path}.kinds", "expected a non-empty list of source and/or destination")
        else:
            for i, kind in enumerate(kinds_raw):
                if kind not in KINDS:
                    self.problem(f"{path}.kinds[{i}]", f"{kind!r} is not source or destination")
            kinds = tuple(k for k in kinds_raw if k in KINDS)
        return DiscoverConfig(
            kinds=kinds,
            include=self.patterns(sec.get("include"), f"{path}.include", (".*",)),
            exclude=self.patterns(sec.get("exclude"), f"{path}.exclude", ()),
            **self.settings(DiscoverConfig, sec, path),
        )

    def sandbox(self, raw: object, path: str, poll: PollConfig) -> SandboxConfig:
        sec = self.section(raw, path, {"name", "labels", "flows", "discover", "poll"})
        name = self.get(sec, "name", path, string, "").strip()
        if not name:
            self.problem(f"{path}.name", "required")
        elif not SANDBOX_NAME.match(name):
            self.problem(f"{path}.name", f"{name!r} is not a sandbox name (lowercase letters, digits, - and _)")
        discover = self.discover(sec.get("discover"), f"{path}.discover")
        flows = self.flow_refs(sec.get("flows"), f"{path}.flows")
        if not flows and not discover.enabled and name:
            self.problem(path, "lists no flows and has discover.enabled false: nothing to monitor")
        psec = self.section(sec.get("poll"), f"{path}.poll", {"interval", "jitter"})  # a sandbox overrides these
        return SandboxConfig(
            name=name,
            labels=self.labels(sec.get("labels"), f"{path}.labels"),
            flows=flows,
            discover=discover,
            interval=self.get(psec, "interval", f"{path}.poll", positive_duration, poll.interval),
            jitter=self.get(psec, "jitter", f"{path}.poll", fraction, poll.jitter),
        )

    def sandboxes(self, raw: object, poll: PollConfig) -> tuple[SandboxConfig, ...]:
        if not isinstance(raw, list) or not raw:
            self.problem("sandboxes", "expected a non-empty list of sandboxes")
            return ()
        out: list[SandboxConfig] = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            sandbox = self.sandbox(item, f"sandboxes[{i}]", poll)
            if sandbox.name and sandbox.name in names:
                self.problem(f"sandboxes[{i}].name", f"duplicate sandbox {sandbox.name}")
            names.add(sandbox.name)
            out.append(sandbox)
        return tuple(out)

    def metrics(self, raw: object) -> MetricsConfig:
        sec = self.section(raw, "metrics", keys_of(MetricsConfig))
        profile = self.get(sec, "profile", "metrics", rule_for(MetricsConfig, "profile"), "lean")
        return MetricsConfig(**self.settings(MetricsConfig, sec, "metrics", PROFILES[profile]))

    def slo(self, raw: object) -> SloConfig:
        """``slo:``: the defaults, then ``overrides``, each a ``match`` of label values and the keys it changes."""
        sec = self.section(raw, "slo", keys_of(SloConfig, add=("overrides",)))
        overrides = []
        items = sec.get("overrides") or []
        if not isinstance(items, list):
            self.problem("slo.overrides", "expected a list of {match: {label: value}, ...}")
            items = []
        for i, item in enumerate(items):
            path = f"slo.overrides[{i}]"
            entry = self.section(item, path, keys_of(SloOverride, add=("match",)))
            match = self.labels(entry.get("match"), f"{path}.match", reserved_ok=True)  # sandbox, kind, tier...
            if not match:
                self.problem(f"{path}.match", "give at least one label and its value, e.g. {tier: production}")
            overrides.append(SloOverride(match=match, **self.settings(SloOverride, entry, path)))
        return SloConfig(overrides=tuple(overrides), **self.settings(SloConfig, sec, "slo"))

    def shard(self, raw: object) -> ShardConfig:
        sec = self.section(raw, "shard", keys_of(ShardConfig))
        shard = ShardConfig(**self.settings(ShardConfig, sec, "shard"))
        problem = shard_problem(shard.index, shard.total)
        if problem:
            self.problem("shard.index", problem)
        return shard

    def web_config(
        self, sec: dict[str, Any], path: str, *, users_refused: str | None = None
    ) -> tuple[Path | None, WebConfig]:
        """A listener's ``web_config_file`` (relative to the config's folder) and what it sets up; its problems are
        reported under ``<path>.web_config_file``. ``users_refused`` says why the listener cannot honour
        ``basic_auth_users`` (it is then a problem, never silently ignored)."""
        name = self.get(sec, "web_config_file", path, string, "")
        if not name:
            return None, WebConfig()
        try:
            web = load_web_config(self.base_dir / name, f"{path}.web_config_file")
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return self.base_dir / name, WebConfig()
        if web.users and users_refused:
            self.problem(f"{path}.web_config_file.basic_auth_users", users_refused)
        return self.base_dir / name, web

    def server(self, raw: object) -> ServerConfig:
        sec = self.section(raw, "server", keys_of(ServerConfig, add=("listen",)))
        host, port = self.get(sec, "listen", "server", parse_listen, (ServerConfig.host, ServerConfig.port))
        web_path, web = self.web_config(sec, "server")
        return ServerConfig(
            host=host, port=port, web_config_path=web_path, web=web, **self.settings(ServerConfig, sec, "server")
        )

    def webhook(self, raw: object) -> WebhookConfig:
        sec = self.section(raw, "events.webhook", keys_of(WebhookConfig, add=("listen",)))
        host, port = self.get(sec, "listen", "events.webhook", parse_listen, (WebhookConfig.host, WebhookConfig.port))
        web_path, web = self.web_config(
            sec,
            "events.webhook",
            users_refused=(
                "not on the webhook listener: Adobe I/O Events sends no credentials (a delivery is proven by its "
                "signature), so every delivery would be refused and the registration disabled"
            ),
        )
        return WebhookConfig(
            host=host,
            port=port,
            web_config_path=web_path,
            web=web,
            **self.settings(WebhookConfig, sec, "events.webhook"),
        )

    def events(self, raw: object) -> EventsConfig:
        sec = self.section(raw, "events", keys_of(EventsConfig, add=("webhook",)))
        webhook = self.webhook(sec["webhook"]) if sec.get("webhook") is not None else None
        return EventsConfig(webhook=webhook, **self.settings(EventsConfig, sec, "events"))

    def simple(self, cls: type[T], raw: object, path: str) -> T:
        """A section every key of which has a rule."""
        return cls(**self.settings(cls, self.section(raw, path, keys_of(cls)), path))


def parse_config(raw: object, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """Validate a loaded YAML document; raises ConfigError listing every problem."""
    reader = _ConfigReader(os.environ if env is None else env, base_dir or Path.cwd())
    if raw is None or not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping with adobe and sandboxes"])
    top = reader.section(raw, "", set(SECTIONS))
    poll = reader.simple(PollConfig, top.get("poll"), "poll")
    state = reader.simple(StateConfig, top.get("state"), "state")
    if isinstance(top.get("state"), dict) and "path" in top["state"] and top["state"]["path"] is None:
        state = StateConfig(path=None)  # null: in memory only
    if state.path is not None:  # relative to the config file's folder, like the other paths in it
        state = StateConfig(path=str(reader.base_dir / state.path))
    config = Config(
        adobe=reader.adobe(top.get("adobe")),
        sandboxes=reader.sandboxes(top.get("sandboxes"), poll),
        poll=poll,
        state=state,
        metrics=reader.metrics(top.get("metrics")),
        shard=reader.shard(top.get("shard")),
        server=reader.server(top.get("server")),
        log=reader.simple(LogConfig, top.get("log"), "log"),
        events=reader.events(top.get("events")),
        alerts=reader.simple(AlertsConfig, top.get("alerts"), "alerts"),
        slo=reader.slo(top.get("slo")),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


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


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, overrides: Overrides | None = None
) -> Config:
    """Read and validate a YAML config file, with ``overrides`` over its values; raises ConfigError (never a yaml
    or OS error)."""
    file = Path(path)
    raw = read_yaml(file)
    if overrides and isinstance(raw, dict):
        for section, values in overrides.items():
            current = raw.get(section)
            raw[section] = {**(current if isinstance(current, dict) else {}), **values}
    return parse_config(raw, env=env, base_dir=file.parent)
