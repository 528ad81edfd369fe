"""Deployment files: Kubernetes manifests render and validate, compose mounts exist, nothing drifts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.servers import binary

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "aep-flows.rules.yml"
K8S_VERSION = "1.30.0"
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Service", "StatefulSet", "Secret"}


def kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("kubectl not found: run the suite with `scripts/test`, which installs it")
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.mark.parametrize("overlay", ["", "sharded"])
def test_kustomize_renders_and_core_objects_validate(overlay: str) -> None:
    """kubectl kustomize renders the base and the sharded overlay; core objects pass the Kubernetes schemas."""
    docs = kustomize(DEPLOY / "kubernetes" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert pod["securityContext"]["runAsNonRoot"] is True
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"aep-flow-exporter-credentials"}
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    if overlay == "sharded":
        assert sts["spec"]["replicas"] == 3
        args = container["args"]
        assert args[args.index("--total-shards") + 1] == "3"
        assert args[args.index("--shard-index") + 1] == "$(SHARD_INDEX)"
        index_env = next(e for e in container["env"] if e["name"] == "SHARD_INDEX")
        assert "pod-index" in index_env["valueFrom"]["fieldRef"]["fieldPath"]


def test_prometheusrule_groups_equal_the_rules_file() -> None:
    """The PrometheusRule's groups are the rules file's groups, and regenerating it changes nothing."""
    docs = kustomize(DEPLOY / "kubernetes")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    sys.path.insert(0, str(DEPLOY / "kubernetes"))
    try:
        import generate_prometheusrule
    finally:
        sys.path.pop(0)
    committed = (DEPLOY / "kubernetes" / "base" / "prometheusrule.yaml").read_text()
    assert generate_prometheusrule.render() == committed, "run deploy/kubernetes/generate_prometheusrule.py"


def test_compose_file_parses_and_every_mounted_file_exists() -> None:
    """The compose stack has simulator, exporter, Prometheus, Alertmanager and Grafana; all its mounts exist."""
    compose_path = DEPLOY / "docker" / "docker-compose.yml"
    compose = yaml.safe_load(compose_path.read_text())
    services = compose["services"]
    assert {"simulator", "aep-flow-exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source in named:
                continue
            assert (compose_path.parent / source).exists(), f"{name}: {source}"
    build = services["simulator"]["build"]
    assert (compose_path.parent / build["context"] / build["dockerfile"]).is_file()
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["aep-flow-exporter:9847"]


def test_compose_exporter_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exporter config the compose stack mounts passes check-config."""
    from exporter.cli import main

    assert main(["check-config", "--config", str(DEPLOY / "docker" / "config.compose.yaml")]) == 0
    for key in ("AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_ORG_ID"):
        monkeypatch.setenv(key, "x")
    assert main(["check-config", "--config", str(DEPLOY / "kubernetes" / "base" / "config.yaml")]) == 0


def test_dockerfile_installs_the_built_wheel_non_root_with_a_config_following_health_check() -> None:
    """The Dockerfile builds the wheel in one stage and installs only it in another, as a non-root user; its
    health check is the `healthcheck` command (the configured port and TLS), reading the same config as run."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "python -m build --wheel" in text and "pip install --no-cache-dir /dist/*.whl" in text
    runtime = text[text.rindex("\nFROM ") :]
    assert "COPY exporter" not in runtime  # nothing from the checkout but the wheel
    user = next(line.split()[1] for line in text.splitlines() if line.startswith("USER "))
    assert not user.startswith(("0", "root"))
    assert 'CMD ["aep-flow-exporter", "healthcheck"]' in text and "AEP_FLOW_EXPORTER_CONFIG=" in text
    assert 'ENTRYPOINT ["aep-flow-exporter"]' in text


def test_compose_file_is_accepted_by_compose_v1() -> None:
    """Debian's docker-compose (v1) validates the compose file (`config` needs no Docker engine); it has no
    top-level name:, which v1 refuses and v2 does not need."""
    compose_path = DEPLOY / "docker" / "docker-compose.yml"
    assert "name" not in yaml.safe_load(compose_path.read_text())
    proc = subprocess.run(
        [binary("docker-compose"), "-f", str(compose_path), "-p", "aep-flow-exporter", "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=compose_path.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(yaml.safe_load(proc.stdout)["services"]) == set(yaml.safe_load(compose_path.read_text())["services"])


def test_systemd_unit_is_hardened_and_reloads_with_sighup() -> None:
    """The unit runs as a dynamic user with a state directory, strict sandboxing, and SIGHUP for reload."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / "aep-flow-exporter.service")
    service = parser["Service"]
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "aep-flow-exporter",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == value, key
    assert parser["Install"]["WantedBy"] == "multi-user.target"
