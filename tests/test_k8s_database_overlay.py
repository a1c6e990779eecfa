"""The overlay deploy/overlays/database-registry: deploy/k8s with the registry in the database. Rendered by
kustomize (kubectl kustomize, offline), every document validates against the Kubernetes schemas (strict), no
volume claim is left, inference pods mount no registry volume, and the registry DSN is valid and password-free."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ml_pipeline.config import ENV_VARS
from ml_pipeline.data.database import has_own_password
from ml_pipeline.model_registry import is_database_location

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "deploy" / "overlays" / "database-registry"
KUBERNETES_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The overlay as kustomize renders it (kubectl's built-in kustomize; no cluster is contacted)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl missing: it renders the kustomize overlay")
        pytest.skip("kubectl missing: it renders the kustomize overlay")
    text = subprocess.run([kubectl, "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def test_every_rendered_document_validates(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in doc["metadata"]


def test_no_volume_claim_and_servers_mount_no_registry_volume(rendered: list[dict[str, Any]]) -> None:
    found = kinds(rendered)
    assert not [name for name in found if name.startswith("PersistentVolumeClaim/")]
    assert "persistentVolumeClaim" not in yaml.safe_dump(rendered)
    pod = found["Deployment/voxguard-ml-inference"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/voxguard/tls", "/tmp"}
    assert all("secret" in v or "emptyDir" in v for v in pod["volumes"])
    password = {e["name"]: e for e in container["env"]}["YUGABYTE_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "voxguard-ml-secrets", "key": "YUGABYTE_PASSWORD"}
    assert {"Deployment/voxguard-ml-inference", "CronJob/voxguard-ml-retrain", "Service/voxguard-ml-inference"} <= set(
        found
    )


def test_the_registry_is_a_password_free_dsn_the_configuration_accepts(rendered: list[dict[str, Any]]) -> None:
    config = kinds(rendered)["ConfigMap/voxguard-ml-config"]["data"]
    dsn = config["ML_MODEL_REGISTRY_PATH"]
    assert is_database_location(dsn) and not has_own_password(dsn)
    known = {spec.name: spec for spec in ENV_VARS}
    for name, value in config.items():
        known[name].read({name: value})


def test_the_toolbox_of_the_overlay_needs_no_volume_claim() -> None:
    (toolbox,) = [doc for doc in yaml.safe_load_all((OVERLAY / "ops" / "toolbox.yaml").read_text()) if doc]
    kubernetes_validate.validate(toolbox, KUBERNETES_VERSION, strict=True)
    assert all("emptyDir" in volume for volume in toolbox["spec"]["volumes"])
    (container,) = toolbox["spec"]["containers"]
    assert {"configMapRef": {"name": "voxguard-ml-config"}} in container["envFrom"]
    assert {"secretRef": {"name": "voxguard-ml-secrets"}} in container["envFrom"]
