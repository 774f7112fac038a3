"""Deployment files: compose validates with docker-compose, Kubernetes YAML against the API schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import require

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_config_validates() -> None:
    compose = require("docker-compose")
    run = subprocess.run([compose, "-f", str(DEPLOY / "compose.yaml"), "--profile", "chain", "--profile",
                          "local-exchange", "config"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load(run.stdout)["services"]
    assert {"kafka", "redis", "producer", "exchange", "chain", "worker-1", "worker-2", "retrainer", "page",
            "prometheus", "grafana"} <= services.keys()
    assert services["retrainer"]["command"] == ["retrain"]
    for name in ("worker-1", "worker-2"):
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_compose_mounts_files_that_exist() -> None:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in spec["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_kubernetes_manifests_match_the_schema() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("the Kubernetes schema check needs: pip install kubernetes-validate", pytrace=False)
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    kinds = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
            kinds.append((doc["kind"], doc["metadata"]["name"]))
    assert ("Deployment", "chaincast-worker") in kinds and ("Secret", "chaincast-node") in kinds
    workers = yaml.safe_load((DEPLOY / "k8s" / "workers.yaml").read_text())
    assert workers["spec"]["replicas"] == 2
