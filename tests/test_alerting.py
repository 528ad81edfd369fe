"""Alert rules and Alertmanager config: static checks with promtool/amtool, and one alert all the way through."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp.test_utils import TestServer

from exporter import metrics
from exporter.config import AlertsConfig, SloConfig
from exporter.rules import render as render_rules
from tests.servers import RULES, WebhookSink, alertmanager, binary, prometheus, query
from tests.simulation import Sim, make_config, make_exporter, make_world, start_sim

ROOT = Path(__file__).parent.parent
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yml"))


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, check=False)


def test_rules_pass_promtool_check_rules() -> None:
    """The shipped rules file is valid for promtool check rules."""
    proc = run(binary("promtool"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    """promtool test rules: each alert fires with its labels and annotations, and stays quiet when it should."""
    assert RULE_TESTS
    proc = run(binary("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass_ten_times_in_a_row() -> None:
    """The rule tests are deterministic: 10 runs of promtool test rules (two at a time) all pass (recording rules and
    the alerts reading them share one group, evaluated in order). The day-long scenarios run once, above."""
    cmd = [binary("promtool"), "test", "rules", str(ROOT / "tests" / "rules" / "aep-flows.test.yml")]
    failures = []
    for attempt in range(0, 10, 2):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        for proc in procs:
            out, _err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures.append((attempt, out[-400:]))
    assert not failures, f"{len(failures)} of 10 runs failed, e.g. {failures[0]}"


def test_recording_rules_come_before_the_alerts_of_their_group() -> None:
    """Every alert that reads a recording rule is in the same group, after it, so it reads this round's value."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        recorded: list[str] = []
        for rule in group["rules"]:
            if "record" in rule:
                recorded.append(rule["record"])
            else:
                assert all(r in recorded for r in _recorded_names(groups) if r in rule["expr"]), rule["alert"]


def _recorded_names(groups: list[dict[str, Any]]) -> list[str]:
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_runbook_section() -> None:
    """Each alert of the rules file appears in the unit tests with and without expected alerts, and in the runbook."""
    alerts = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    runbook = (ROOT / "exporter" / "runbook.md").read_text()
    for name, rule in alerts.items():
        assert name in fires and name in quiet, name
        assert {"severity"} <= set(rule["labels"]) and {"summary", "description", "runbook_url"} <= set(
            rule["annotations"]
        ), name
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and f"\n## {name}\n" in runbook, name
    assert len(alerts) >= 11


def rules_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`aep-flow-exporter rules ARGS` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "exporter", "rules", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_the_shipped_rules_are_what_the_rules_command_writes_for_the_defaults(tmp_path: Path) -> None:
    """deploy/prometheus/rules/aep-flows.rules.yml is `aep-flow-exporter rules` with no config: they cannot drift."""
    proc = rules_command(cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == RULES.read_text() == render_rules(AlertsConfig(), SloConfig())


def test_every_metric_the_rules_read_is_one_the_exporter_defines_or_a_rule_records() -> None:
    """Each aep_* name in the shipped rules is a family of metrics.py (as exposed: counters with _total, histograms
    with their suffixes) and each aep:* name is recorded by a rule of the file."""
    text = RULES.read_text()
    groups = yaml.safe_load(text)["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    exposed = set()
    for family in (*metrics.FAMILIES, *metrics.SELF_FAMILIES):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        exposed |= {family.name + suffix for suffix in suffixes}
    exprs = " ".join(r["expr"] for g in groups for r in g["rules"])
    used = set(re.findall(r"\b(aep_[a-z0-9_]+)", exprs))
    assert used - exposed == set()
    assert set(re.findall(r"\b(aep:[a-z0-9_:]+)", exprs)) - recorded == set()
    assert len(used) >= 20


def test_the_rules_follow_the_configs_alerts_section(tmp_path: Path) -> None:
    """alerts.runbook_url, dashboard_url and paging_tiers reach every alert of `rules --config`, and the result
    passes promtool check rules."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "adobe: {client_id: a, client_secret: b, org_id: c}\n"
        "sandboxes: [{name: prod, labels: {tier: live}, discover: {enabled: true}}]\n"
        "alerts:\n"
        "  runbook_url: https://wiki.example.test/aep/runbook\n"
        "  dashboard_url: https://grafana.example.test/\n"
        "  paging_tiers: [live, gold]\n"
    )
    proc = rules_command("--config", str(config))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "rules.yml"
    out.write_text(proc.stdout)
    check = run(binary("promtool"), "check", "rules", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = [r for r in yaml.safe_load(proc.stdout)["groups"][0]["rules"] if "alert" in r]
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.test/aep/runbook#{rule['alert'].lower()}"
        assert "Dashboard: https://grafana.example.test/d/aep-" in rule["annotations"]["description"]
    failing = next(r for r in alerts if r["alert"] == "AEPFlowFailing")
    assert (
        failing["labels"]["severity"]
        == '{{ if match "^(?:live|gold)$" $labels.tier }}critical{{ else }}warning{{ end }}'
    )
    assert {r["labels"]["severity"] for r in alerts if r["alert"] == "AEPFlowRunFailed"} == {"warning"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("[live, gold]", '["live prod"]').replace("https://wiki", "wiki"))
    proc = rules_command("--config", str(bad))
    assert proc.returncode == 2
    assert "alerts.runbook_url: 'wiki.example.test/aep/runbook' is not an http(s) URL" in proc.stderr
    assert "alerts.paging_tiers: not a plain word (letters, digits, _ and - only): 'live prod'" in proc.stderr


def test_slo_overrides_set_each_flows_objectives_first_match_first(tmp_path: Path) -> None:
    """slo: defaults and overrides reach the rules: promtool evaluates each flow's recorded objectives, the first
    matching override winning, a key an override leaves out keeping the default."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "adobe: {client_id: a, client_secret: b, org_id: c}\n"
        "sandboxes: [{name: prod, discover: {enabled: true}}]\n"
        "slo:\n"
        "  run_success: 99.5%\n"
        "  overrides:\n"
        "    - {match: {tier: development}, freshness: 95%, late_grace: 300%}\n"
        "    - {match: {sandbox: prod}, freshness: 99.9%, run_success: 98%}\n"
    )
    proc = rules_command("--config", str(config))
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "rules.yml").write_text(proc.stdout)
    base = 'job="j",instance="i",flow_id="f",kind="source",state="enabled",flow_name="F"'
    test = {
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'aep_flow_info{{{base},sandbox="prod",tier="development"}}', "values": "1x5"},
                    {"series": f'aep_flow_info{{{base},sandbox="prod",tier="production"}}', "values": "1x5"},
                    {"series": f'aep_flow_info{{{base},sandbox="dev"}}', "values": "1x5"},
                ],
                "promql_expr_test": [
                    {
                        "expr": f"aep:flow_slo:{name}",
                        "eval_time": "2m",
                        "exp_samples": [
                            {
                                "labels": f'aep:flow_slo:{name}{{job="j",instance="i",sandbox="{sb}",flow_id="f"}}',
                                "value": v,
                            }
                            for sb, v in values
                        ],
                    }
                    for name, values in (
                        ("freshness", [("prod", 0.95), ("dev", 0.99)]),  # dev-tier prod flow: the first override
                        ("run_success", [("prod", 0.98), ("dev", 0.995)]),
                        ("late_grace", [("prod", 3.0), ("dev", 0.25)]),
                    )
                ],
            }
        ],
    }
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test))
    check = run(binary("promtool"), "test", "rules", str(tmp_path / "t.yml"))
    assert "SUCCESS" in check.stdout, check.stdout + check.stderr


async def test_every_runbook_url_resolves_to_its_section_on_the_exporters_runbook_page(sim: Sim) -> None:
    """The default runbook_url of every alert, filled in with a live exporter's address, is a page that has the
    alert's anchor as a heading id."""
    exporter = make_exporter(make_config(sim.url))
    server = TestServer(exporter.web_app(poll=False), host="127.0.0.1")
    await server.start_server()
    instance = f"127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            for rule in (r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r):
                url = rule["annotations"]["runbook_url"].replace("{{ $labels.instance }}", instance)
                page, anchor = url.split("#", 1)
                async with session.get(page) as resp:
                    assert resp.status == 200, url
                    assert resp.content_type == "text/html"
                    assert f'<h2 id="{anchor}">{rule["alert"]}</h2>' in await resp.text(), url
    finally:
        await server.close()
        await exporter.close()


def test_alertmanager_and_prometheus_examples_are_valid() -> None:
    """amtool check-config accepts the Alertmanager example; promtool check config the Prometheus example."""
    proc = run(binary("amtool"), "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(binary("promtool"), "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_for_test(sink: WebhookSink) -> dict[str, Any]:
    """Not a test: the shipped Alertmanager config with receivers pointed at the sink and short timers."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(AM_CONFIG.read_text()))
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": sink.url(receiver["name"]), "send_resolved": True}]
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"})
    return config


test_config_for_test.__test__ = False  # type: ignore[attr-defined]


async def wait_for(
    sink: WebhookSink, status: str, flow_id: str, alertname: str, timeout: float = 60.0
) -> tuple[str, dict[str, Any]]:
    """The first notification of ``alertname`` for ``flow_id`` in ``status``: (receiver, the whole payload)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for receiver, payload in sink.received:
            for alert in payload["alerts"]:
                labels = alert["labels"]
                if (
                    alert["status"] == status
                    and labels.get("alertname") == alertname
                    and labels.get("flow_id") == flow_id
                ):
                    return receiver, payload
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {status} {alertname} for {flow_id} within {timeout}s; got {sink.received}")


async def scraped(prom: str, selector: str, timeout: float = 30.0) -> None:
    """Wait until Prometheus holds two samples of ``selector`` (so an increase after this is seen whole)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = (await query(prom, f"count_over_time({selector}[1m])"))["data"]["result"]
        if result and float(result[0]["value"][1]) >= 2:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus has no samples of {selector} within {timeout}s")


def title_of(payload: dict[str, Any], tmp: Path) -> str:
    """The notification title deploy/alertmanager/aep-flows.tmpl gives this webhook payload (amtool renders it)."""
    data = tmp / "payload.json"
    data.write_text(json.dumps(payload))
    proc = run(
        binary("amtool"),
        "template",
        "render",
        f"--template.glob={AM_CONFIG.parent / 'aep-flows.tmpl'}",
        f"--template.data={data}",
        '--template.text={{ template "aep.title" . }}',
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


async def test_a_failed_run_opens_a_ticket_and_repeated_failures_in_production_page(tmp_path: Path) -> None:
    """Through real Prometheus and Alertmanager with the shipped rules and routes: one failed run of a production
    flow reaches the ticket receiver (with its error code and dashboard link, the flow named in the title); a
    second failure in a row pages; the first success resolves both."""
    world = make_world(sandboxes=("prod",))
    flow = next(f for f in world.flows["prod"].values() if f.kind == "source")
    handle, sim_server = await start_sim(world)
    config = make_config(handle.url, sandboxes=("prod",), interval=1.0)
    config = dataclasses.replace(
        config, sandboxes=tuple(dataclasses.replace(s, labels={"tier": "production"}) for s in config.sandboxes)
    )
    exporter = make_exporter(config)
    exp_server = TestServer(exporter.web_app(poll=True), host="127.0.0.1")
    await exp_server.start_server()
    try:
        async with (
            WebhookSink() as sink,
            alertmanager(tmp_path, test_config_for_test(sink)) as am_address,
            prometheus(tmp_path, str(exp_server.make_url("")).rstrip("/"), alertmanager=am_address) as prom,
        ):
            await scraped(prom, f'aep_flow_runs_total{{flow_id="{flow.id}",status="failed"}}')  # the count before
            world.force_status(flow.id, "failed")
            flow.trigger_run(world.now_ms(), 1.0)
            receiver, payload = await wait_for(sink, "firing", flow.id, "AEPFlowRunFailed")
            assert receiver == "ticket"
            (alert,) = [a for a in payload["alerts"] if a["labels"]["flow_id"] == flow.id]
            assert (alert["labels"]["severity"], alert["labels"]["tier"]) == ("warning", "production")
            assert alert["labels"]["flow_name"] == flow.name
            assert "Most frequent error code of the last day: " in alert["annotations"]["description"]
            assert f"/d/aep-flow/?var-sandbox=prod&var-flow={flow.id}" in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"].endswith("/runbook#aepflowrunfailed")
            assert title_of(payload, tmp_path) == f"[FIRING:1] AEPFlowRunFailed in prod: {flow.name}"

            world.clock.advance(5)
            flow.trigger_run(world.now_ms(), 1.0)
            receiver, payload = await wait_for(sink, "firing", flow.id, "AEPFlowFailing")
            assert receiver == "pager"
            assert title_of(payload, tmp_path) == f"[FIRING:1] AEPFlowFailing in prod: {flow.name}"

            world.force_status(flow.id, "success")
            world.clock.advance(5)
            flow.trigger_run(world.now_ms(), 1.0)
            receiver, _resolved = await wait_for(sink, "resolved", flow.id, "AEPFlowFailing")
            assert receiver == "pager"
    finally:
        await exp_server.close()
        await exporter.close()
        await sim_server.close()
