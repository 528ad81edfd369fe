"""The Prometheus alert and recording rules, written from the config (``aep-flow-exporter rules``), so that the
rules and the config they assume never drift. deploy/prometheus/rules/aep-flows.rules.yml is what this writes for
the default config (a test keeps them equal).

Who gets woken: paging is for production. A flow alert's ``severity`` is ``critical`` (the example Alertmanager
routes it to the pager) only when it may page and the flow's ``tier`` label (a static label, set per sandbox or
flow in ``sandboxes[].labels``) is one of ``alerts.paging_tiers``; else ``warning`` (a ticket). What may page: a
flow failing again and again (``AEPFlowFailing``), a late flow (``AEPFlowLate``), an SLO's fast burn
(slorules.py), a flow without a schedule and without a success for a day (``AEPFlowStale``), a sandbox the
exporter cannot poll, the exporter down. A single failed run of a flow that runs again on schedule is a ticket
(``AEPFlowRunFailed``).

Every alert says where to look: ``runbook_url`` is ``alerts.runbook_url`` (default: the runbook the exporter
serves at ``/runbook``) with the alert's anchor, and its description ends with a link to the Grafana dashboard
of the flow or sandbox (``alerts.dashboard_url``); failure alerts name the most frequent error code of the last
day. Pure: config in, YAML text out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from exporter.config import AlertsConfig, SloConfig
from exporter.slorules import FAST, SLOW, budget_rules, burn, sli_rules, target_rules

FLOW_KEY = "job, instance, sandbox, flow_id"
SANDBOX_KEY = "job, instance, sandbox"
NAMED = f"* on ({FLOW_KEY}) group_left (flow_name, tier) aep_flow_info"
"""Appended to a flow alert's expression: the flow's name and tier from aep_flow_info (a recording rule's
aggregation drops the tier the flow's own series carry)."""

FLOW_DASHBOARD = "aep-flow"
FLEET_DASHBOARD = "aep-fleet"
HEALTH_DASHBOARD = "aep-exporter"
DASHBOARD_VARS = {
    FLOW_DASHBOARD: "var-sandbox={{ $labels.sandbox | urlquery }}&var-flow={{ $labels.flow_id | urlquery }}",
    FLEET_DASHBOARD: "var-sandbox={{ $labels.sandbox | urlquery }}",
    HEALTH_DASHBOARD: "",
}
"""Grafana dashboard uid -> the query that selects the alert's sandbox and flow (grafana/dashboards/)."""

ERROR_CODE = (
    '{{ with printf "aep_flow_run_errors_total{sandbox=%q, flow_id=%q}" $labels.sandbox $labels.flow_id }}'
    '{{ with query (printf "topk(1, ((%s - %s offset 1d) or %s) > 0)" . . .) }} Most frequent error code of the '
    "last day: {{ (index . 0).Labels.code }}.{{ end }}{{ end }}"
)
"""A description's error-code sentence: Prometheus runs the query when it fills in the annotation. The day's
count is the counter less its value a day ago, or the whole counter when it is younger than a day (a code's
counter appears at its first run, so increase() would miss that run)."""

PAGE = "page"  # critical wherever it fires (the exporter itself)
TIERED = "tiered"  # critical in a paging tier, else warning
TICKET = "ticket"  # always warning


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    summary: str
    description: str
    severity: str = TICKET
    wait: str | None = None  # the rule's ``for``
    dashboard: str = FLOW_DASHBOARD
    error_code: bool = False  # the description names the most frequent error code


def _flow(expr: str) -> str:
    return f"{expr.rstrip()}\n{NAMED}\n"


FLOW = "dataflow {{ $labels.flow_name }} (flow id {{ $labels.flow_id }}) in sandbox {{ $labels.sandbox }}"
FLOW_ = FLOW.replace("dataflow", "Dataflow", 1)  # at the start of a sentence
TITLE = "AEP dataflow {{ $labels.flow_name }} ({{ $labels.sandbox }})"

RECORDING: tuple[tuple[str, str], ...] = (
    # Stale threshold of a flow without a known schedule (one-time flows): 1 day. A flow with one is watched by
    # AEPFlowLate and its freshness SLO instead (slorules.py).
    (
        "aep:flow_stale_threshold_seconds",
        f"max by ({FLOW_KEY}) (aep_flow_info * 0 + 86400)\nunless on ({FLOW_KEY}) aep:flow_expected_interval_seconds\n",
    ),
    (
        "aep:flow_last_success_age_seconds",
        f"time() - max by ({FLOW_KEY}) (aep_flow_last_success_timestamp_seconds)",
    ),
    (
        "aep:flow_last_run_failed_ratio",
        f"max by ({FLOW_KEY}) (aep_flow_last_run_failed_records)\n/\n"
        f"max by ({FLOW_KEY}) (aep_flow_last_run_input_records > 0)\n",
    ),
    ("aep:flow_runs:increase1h", f"sum by ({FLOW_KEY}, status) (increase(aep_flow_runs_total[1h]))"),
    (
        "aep:flow_runs:increase6h",
        f'sum by ({FLOW_KEY}, status) (increase(aep_flow_runs_total{{status=~"success|partial_success|failed"}}[6h]))',
    ),
    ("aep:sandbox_runs:increase1h", "sum by (sandbox, status) (increase(aep_flow_runs_total[1h]))"),
    ("aep:sandbox_output_records:rate5m", "sum by (sandbox) (rate(aep_flow_output_records_total[5m]))"),
    ("aep:sandbox_failed_records:rate5m", "sum by (sandbox) (rate(aep_flow_failed_records_total[5m]))"),
    (
        "aep:exporter_api_throttled:ratio_rate10m",
        'sum by (job, instance) (rate(aep_exporter_api_requests_total{code="429"}[10m]))\n/\n'
        "sum by (job, instance) (rate(aep_exporter_api_requests_total[10m]))\n",
    ),
    (
        "aep:sandbox_not_polled",
        "(time() - aep_exporter_last_poll_success_timestamp_seconds)\n"
        "  > on (job, instance, sandbox) (3 * aep_exporter_poll_interval_seconds)\n"
        "or on (job, instance, sandbox)\n"
        "((aep_exporter_polls_total >= 3) unless on (job, instance, sandbox) "
        "aep_exporter_last_poll_success_timestamp_seconds)\n",
    ),
)

FLOW_ALERTS = (
    Alert(
        "AEPFlowFailing",
        _flow(
            "(\n"
            '  (aep_flow_last_run_status{status="failed"} == 1)\n'
            f'  and on ({FLOW_KEY}) (aep:flow_runs:increase6h{{status="failed"}} > 1.5)\n'
            f'  unless on ({FLOW_KEY}) (aep:flow_runs:increase6h{{status=~"success|partial_success"}} > 0)\n'
            ")"
        ),
        f"{TITLE}: failing again and again",
        f"The newest run of {FLOW} failed, as did at least one more in the last 6 hours, and none succeeded.",
        TIERED,
        error_code=True,
    ),
    Alert(
        "AEPFlowRunFailed",
        _flow('(aep_flow_last_run_status{status="failed"} == 1)'),
        f"{TITLE}: newest run failed",
        f"The newest run of {FLOW} ended with status failed.",
        error_code=True,
    ),
    Alert(
        "AEPFlowStale",
        _flow(
            "(\n"
            f"  (aep:flow_last_success_age_seconds > on ({FLOW_KEY}) aep:flow_stale_threshold_seconds)\n"
            f"  and on ({FLOW_KEY}) (aep_flow_enabled == 1)\n"
            ")"
        ),
        f"{TITLE}: no successful run for {{{{ $value | humanizeDuration }}}}",
        f"{FLOW_} is enabled, has no schedule the exporter knows, and its last successful run ended "
        "{{ $value | humanizeDuration }} ago, more than a day.",
        TIERED,
        "5m",
        error_code=True,
    ),
    Alert(
        "AEPFlowRunStuck",
        _flow("(time() - aep_flow_oldest_in_progress_run_start_timestamp_seconds > 150 * 60)"),
        f"{TITLE}: a run has been in progress for {{{{ $value | humanizeDuration }}}}",
        f"A run of {FLOW} started {{{{ $value | humanizeDuration }}}} ago and has not completed (Adobe's own "
        "ingestion-delay alert uses 150 minutes).",
    ),
    Alert(
        "AEPFlowFailedRecordsHigh",
        _flow("(aep:flow_last_run_failed_ratio > 0.005)"),
        f"{TITLE}: {{{{ $value | humanizePercentage }}}} of records failed",
        f"The newest completed run of {FLOW} failed {{{{ $value | humanizePercentage }}}} of its input records "
        "(threshold 0.5 %, as Adobe's ingestion-failure alert).",
        error_code=True,
    ),
    Alert(
        "AEPFlowDisabled",
        _flow(f"(\n  (aep_flow_enabled == 0)\n  and on ({FLOW_KEY}) (max_over_time(aep_flow_enabled[1d]) == 1)\n)"),
        f"{TITLE} was enabled and is now disabled",
        f"{FLOW_} was enabled within the last day and is no longer: its runs have stopped.",
    ),
    Alert(
        "AEPFlowFailedIdentitiesHigh",
        _flow(
            "(\n"
            "  (\n"
            f'    sum by ({FLOW_KEY}) (increase(aep_flow_record_codes_total{{outcome="failed"}}[1h]))\n'
            "    /\n"
            "    (\n"
            f"      sum by ({FLOW_KEY}) (increase(aep_flow_created_records_total[1h]))\n"
            f"      + sum by ({FLOW_KEY}) (increase(aep_flow_updated_records_total[1h]))\n"
            f"      + sum by ({FLOW_KEY}) (increase(aep_flow_deleted_records_total[1h]))\n"
            f'      + sum by ({FLOW_KEY}) (increase(aep_flow_record_codes_total{{outcome="failed"}}[1h]))\n'
            "    )\n"
            "  ) > 0.05\n"
            ")"
        ),
        f"{TITLE}: {{{{ $value | humanizePercentage }}}} of identities failed to activate",
        f"In the last hour, {{{{ $value | humanizePercentage }}}} of the identities destination {FLOW} tried to "
        "activate failed (recordSummary.failedInfo), more than 5 %. See aep_flow_record_codes_total for the codes.",
        wait="15m",
    ),
    Alert(
        "AEPFlowExportsEnding",
        _flow(
            "(\n"
            "  ((aep_flow_schedule_end_timestamp_seconds - time() < 7 * 86400) > 0)\n"
            f"  and on ({FLOW_KEY}) (aep_flow_enabled == 1)\n"
            ")"
        ),
        f"{TITLE}: its exports stop in {{{{ $value | humanizeDuration }}}}",
        f"Every scheduled audience of destination {FLOW} ends within a week: its last export is in "
        "{{ $value | humanizeDuration }}. Extend the audiences' end dates if the exports must go on.",
        wait="10m",
    ),
    Alert(
        "AEPFlowVanished",
        "(\n"
        "  (max_over_time(aep_flow_enabled[1h]) == 1)\n"
        f"  unless on ({FLOW_KEY}) aep_flow_enabled\n"
        ")\n"
        f"* on ({FLOW_KEY}) group_left (flow_name, tier) last_over_time(aep_flow_info[1h])\n"
        "and on (job, instance) (aep_exporter_build_info == 1)\n",
        f"{TITLE} vanished",
        f"{FLOW_} was enabled within the last hour and is no longer reported: deleted, filtered out by "
        "discovery, or moved to another shard.",
        dashboard=FLEET_DASHBOARD,
    ),
    Alert(
        "AEPFlowUnreadable",
        f"(aep_exporter_flow_up == 0) {NAMED}\nor on ({FLOW_KEY})\n(aep_exporter_flow_up == 0)\n",
        "AEP dataflow {{ $labels.flow_id }} ({{ $labels.sandbox }}) cannot be read",
        f"The exporter could not read {FLOW} for 15 minutes: not found, hidden by an access label or a missing "
        "permission, or API errors (the exporter's flow_unreadable log line says which); its series keep their "
        "last values.",
        wait="15m",
    ),
)

EXPORTER_ALERTS = (
    Alert(
        "AEPExporterDown",
        'up{job="aep-flow-exporter"} == 0',
        "aep-flow-exporter {{ $labels.instance }} is down",
        "Prometheus could not scrape aep-flow-exporter at {{ $labels.instance }} for 5 minutes: no dataflow is "
        "monitored from there.",
        PAGE,
        "5m",
        HEALTH_DASHBOARD,
    ),
    Alert(
        "AEPExporterSandboxNotPolled",
        "aep:sandbox_not_polled",
        "aep-flow-exporter {{ $labels.instance }}: sandbox {{ $labels.sandbox }} not polled successfully for "
        "3 intervals",
        "The exporter at {{ $labels.instance }} has not completed a successful poll of sandbox "
        "{{ $labels.sandbox }} for three poll intervals: the dataflow metrics of that sandbox are stale.",
        TIERED,
        dashboard=HEALTH_DASHBOARD,
    ),
    Alert(
        "AEPExporterTokenFailing",
        "increase(aep_exporter_token_request_failures_total[15m]) >= 3",
        "aep-flow-exporter {{ $labels.instance }}: Adobe IMS token requests are failing",
        '{{ $value | printf "%.0f" }} IMS token requests failed in the last 15 minutes at {{ $labels.instance }}: '
        "once the current token expires, every poll fails (and AEPExporterSandboxNotPolled pages).",
        wait="5m",
        dashboard=HEALTH_DASHBOARD,
    ),
    Alert(
        "AEPExporterEventsJournalStalled",
        "time() - aep_exporter_journal_last_read_success_timestamp_seconds > 900",
        "aep-flow-exporter {{ $labels.instance }}: the Adobe I/O Events journal is not being read",
        "The exporter at {{ $labels.instance }} has not read its Adobe I/O Events journal for "
        "{{ $value | humanizeDuration }}: run outcomes reach Prometheus only at the next poll (counts stay "
        "right, freshness does not).",
        wait="5m",
        dashboard=HEALTH_DASHBOARD,
    ),
    Alert(
        "AEPExporterThrottled",
        "aep:exporter_api_throttled:ratio_rate10m > 0.1",
        "aep-flow-exporter {{ $labels.instance }}: {{ $value | humanizePercentage }} of Adobe API requests throttled",
        "Adobe's gateway answered 429 to {{ $value | humanizePercentage }} of the exporter's requests over "
        "10 minutes, for 15 minutes: polls slow down and may fail.",
        wait="15m",
        dashboard=HEALTH_DASHBOARD,
    ),
)

SLO_ALERTS = (
    Alert(
        "AEPFlowLate",
        _flow(
            "(\n"
            "  time() - (\n"
            "    aep_flow_next_run_expected_timestamp_seconds\n"
            f"    + on ({FLOW_KEY}) (\n"
            f"      aep:flow_expected_interval_seconds * on ({FLOW_KEY}) aep:flow_slo:late_grace\n"
            f"      + on ({SANDBOX_KEY}) group_left () max by ({SANDBOX_KEY}) (aep_exporter_poll_interval_seconds)\n"
            f"      or on ({FLOW_KEY}) aep:flow_expected_interval_seconds * on ({FLOW_KEY}) aep:flow_slo:late_grace\n"
            "    )\n"
            "  ) > 0\n"
            ")"
        ),
        f"{TITLE}: no run started {{{{ $value | humanizeDuration }}}} past its grace",
        f"{FLOW_} was due to start a run by its schedule (aep_flow_next_run_expected_timestamp_seconds) and none "
        "has started within its grace (slo.late_grace of its interval, and one poll interval: the exporter sees a "
        "run start at its next poll); it is {{ $value | humanizeDuration }} past that.",
        TIERED,
    ),
    Alert(
        "AEPFlowRunSuccessBudgetFastBurn",
        _flow(burn("aep:flow_run_errors:ratio_rate", "run_success", FAST, guard=True)),
        f"{TITLE}: its run-success error budget is burning fast",
        f"{FLOW_} fails {{{{ $value | humanizePercentage }}}} of its runs, at least 6 times the rate its "
        "run-success objective (slo.run_success) allows, over 1h and 5m or 6h and 30m, with at least three failed "
        "runs in the hour or four in the 6 hours: at this rate its budget is gone within days.",
        TIERED,
        error_code=True,
    ),
    Alert(
        "AEPFlowRunSuccessBudgetSlowBurn",
        _flow(burn("aep:flow_run_errors:ratio_rate", "run_success", SLOW)),
        f"{TITLE}: its run-success error budget is burning",
        f"{FLOW_} fails {{{{ $value | humanizePercentage }}}} of its runs, more than its run-success objective "
        "(slo.run_success) allows over 1d and 2h, or 3d and 6h: at this rate its budget will not last the period.",
        error_code=True,
    ),
    Alert(
        "AEPFlowFreshnessBudgetFastBurn",
        _flow(burn("aep:flow_stale:ratio_", "freshness", FAST)),
        f"{TITLE}: its data is stale, burning its freshness budget fast",
        f"The data of {FLOW} has been older than slo.freshness_max_age schedule intervals for "
        "{{ $value | humanizePercentage }} of the time, at least 6 times what its freshness objective "
        "(slo.freshness) allows, over 1h and 5m or 6h and 30m.",
        TIERED,
        error_code=True,
    ),
    Alert(
        "AEPFlowFreshnessBudgetSlowBurn",
        _flow(burn("aep:flow_stale:ratio_", "freshness", SLOW)),
        f"{TITLE}: its data is often stale, burning its freshness budget",
        f"The data of {FLOW} has been stale for {{{{ $value | humanizePercentage }}}} of the time, more than its "
        "freshness objective (slo.freshness) allows over 1d and 2h, or 3d and 6h.",
    ),
)

ALERTS = FLOW_ALERTS + SLO_ALERTS + EXPORTER_ALERTS

HEADER = """\
# Alerting and recording rules for aep-flow-exporter, written by `aep-flow-exporter rules` from the config's
# alerts: and slo: sections (this file: the defaults). Change the config and run the command again rather than editing.
# Flow alerts carry sandbox, flow_id, flow_name and the flows' static labels (tier among them), plus job and
# instance. severity is critical (page) only for alerts that may page, in a tier of alerts.paging_tiers.
# One group on purpose: rules of a group run in order, so each alert reads recording rules evaluated in the
# same round.
"""


def runbook_base(alerts: AlertsConfig) -> str:
    """Where the runbook is: ``alerts.runbook_url``, else the exporter's own page (the alert's instance)."""
    return alerts.runbook_url or "http://{{ $labels.instance }}/runbook"


def _severity(alert: Alert, alerts: AlertsConfig) -> str:
    if alert.severity == PAGE:
        return "critical"
    if alert.severity == TICKET:
        return "warning"
    tiers = "|".join(alerts.paging_tiers)  # plain words (config.words): nothing to escape
    return f'{{{{ if match "^(?:{tiers})$" $labels.tier }}}}critical{{{{ else }}}}warning{{{{ end }}}}'


def _rule(alert: Alert, alerts: AlertsConfig) -> list[dict[str, Any]]:
    link = f"{alerts.dashboard_url}/d/{alert.dashboard}/"
    if DASHBOARD_VARS[alert.dashboard]:
        link += "?" + DASHBOARD_VARS[alert.dashboard]
    description = alert.description + (ERROR_CODE if alert.error_code else "") + f" Dashboard: {link}"
    rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr}
    if alert.wait:
        rule["for"] = alert.wait
    annotations = {
        "summary": alert.summary,
        "description": description,
        "runbook_url": f"{runbook_base(alerts)}#{alert.name.lower()}",
    }
    if alert.name == "AEPExporterSandboxNotPolled":
        # A sandbox's tier is its flows' (the exporter's own series carry no static label): critical when one of
        # its flows is in a paging tier, else warning; a sandbox never polled has no flows yet, so it warns.
        tiers = "|".join(alerts.paging_tiers)
        paging = f'max by (job, instance, sandbox) (aep_flow_info{{tier=~"{tiers}"}})'
        return [
            {**rule, "expr": f"{alert.expr} and on (job, instance, sandbox) {paging}",
             "labels": {"severity": "critical"}, "annotations": annotations},
            {**rule, "expr": f"{alert.expr} unless on (job, instance, sandbox) {paging}",
             "labels": {"severity": "warning"}, "annotations": annotations},
        ]  # fmt: skip
    return [{**rule, "labels": {"severity": _severity(alert, alerts)}, "annotations": annotations}]


def rule_groups(alerts: AlertsConfig, slo: SloConfig) -> dict[str, Any]:
    """The rules file's content: one group, recording rules first (the SLO targets and SLIs before the rest, which
    read them), and the error budgets over ``slo.window`` in a group of their own, every 5 minutes (nothing alerts
    on them; a month of samples per evaluation is better read less often)."""
    rules: list[dict[str, Any]] = [*target_rules(slo), *sli_rules()]
    rules += [{"record": name, "expr": expr} for name, expr in RECORDING]
    for alert in ALERTS:
        rules.extend(_rule(alert, alerts))
    return {
        "groups": [
            {"name": "aep-flows", "rules": rules},
            {"name": "aep-flows-slo-budget", "interval": "5m", "rules": budget_rules(slo)},
        ]
    }


class _Dumper(yaml.SafeDumper):
    """Block style for the multi-line expressions, so the file reads like a hand-written one."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def render(alerts: AlertsConfig, slo: SloConfig) -> str:
    """The rules file as text."""
    groups = rule_groups(alerts, slo)
    return HEADER + yaml.dump(groups, Dumper=_Dumper, sort_keys=False, width=100_000, allow_unicode=True)
