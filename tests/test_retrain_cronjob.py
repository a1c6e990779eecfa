"""The retraining CronJob (deploy/k8s/retrain-cronjob.yaml): 02:00 in Lagos, `ml-pipeline retrain`, the shared
configuration, the registry volume writable, one run at a time, no retry of a failed run."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ml_pipeline.config import ENV_VARS

pytestmark = pytest.mark.unit

CRONJOB = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "retrain-cronjob.yaml"


def test_the_cronjob_runs_retrain_at_two_in_lagos_with_the_shared_config() -> None:
    cron = yaml.safe_load(CRONJOB.read_text())
    kubernetes_validate.validate(cron, "1.30.0", strict=True)
    spec = cron["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 2 * * *", "Africa/Lagos", "Forbid")
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ml-pipeline", "retrain"]
    sources = {(next(iter(s)), next(iter(s.values()))["name"]) for s in container["envFrom"]}
    assert sources == {("configMapRef", "voxguard-ml-config"), ("secretRef", "voxguard-ml-secrets")}
    known = {v.name for v in ENV_VARS}
    assert all(e["name"] in known for e in container["env"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registry"]["persistentVolumeClaim"] == {"claimName": "voxguard-ml-registry"}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "registry")
    assert mount["mountPath"] == "/var/lib/voxguard" and not mount.get("readOnly", False)
