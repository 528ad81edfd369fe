"""The Helm chart (deploy/helm/aep-flow-exporter), linted and rendered by Helm's own library (helm-python-sdk: Helm
v4's Go SDK through its C ABI; no helm binary here): every tested combination lints strictly and renders objects
that pass the Kubernetes schemas; its rules pass promtool; it renders what the kustomize base renders."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from exporter import __version__
from exporter.configfile import load_config
from tests.test_deploy import DEPLOY, K8S_VERSION, RULES, kustomize

CHART = DEPLOY / "helm" / "aep-flow-exporter"
DASHBOARDS = DEPLOY.parent / "grafana" / "dashboards"
VALIDATED = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "StatefulSet",
    "Secret",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Ingress",
}
CREDENTIAL = {"existingSecret": "aep-creds"}
EVERYTHING = {
    "credentials": CREDENTIAL,
    "shards": 3,
    "webhook": {"enabled": True, "ingress": {"enabled": True, "className": "nginx", "host": "events.example.com"}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True},
    "networkPolicy": {"enabled": True},
}
COMBINATIONS = {
    "defaults": {"credentials": CREDENTIAL},
    "three shards": {"credentials": CREDENTIAL, "shards": 3},
    "webhook": {"credentials": CREDENTIAL, "webhook": EVERYTHING["webhook"]},
    "everything on": EVERYTHING,
    "no persistence, a created secret": {
        "persistence": {"enabled": False},
        "credentials": {"clientId": "id", "clientSecret": "s3cret-value", "orgId": "ORG@AdobeOrg"},
    },
}


def render(values: dict[str, Any], name: str = "aep") -> list[dict[str, Any]]:
    """The chart's objects for these values, as ``helm template`` renders them (offline)."""
    chart = helm.Chart.load(CHART)
    try:
        rendered = chart.render(values, name=name, namespace="monitoring", is_install=True)
    finally:
        chart.close()
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def kind(docs: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == wanted]


def test_the_chart_follows_the_package_version_and_ships_the_rules_and_dashboards_unchanged() -> None:
    """appVersion is the exporter's version; the chart's rules file and dashboards are the shipped ones, byte for
    byte (deploy/helm/sync_files.py copies them)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert (CHART / "files" / "aep-flows.rules.yml").read_bytes() == RULES.read_bytes()
    shipped = {p.name: p.read_bytes() for p in DASHBOARDS.glob("*.json")}
    assert {p.name: p.read_bytes() for p in (CHART / "files" / "dashboards").glob("*.json")} == shipped


@pytest.mark.parametrize("values", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_the_chart_lints_strictly_and_renders_valid_objects(values: dict[str, Any]) -> None:
    """helm lint --strict has nothing above info, and every core object rendered passes the Kubernetes schemas."""
    report = helm.lint(CHART, values, strict=True, namespace="monitoring", kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(values)
    for doc in docs:
        if doc["kind"] in VALIDATED:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= {d["kind"] for d in docs}


def test_shards_are_pods_each_with_its_ordinal_as_shard_index_and_a_state_claim() -> None:
    """shards: 3 gives 3 replicas started in parallel, --total-shards 3 and the shard index from the pod-index
    label; each pod has its own state claim, probes, a restrictive security context and resources."""
    (sts,) = kind(render(COMBINATIONS["three shards"]), "StatefulSet")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    args = container["args"]
    assert args[args.index("--total-shards") + 1] == "3" and args[args.index("--shard-index") + 1] == "$(SHARD_INDEX)"
    index = next(e for e in container["env"] if e["name"] == "SHARD_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["limits"]["memory"]
    assert container["image"] == f"aep-flow-exporter:{__version__}"


def test_without_persistence_the_state_is_an_empty_dir_and_the_secret_is_never_in_the_config() -> None:
    """persistence off: an emptyDir named state, no claims; a created Secret holds the credential, and the client
    secret appears in no ConfigMap and in no pod spec (only a secretKeyRef)."""
    docs = render(COMBINATIONS["no persistence, a created secret"])
    (sts,) = kind(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "state", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]
    (secret,) = kind(docs, "Secret")
    assert secret["stringData"]["client_secret"] == "s3cret-value"
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "s3cret-value" not in yaml.safe_dump(doc)
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})} == {
        secret["metadata"]["name"]
    }


def test_without_any_credential_the_install_fails_saying_what_to_set() -> None:
    """No existingSecret and no clientSecret: rendering fails naming both ways."""
    with pytest.raises(helm.HelmRenderError, match=r"credentials\.existingSecret"):
        render({})


def test_the_rendered_config_is_one_the_exporter_accepts_with_the_chart_owned_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's config.yaml loads with the exporter's own config loader; state.path is on the state volume,
    the listeners on the container ports, and values.config's keys are kept."""
    for var in ("AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_ORG_ID"):
        monkeypatch.setenv(var, "x@AdobeOrg" if var == "AEP_ORG_ID" else "x")
    values = copy.deepcopy(EVERYTHING)
    values["config"] = {**yaml.safe_load((CHART / "values.yaml").read_text())["config"], "metrics": {"profile": "full"}}
    (config_map,) = [d for d in kind(render(values), "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    config = load_config(path)
    assert config.state.path == "/var/lib/aep-flow-exporter/state.db"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9847)  # noqa: S104 -- the pod's port
    assert config.events.webhook is not None and config.events.webhook.port == 9849
    assert config.metrics.profile == "full"
    assert [s.name for s in config.sandboxes] == ["prod"]


def test_the_prometheusrule_is_the_shipped_rules_and_passes_promtool(tmp_path: Path, promtool: str) -> None:
    """prometheusRule.enabled: its groups are the rules file's, and promtool check rules passes on them."""
    (rule,) = kind(render(EVERYTHING), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"], width=1_000_000))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: \d+ rules found", proc.stdout)


def test_dashboards_servicemonitor_webhook_and_network_policy_when_asked() -> None:
    """dashboards: one ConfigMap per dashboard, labelled for Grafana's sidecar, holding the shipped JSON;
    serviceMonitor: scrapes the metrics port at 15s with the given labels; webhook: a Service and an Ingress on
    the webhook port and path; networkPolicy: both ports in, DNS and HTTPS out."""
    docs = render(EVERYTHING)
    boards = [d for d in kind(docs, "ConfigMap") if "-dashboard-" in d["metadata"]["name"]]
    assert {name: json.loads(content) for b in boards for name, content in b["data"].items()} == {
        p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")
    }
    assert all(b["metadata"]["labels"]["grafana_dashboard"] == "1" for b in boards)
    (monitor,) = kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s", "scrapeTimeout": "14s"}]
    (ingress,) = kind(docs, "Ingress")
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/adobe-events" and path["backend"]["service"]["port"]["name"] == "webhook"
    services = {s["metadata"]["name"]: s for s in kind(docs, "Service")}
    assert services["aep-aep-flow-exporter-webhook"]["spec"]["ports"][0]["port"] == 9849
    (policy,) = kind(docs, "NetworkPolicy")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["metrics", "webhook"]
    assert {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]} == {53, 443}


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """An object without what only the packaging adds: labels, selectors' label sets, annotations (the chart's
    config checksum), imagePullPolicy, kustomize's ConfigMap name hash; keys in one order."""
    doc = copy.deepcopy(doc)
    meta = doc["metadata"]
    meta.pop("labels", None)
    meta.pop("annotations", None)
    meta["name"] = re.sub(r"-config-[a-z0-9]{10}$", "-config", meta["name"])
    spec = doc.get("spec", {})
    spec.pop("selector", None)
    for claim in spec.get("volumeClaimTemplates", []):
        claim["metadata"].pop("labels", None)
    template = spec.get("template")
    if template:
        template.pop("metadata", None)
        pod = template["spec"]
        for container in pod["containers"]:
            container.pop("imagePullPolicy", None)
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", volume["configMap"]["name"])
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
    return doc


@pytest.mark.parametrize(("overlay", "shards"), [("", 1), ("sharded", 3)], ids=["base", "sharded"])
def test_the_chart_and_the_kustomize_recipe_render_the_same_core_objects(overlay: str, shards: int) -> None:
    """For the same settings (the base's name, config, image tag and Secret, no disruption budget), the chart and
    kubectl kustomize render the same StatefulSet, Services, ConfigMap and ServiceAccount, but for labels."""
    base_config = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "config.yaml").read_text())
    values = {
        "fullnameOverride": "aep-flow-exporter",
        "shards": shards,
        "config": base_config,
        "credentials": {"existingSecret": "aep-flow-exporter-credentials"},
        "podDisruptionBudget": {"enabled": False},
    }
    core = {"StatefulSet", "Service", "ConfigMap", "ServiceAccount"}
    chart = sorted((_comparable(d) for d in render(values) if d["kind"] in core), key=lambda d: (d["kind"], str(d)))
    recipe = kustomize(DEPLOY / "kubernetes" / overlay)
    kustomized = sorted((_comparable(d) for d in recipe if d["kind"] in core), key=lambda d: (d["kind"], str(d)))
    assert chart == kustomized


def test_every_value_is_documented_and_the_notes_say_how_to_reach_the_exporter() -> None:
    """Each key of values.yaml has a comment above or beside it (in config:, documented by config.example.yaml,
    and in Kubernetes' own resources and security contexts, the block's comment does); NOTES.txt gives the
    port-forward to the landing page and the credential check."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        key = re.match(r"^( *)([A-Za-z][\w]*):", line)
        if not key or (line.startswith("  ") and _inside(lines, i, ("config", *KUBERNETES_BLOCKS))):
            continue
        if "#" not in line and not lines[i - 1].lstrip().startswith("#"):
            undocumented.append(line.strip())
    assert undocumented == []
    chart = helm.Chart.load(CHART)
    try:
        notes = chart.render(COMBINATIONS["defaults"], name="aep", namespace="monitoring")[
            "aep-flow-exporter/templates/NOTES.txt"
        ]
    finally:
        chart.close()
    assert "kubectl -n monitoring port-forward pod/aep-aep-flow-exporter-0 9847" in notes
    assert "check-config --online --config /etc/aep-flow-exporter/config.yaml" in notes


KUBERNETES_BLOCKS = ("resources", "podSecurityContext", "securityContext")


def _inside(lines: list[str], index: int, tops: tuple[str, ...]) -> bool:
    """Whether line ``index`` is nested under one of the top-level keys ``tops``."""
    for line in reversed(lines[:index]):
        if line and not line.startswith((" ", "#")):
            return line.startswith(tuple(f"{top}:" for top in tops))
    return False
