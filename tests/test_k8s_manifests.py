"""The Kubernetes manifests in deploy/k8s: every file validates offline against the schemas of a fixed
Kubernetes version (kubernetes-validate, strict: unknown fields are errors), the kustomization lists them all,
the Deployment keeps the promises of the runbook (resources, gRPC probes, drain, read-only models), and what a
production rollout needs is there: a disruption budget, CPU autoscaling, spreading across nodes, and no Secret
applied over the one the operators create."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ml_pipeline.config import ENV_VARS

pytestmark = pytest.mark.unit

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")  # applied by kustomize
ON_DEMAND = sorted(K8S.glob("ops/*.yaml"))  # operator tools, applied by hand
LOCAL = K8S / "local" / "kustomization.yaml"  # overlay for local clusters: the base plus a generated Secret


def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str, name: str) -> dict[str, Any]:
    """The one manifest of this kind and name."""
    found = [
        doc for path in MANIFESTS for doc in documents(path) if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    """The inference Deployment."""
    return resource("Deployment", "voxguard-ml-inference")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The inference container of the Deployment."""
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("path", MANIFESTS + ON_DEMAND, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in doc["metadata"], "manifests are namespace-agnostic"


def test_every_yaml_file_is_validated() -> None:
    assert sorted(K8S.rglob("*.yaml")) == sorted([*MANIFESTS, *ON_DEMAND, K8S / "kustomization.yaml", LOCAL])


def test_the_validator_rejects_a_misspelt_field(deployment: dict[str, Any]) -> None:
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and "namespace" not in kustomization
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_deployment_resources_and_rolling_update(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the count; apply must not reset it"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9091}
    service = resource("Service", "voxguard-ml-inference")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_readiness_uses_the_grpc_health_protocol_and_liveness_the_port(container: dict[str, Any]) -> None:
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["tcpSocket"] == {"port": 50051}


def test_termination_grace_covers_prestop_and_the_server_drain(deployment: dict[str, Any], container: dict) -> None:
    config = resource("ConfigMap", "voxguard-ml-config")["data"]
    drain = float(config["ML_SHUTDOWN_GRACE_SECONDS"])
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(prestop[1]) + drain + 1


def test_runs_non_root_with_read_only_files_and_models(deployment: dict[str, Any], container: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    registry_path = resource("ConfigMap", "voxguard-ml-config")["data"]["ML_MODEL_REGISTRY_PATH"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "voxguard-ml-registry", "readOnly": True}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] and registry_path.startswith(mount["mountPath"] + "/")
    resource("PersistentVolumeClaim", "voxguard-ml-registry")


def test_toolbox_writes_the_registry_at_the_servers_path() -> None:
    (toolbox,) = documents(K8S / "ops" / "toolbox.yaml")
    (mount,) = [m for m in toolbox["spec"]["containers"][0]["volumeMounts"] if m["name"] == "registry"]
    (volume,) = [v for v in toolbox["spec"]["volumes"] if v["name"] == "registry"]
    assert volume["persistentVolumeClaim"]["claimName"] == "voxguard-ml-registry" and not mount.get("readOnly")
    assert mount["mountPath"] == "/var/lib/voxguard"


def test_configuration_holds_known_variables_and_no_secret() -> None:
    known = {spec.name: spec for spec in ENV_VARS}
    config = resource("ConfigMap", "voxguard-ml-config")["data"]
    assert set(config) <= set(known), f"unknown variables: {set(config) - set(known)}"
    assert not [name for name in config if known[name].secret]
    for name, value in config.items():
        known[name].read({name: value})  # ConfigError when a value is outside its range
    assert not [doc for path in MANIFESTS for doc in documents(path) if doc["kind"] == "Secret"]


def test_secret_is_created_by_the_operators_not_applied_over_theirs() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secretGenerator" not in kustomization and not (K8S / "secret.yaml").exists()
    cronjob = resource("CronJob", "voxguard-ml-retrain")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "voxguard-ml-secrets"}} in container["envFrom"]
    runbook = (K8S.parent.parent / "docs" / "operations.md").read_text()
    assert "kubectl create secret generic voxguard-ml-secrets" in runbook


def test_local_overlay_generates_the_secret_from_a_file_kept_out_of_git() -> None:
    local = yaml.safe_load(LOCAL.read_text())
    assert local["resources"] == ["../"]
    (generator,) = local["secretGenerator"]
    assert generator["name"] == "voxguard-ml-secrets" and generator["options"]["disableNameSuffixHash"]
    assert generator["envs"] == ["secrets.env"]
    assert "secrets.env" in (LOCAL.parent / ".gitignore").read_text().split()
    example = (LOCAL.parent / "secrets.env.example").read_text().splitlines()
    keys = {line.split("=", 1)[0].lstrip("# ") for line in example if "=" in line}
    secret_names = {spec.name for spec in ENV_VARS if spec.secret}
    assert "YUGABYTE_PASSWORD" in keys and keys <= secret_names


def test_disruption_budget_keeps_all_but_one_pod(deployment: dict[str, Any]) -> None:
    pdb = resource("PodDisruptionBudget", "voxguard-ml-inference")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_autoscaling_on_cpu_within_sane_bounds(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    hpa = resource("HorizontalPodAutoscaler", "voxguard-ml-inference")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 3 <= hpa["minReplicas"] < hpa["maxReplicas"] <= 20
    pdb = resource("PodDisruptionBudget", "voxguard-ml-inference")["spec"]
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2, "a drain leaves at least two pods serving"
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 50 <= metric["resource"]["target"]["averageUtilization"] <= 80
    assert container["resources"]["requests"]["cpu"], "utilization is measured against the CPU request"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, "no flapping on a traffic dip"


def test_pods_spread_across_nodes(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spreads = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(spreads) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spreads.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
