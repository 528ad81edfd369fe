"""Config parsing: the contract's shape, env expansion, secrets from files, and every problem with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import FULL_BUCKETS, AlertsConfig, EventsConfig, MetricsConfig, PollConfig, SloConfig
from exporter.configfile import load_config, parse_config
from exporter.errors import ConfigError
from exporter.syntax import parse_duration

ROOT = Path(__file__).parent.parent

VALID = """
adobe:
  client_id: ${AEP_CLIENT_ID}
  client_secret: ${AEP_CLIENT_SECRET}
  org_id: ${AEP_ORG_ID:-ABC123@AdobeOrg}
sandboxes:
  - name: prod
    labels: {env: production}
    flows:
      - c9cef9cb-c934-4467-8ef9-cbc934546741
      - {id: 0a1b2c3d-0000-0000-0000-000000000001, labels: {team: crm}}
    discover: {enabled: true, kinds: [source], include: ["^CRM"], exclude: ["test"]}
    poll: {interval: 5m}
poll:
  interval: 90s
  jitter: 10%
  initial_lookback: 1d
metrics:
  duration_buckets: [30, 60, 1h]
state:
  path: null
"""

ENV = {"AEP_CLIENT_ID": "my-client", "AEP_CLIENT_SECRET": "s3cr3t-value"}


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load(text), env=ENV if env is None else env)
    return list(info.value.problems)


def test_valid_config_parses_into_frozen_typed_values() -> None:
    """The contract's example keys parse: env expansion with defaults, durations, percentages, labels, regexes."""
    config = parse_config(yaml.safe_load(VALID), env=ENV)
    assert config.adobe.client_id == "my-client"
    assert config.adobe.client_secret.reveal() == "s3cr3t-value"
    assert config.adobe.org_id == "ABC123@AdobeOrg"
    assert config.poll.interval == 90.0
    assert config.poll.jitter == pytest.approx(0.10)
    assert config.poll.initial_lookback == 86400.0
    prod = config.sandboxes[0]
    assert prod.interval == 300.0
    assert prod.labels_for("0a1b2c3d-0000-0000-0000-000000000001") == {"env": "production", "team": "crm"}
    assert prod.discover.accepts("CRM contacts") and not prod.discover.accepts("CRM test")
    assert config.metrics.duration_buckets == (30.0, 60.0, 3600.0)
    assert config.state.path is None
    with pytest.raises(AttributeError):
        config.poll = config.poll  # type: ignore[misc]


def test_secret_never_shows_in_repr_of_the_config() -> None:
    """The client secret is not in the repr of the config (so not in logs or tracebacks)."""
    config = parse_config(yaml.safe_load(VALID), env=ENV)
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.adobe)


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    """client_secret_file reads the secret from a file next to the config."""
    (tmp_path / "secret").write_text("from-file\n")
    text = VALID.replace("client_secret: ${AEP_CLIENT_SECRET}", "client_secret_file: secret")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(path, env=ENV).adobe.client_secret.reveal() == "from-file"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("interval: 90s", "interval: soon"), "poll.interval: 'soon' is not a duration"),
        (("jitter: 10%", "jitter: 150%"), "poll.jitter: must be between 0% and 100%"),
        (("initial_lookback: 1d", "initial_lookback: 1d\n  colour: blue"), "poll.colour: unknown key"),
        (("    poll: {interval: 5m}", "    poll: {interval: -5m}"), "sandboxes[0].poll.interval:"),
        (("name: prod", "name: Prod"), "sandboxes[0].name: 'Prod' is not a sandbox name"),
        (("labels: {env: production}", "labels: {sandbox: x}"), "sandboxes[0].labels.sandbox: reserved"),
        (("labels: {env: production}", "labels: {9bad: x}"), "sandboxes[0].labels.9bad: not a valid"),
        (('include: ["^CRM"]', 'include: ["(unclosed"]'), "sandboxes[0].discover.include[0]: invalid regular"),
        (("kinds: [source]", "kinds: [sauce]"), "sandboxes[0].discover.kinds[0]: 'sauce' is not source"),
        (("duration_buckets: [30, 60, 1h]", "duration_buckets: [60, 30]"), "metrics.duration_buckets: buckets"),
        (("path: null", "path: null\nshard: {index: 3, total: 2}"), "shard.index: must be below shard.total"),
        (("path: null", "path: null\nserver: {listen: nowhere}"), "server.listen: 'nowhere' is not host:port"),
        (("path: null", "path: null\nlog: {level: loud}"), "log.level: 'loud' is not"),
        (
            ("client_id: ${AEP_CLIENT_ID}", "client_id: ${AEP_MISSING_VAR}"),
            "adobe.client_id: environment variable AEP_MISSING_VAR is not set",
        ),
    ],
)
def test_each_kind_of_mistake_names_its_path(edit: tuple[str, str], expected: str) -> None:
    """Every kind of config mistake yields a message that starts with the path of the bad value."""
    text = VALID.replace(*edit)
    assert text != VALID
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in one file are all listed, not just the first."""
    text = (
        VALID.replace("interval: 90s", "interval: soon")
        .replace("jitter: 10%", "jitter: lots")
        .replace("name: prod", "name: PROD")
        .replace("kinds: [source]", "kinds: [x]")
    )
    found = problems_of(text)
    for path in ("poll.interval", "poll.jitter", "sandboxes[0].name", "sandboxes[0].discover.kinds[0]"):
        assert any(p.startswith(path) for p in found), (path, found)


def test_missing_sections_and_empty_sandboxes_are_problems() -> None:
    """No adobe section, and a sandbox with neither flows nor discovery, are errors with paths."""
    found = problems_of("sandboxes:\n  - name: prod\n")
    assert any(p.startswith("adobe:") for p in found)
    assert any(p.startswith("sandboxes[0]: lists no flows") for p in found)
    assert problems_of("just a string") == ["(top level): expected a mapping with adobe and sandboxes"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600), ("1d", 86400), ("250ms", 0.25), (30, 30)]
)
def test_durations_accept_the_documented_units(text: object, seconds: float) -> None:
    """Durations accept s, m, h, d (and ms, and bare seconds)."""
    assert parse_duration(text) == seconds


def test_check_config_exits_2_listing_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on a bad file exits with status 2 and prints each problem with its path."""
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace("interval: 90s", "interval: soon").replace("jitter: 10%", "jitter: 2"))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "poll.interval:" in err and "poll.jitter:" in err


def test_check_config_exits_0_on_the_shipped_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.example.yaml itself is valid (with its environment variables set)."""
    for key, val in {**ENV, "AEP_ORG_ID": "ABC@AdobeOrg"}.items():
        monkeypatch.setenv(key, val)
    assert main(["check-config", "--config", str(ROOT / "config.example.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out


def test_the_shipped_example_shows_the_defaults_of_its_sections() -> None:
    """config.example.yaml's metrics:, poll:, events:, alerts: and slo: values are the code's defaults, so the docs
    cannot drift."""
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config = parse_config(raw, env={**ENV, "AEP_ORG_ID": "ABC@AdobeOrg"}, base_dir=ROOT)
    assert config.metrics == MetricsConfig()
    assert config.poll == PollConfig()
    assert config.events == EventsConfig()
    assert config.alerts == AlertsConfig()
    assert config.slo == SloConfig()


def test_a_metrics_profile_sets_the_defaults_and_a_key_given_wins() -> None:
    """metrics.profile full serves every series (no sparse status, the 12 full buckets); a key set beside it wins;
    an unknown profile is a config error with its path."""

    def metrics(section: dict[str, object]) -> MetricsConfig:
        raw = yaml.safe_load(VALID)
        raw["metrics"] = section
        return parse_config(raw, env=ENV).metrics

    full = metrics({"profile": "full"})
    assert (full.profile, full.sparse_status, full.duration_buckets) == ("full", False, FULL_BUCKETS)
    mixed = metrics({"profile": "full", "sparse_status": True})
    assert (mixed.profile, mixed.sparse_status) == ("full", True)
    with pytest.raises(ConfigError, match=r"metrics\.profile"):
        metrics({"profile": "tiny"})


def test_check_config_warns_when_the_lookback_exceeds_adobes_run_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lookback over 90 days is valid but cannot be honoured: check-config says so, with the path, and exits 0."""
    for key, val in ENV.items():
        monkeypatch.setenv(key, val)
    path = tmp_path / "long.yaml"
    for lookback, warned in (("120d", True), ("90d", False)):
        path.write_text(VALID.replace("initial_lookback: 1d", f"initial_lookback: {lookback}"))
        assert main(["check-config", "--config", str(path)]) == 0
        err = capsys.readouterr().err
        assert ("poll.initial_lookback: 120d is longer than Adobe's 90-day run retention" in err) is warned, err


def test_check_config_warns_when_no_flow_is_in_a_paging_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a tier label of alerts.paging_tiers on any sandbox or flow, nothing about flows pages: check-config
    says so (exit 0); a sandbox labelled tier production, or a flow labelled with a configured tier, silences it."""
    for key, val in ENV.items():
        monkeypatch.setenv(key, val)
    path = tmp_path / "tiers.yaml"
    warning = (
        "warning: sandboxes[].labels.tier: no sandbox or flow has a tier of alerts.paging_tiers (production), so "
        "no flow alert will page, only open tickets; label the production sandboxes, e.g. labels: {tier: production}"
    )
    cases = (
        (VALID, True),
        (VALID.replace("labels: {env: production}", "labels: {env: production, tier: production}"), False),
        (
            VALID.replace("labels: {team: crm}", "labels: {team: crm, tier: gold}")
            + "alerts: {paging_tiers: [gold]}\n",
            False,
        ),
    )
    for text, warned in cases:
        path.write_text(text)
        assert main(["check-config", "--config", str(path)]) == 0
        err = capsys.readouterr().err
        assert (warning in err.splitlines()) is warned, err


def test_bad_yaml_and_missing_file_exit_2_through_the_real_command(tmp_path: Path) -> None:
    """The installed entry point (python -m exporter) exits 2 on unreadable or malformed config."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("adobe: [unclosed\n")
    for path in (bad, tmp_path / "absent.yaml"):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr


def test_events_settings_are_read_and_each_problem_named_with_its_path() -> None:
    """events: takes the journal URL, the wait, and a webhook with its own listener; a bad webhook path, a key
    base that is not a URL and an unknown key are errors, each with its path."""
    raw = yaml.safe_load(VALID)
    raw["events"] = {
        "journal_url": "https://events.example/journal/abc",
        "journal_wait": "2s",
        "webhook": {"listen": "127.0.0.1:9849", "path": "/hooks/aep"},
    }
    events = parse_config(raw, env=ENV).events
    assert (events.journal_url, events.journal_wait) == ("https://events.example/journal/abc", 2.0)
    assert events.webhook is not None
    assert (events.webhook.host, events.webhook.port, events.webhook.path) == ("127.0.0.1", 9849, "/hooks/aep")
    assert events.webhook.public_key_base_url == "https://static.adobeioevents.com"
    raw["events"] = {
        "journal_url": "events.example",
        "webhook": {"path": "/metrics", "public_key_base_url": "keys", "colour": "red"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=ENV)
    found = " | ".join(info.value.problems)
    for path in (
        "events.journal_url",
        "events.webhook.path",
        "events.webhook.public_key_base_url",
        "events.webhook.colour",
    ):
        assert path in found, (path, found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("adobe:\n\tclient_id: x\n", "line 2, column 1: a tab: YAML indents with spaces only"),
        ("adobe:\n  client_id: a: b\n", "line 2, column 15: a ':' where a value was expected"),
        ("adobe:\n  client_id x\n  org_id: y\n", "line 2: a key without its ':'"),
        ("adobe:\n    client_id: x\n  org_id: y\n", "line 3, column 3: this line's indentation does not match"),
        ('adobe: {client_id: "x}\n', "line 1, column 20: a quote or a bracket that is never closed"),
    ],
)
def test_yaml_mistakes_say_their_line_and_what_is_wrong_in_plain_words(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A YAML mistake names the line (the key's own line when a ':' is missing, not the next one) and what is
    wrong, in words a reader of the file understands."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: not valid YAML: {expected}"), info.value.problems


def test_an_unknown_key_suggests_the_nearest_known_one() -> None:
    """A misspelled key is an error that names the key it probably meant; one that resembles nothing names none."""
    found = problems_of(VALID.replace("jitter: 10%", "jiter: 10%").replace("path: null", "path: null\ncolour: x"))
    assert "poll.jiter: unknown key (did you mean jitter?)" in found
    assert "colour: unknown key" in found


def test_the_slo_section_reads_objectives_and_overrides_and_reports_each_problem_with_its_path() -> None:
    """slo: objectives as percentages or fractions, shares above 100 % allowed for the grace, overrides matched on
    any label (sandbox included); a 100 % objective, an unknown key and an override without match are refused."""
    raw = yaml.safe_load(VALID)
    raw["slo"] = {
        "window": "7d",
        "run_success": "99.5%",
        "freshness": 0.98,
        "late_grace": "300%",
        "overrides": [{"match": {"sandbox": "prod", "tier": "gold"}, "run_success": "90%"}],
    }
    slo = parse_config(raw, env=ENV).slo
    assert (slo.window, slo.run_success, slo.freshness, slo.late_grace) == (7 * 86400, 0.995, 0.98, 3.0)
    (override,) = slo.overrides
    assert (dict(override.match), override.run_success, override.freshness) == (
        {"sandbox": "prod", "tier": "gold"},
        0.9,
        None,
    )
    raw["slo"] = {"run_success": "100%", "overrides": [{"colour": "x"}, "gold"]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=ENV)
    assert sorted(info.value.problems) == sorted(
        [
            "slo.run_success: must be above 0% and below 100%, got '100%'",
            "slo.overrides[0].colour: unknown key",
            "slo.overrides[0].match: give at least one label and its value, e.g. {tier: production}",
            "slo.overrides[1]: expected a mapping, got str",
            "slo.overrides[1].match: give at least one label and its value, e.g. {tier: production}",
        ]
    )
