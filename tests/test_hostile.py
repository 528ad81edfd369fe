"""Hostile input, property-based: arbitrary JSON into parsing and counting, arbitrary bad configs."""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli import main
from exporter.config import MetricsConfig
from exporter.counting import apply_runs, new_flow_state
from exporter.errors import PayloadError
from exporter.exposition import FlowExposition
from exporter.model import Run, parse_flow, parse_run
from exporter.values import Snapshot
from tests.helpers import parse_samples

EXAMPLES = 300

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
counts = st.one_of(st.integers(min_value=-5, max_value=10**7), st.just(-1), json_values)
statuses = (
    st.sampled_from(
        ["success", "failed", "partialSuccess", "inProgress", "Processing", "Success", "weird", "", "Cancelled"]
    )
    | json_values
)
summary = st.fixed_dictionaries(
    {},
    optional={
        "inputRecordCount": counts,
        "outputRecordCount": counts,
        "failedRecordCount": counts,
        "inputBytes": counts,
        "outputBytes": counts,
        "inputFileCount": counts,
        "failedFileCount": counts,
    },
)
metrics = st.fixed_dictionaries(
    {},
    optional={
        "durationSummary": st.fixed_dictionaries({}, optional={"startedAtUTC": counts, "completedAtUTC": counts})
        | json_values,
        "recordSummary": summary | json_values,
        "sizeSummary": summary | json_values,
        "fileSummary": summary | json_values,
        "statusSummary": st.fixed_dictionaries(
            {},
            optional={
                "status": statuses,
                "errors": st.lists(
                    st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values}), max_size=3
                )
                | json_values,
                "extensions": json_values,
            },
        )
        | json_values,
    },
)
activity = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "name": st.text(max_size=20) | json_values,
        "durationSummary": json_values,
        "statusSummary": json_values,
        "recordSummary": summary | json_values,
    },
)
run_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(min_size=1, max_size=8) | json_values,
            "flowId": st.just("flow-1") | json_values,
            "createdAt": counts,
            "metrics": metrics | json_values,
            "activities": st.lists(activity, max_size=3) | json_values,
        },
    )
    | json_values
)
flow_like = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(min_size=1, max_size=8) | json_values,
            "name": st.text(max_size=30) | json_values,
            "state": st.sampled_from(["enabled", "disabled"]) | json_values,
            "scheduleParams": st.fixed_dictionaries(
                {},
                optional={
                    "frequency": st.sampled_from(["minute", "hour", "day", "week", "once", "fortnight"]) | json_values,
                    "interval": counts,
                },
            )
            | json_values,
            "inheritedAttributes": json_values,
            "lastRunDetails": st.fixed_dictionaries(
                {}, optional={"id": json_values, "state": statuses, "startedAtUTC": counts}
            )
            | json_values,
        },
    )
    | json_values
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(run_like)
def test_run_parsing_raises_nothing_but_payload_error(payload: Any) -> None:
    """Any JSON shape or value given to the run parser yields a Run or PayloadError, never another exception."""
    try:
        run = parse_run(payload)
    except PayloadError:
        return
    for group in ("records", "bytes", "files"):
        for value in getattr(run.counts, group).values():
            assert value is None or (isinstance(value, int) and value >= 0)
    assert run.duration_seconds is None or run.duration_seconds >= 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(flow_like)
def test_flow_parsing_raises_nothing_but_payload_error(payload: Any) -> None:
    """Any JSON shape or value given to the flow parser yields a Flow or PayloadError, never another exception."""
    try:
        flow = parse_flow(payload)
    except PayloadError:
        return
    assert flow.kind in ("source", "destination", "unknown")
    interval = flow.schedule_interval_seconds
    assert interval is None or (math.isfinite(interval) and interval > 0)


def _parsed(batch: list[Any]) -> list[Run]:
    runs = []
    for payload in batch:
        with contextlib.suppress(PayloadError):
            runs.append(parse_run(payload))
    return runs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(run_like, max_size=6), min_size=1, max_size=4))
def test_counters_never_decrease_and_render_without_nan_or_negatives(batches: list[list[Any]]) -> None:
    """Folding arbitrary run batches: counters never go down, and rendered counts are never NaN or negative."""
    flow = parse_flow({"id": "flow-1", "name": 'a "flow"\\\nname', "state": "enabled"})
    state = new_flow_state(
        sandbox="prod", flow_id="flow-1", now_ms=10**12, initial_lookback=10**9, duration_buckets=(60.0, 600.0)
    )
    before: dict[str, float] = {}
    for batch in batches:
        state = apply_runs(
            state, flow, _parsed(batch), now_ms=10**12, metrics=MetricsConfig(max_error_codes_per_flow=3)
        ).state
        current = {f"runs.{k}": v for k, v in state.runs_total.items()}
        current |= {f"totals.{k}": v for k, v in state.totals.items()}
        current |= {f"codes.{k}": v for k, v in state.error_codes.items()}
        current["hist.count"] = state.durations.count
        current["hist.sum"] = state.durations.sum
        for key, value in before.items():
            assert current.get(key, 0) >= value, key
        before = current
        assert len([c for c in state.error_codes if c != "other"]) <= 3
    text = (
        FlowExposition(MetricsConfig(), openmetrics=False)
        .render(Snapshot(version=1, flows=(state,), sandboxes=()))
        .decode()
    )
    for (name, _labels), value in parse_samples(text).items():
        if name.endswith(("_total", "_count", "_sum", "_bucket", "_records", "_bytes", "_files")):
            assert not math.isnan(value) and value >= 0, (name, value)


VALID: dict[str, Any] = {
    "adobe": {"client_id": "id", "client_secret": "secret", "org_id": "ORG@AdobeOrg"},
    "sandboxes": [{"name": "prod", "discover": {"enabled": True}, "flows": ["c9cef9cb-c934-4467-8ef9-cbc934546741"]}],
    "poll": {
        "interval": "60s",
        "jitter": "10%",
        "timeout": "30s",
        "max_concurrency": 8,
        "requests_per_second": 10,
        "initial_lookback": "24h",
        "retries": 3,
    },
    "metrics": {
        "activities": True,
        "sparse_status": False,
        "duration_buckets": [30, 60],
        "max_error_codes_per_flow": 20,
        "max_flows_per_sandbox": 5000,
    },
    "shard": {"index": 0, "total": 1},
    "server": {"listen": "0.0.0.0:9847"},
    "log": {"level": "info", "format": "json"},
}
PATHS = [
    ("poll", "interval"),
    ("poll", "jitter"),
    ("poll", "timeout"),
    ("poll", "max_concurrency"),
    ("poll", "requests_per_second"),
    ("poll", "retries"),
    ("metrics", "duration_buckets"),
    ("metrics", "max_error_codes_per_flow"),
    ("metrics", "activities"),
    ("shard", "total"),
    ("server", "listen"),
    ("log", "level"),
    ("log", "format"),
    ("adobe", "ims_token_url"),
]
bad_values = st.one_of(
    st.just(-5),
    st.just("soon"),
    st.just([1, "x"]),
    st.just({"a": 1}),
    st.just("0"),
    st.just(""),
    st.just("-1h"),
    st.just("150%"),
    st.just("ftp://x"),
    st.just([]),
    st.text(alphabet="!@#%^&", min_size=1, max_size=4),
)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PATHS), bad_values, st.booleans())
def test_random_invalid_configs_exit_2_naming_the_path(path: tuple[str, str], bad: Any, unknown_key: bool) -> None:
    """A config with a bad value (or an unknown key) exits 2 and names the offending path."""
    config = yaml.safe_load(yaml.safe_dump(VALID))
    section, key = path
    if unknown_key:
        config[section][f"{key}_typo"] = bad
        expected = f"{section}.{key}_typo: unknown key"
    else:
        config[section][key] = bad
        expected = f"{section}.{key}"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "c.yaml"
        file.write_text(yaml.safe_dump(config))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["check-config", "--config", str(file)])
    if status == 0:
        # A few draws are legal values after all (for example "0" retries); those must parse cleanly.
        assert not unknown_key
        return
    assert status == 2
    assert expected in err.getvalue(), err.getvalue()
