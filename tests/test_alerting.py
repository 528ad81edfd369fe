"""Alert rules and Alertmanager config: static checks with promtool/amtool, and one alert all the way through."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestServer

from tests.servers import RULES, WebhookSink, alertmanager, binary, prometheus
from tests.simulation import make_config, make_exporter, make_world, start_sim

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


def test_rule_unit_tests_pass_fifty_times_in_a_row() -> None:
    """The rule tests are deterministic: 50 runs of promtool test rules all pass (recording rules and the alerts
    reading them share one group, evaluated in order)."""
    failures = []
    for attempt in range(50):
        proc = run(binary("promtool"), "test", "rules", *map(str, RULE_TESTS))
        if proc.returncode != 0:
            failures.append((attempt, proc.stdout[-400:]))
    assert not failures, f"{len(failures)} of 50 runs failed, e.g. {failures[0]}"


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
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for name, rule in alerts.items():
        assert name in fires and name in quiet, name
        assert {"severity"} <= set(rule["labels"]) and {"summary", "description", "runbook_url"} <= set(
            rule["annotations"]
        ), name
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and f"\n## {name}\n" in runbook, name
    assert len(alerts) >= 11


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


async def wait_for(sink: WebhookSink, status: str, flow_id: str, timeout: float = 60.0) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for receiver, payload in sink.received:
            for alert in payload["alerts"]:
                labels = alert["labels"]
                if (
                    alert["status"] == status
                    and labels.get("alertname") == "AEPFlowRunFailed"
                    and labels.get("flow_id") == flow_id
                ):
                    return receiver, alert
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {status} AEPFlowRunFailed for {flow_id} within {timeout}s; got {sink.received}")


async def test_failed_run_alert_reaches_the_receiver_and_resolves(tmp_path: Path) -> None:
    """A flow fails in the simulator; the pager receiver gets AEPFlowRunFailed with the flow's labels, then resolved."""
    world = make_world(sandboxes=("prod",))
    flow = next(f for f in world.flows["prod"].values() if f.kind == "source")
    handle, sim_server = await start_sim(world)
    exporter = make_exporter(make_config(handle.url, sandboxes=("prod",), interval=1.0))
    exp_server = TestServer(exporter.web_app(poll=True), host="127.0.0.1")
    await exp_server.start_server()
    try:
        async with (
            WebhookSink() as sink,
            alertmanager(tmp_path, test_config_for_test(sink)) as am_address,
            prometheus(tmp_path, str(exp_server.make_url("")).rstrip("/"), alertmanager=am_address),
        ):
            world.force_status(flow.id, "failed")
            flow.trigger_run(world.now_ms(), 1.0)
            receiver, alert = await wait_for(sink, "firing", flow.id)
            assert receiver == "pager"  # severity critical routes to the pager
            assert alert["labels"]["sandbox"] == "prod"
            assert alert["labels"]["flow_name"] == flow.name
            assert alert["labels"]["severity"] == "critical"
            assert flow.name in alert["annotations"]["summary"]
            assert alert["annotations"]["runbook_url"].endswith("#aepflowrunfailed")

            world.force_status(flow.id, "success")
            world.clock.advance(5)
            flow.trigger_run(world.now_ms(), 1.0)
            receiver, _resolved = await wait_for(sink, "resolved", flow.id)
            assert receiver == "pager"
    finally:
        await exp_server.close()
        await exporter.close()
        await sim_server.close()
