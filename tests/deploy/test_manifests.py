"""Deployment files: compose validates with docker-compose, Kubernetes YAML against the API schema."""

from __future__ import annotations

import os
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
    assert {"kafka", "redis", "bootstrap", "producer", "exchange", "chain", "worker-1", "worker-2", "retrainer",
            "api", "prometheus", "alertmanager", "grafana"} <= services.keys()
    assert services["retrainer"]["command"] == ["retrain"]
    for name in ("worker-1", "worker-2", "retrainer"):
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert services[name]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert services["bootstrap"]["command"] == ["bootstrap"] and services["bootstrap"]["restart"] == "no"
    exchange = services["exchange"]["command"]
    for path in exchange[exchange.index("--data") + 1::2]:  # the bundled files the image carries
        assert (DEPLOY / path.removeprefix("/app/deploy/")).is_file(), path
    assert services["api"]["environment"]["CHAINCAST_HEALTH_URL"].endswith("/healthz")
    assert services["worker-1"]["image"] == "chaincast:0.1.0"  # CHAINCAST_IMAGE / CHAINCAST_TAG override it


def test_compose_image_is_a_parameter() -> None:
    compose = require("docker-compose")
    run = subprocess.run([compose, "-f", str(DEPLOY / "compose.yaml"), "config"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "CHAINCAST_IMAGE": "registry.example.com/team/chaincast",
                                          "CHAINCAST_TAG": "1.2.3"})
    assert run.returncode == 0, run.stderr
    assert yaml.safe_load(run.stdout)["services"]["worker-1"]["image"] == "registry.example.com/team/chaincast:1.2.3"


def test_dockerfile_installs_dependencies_before_the_code_and_runs_as_non_root() -> None:
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln and not ln.startswith("#")]
    copy_code = next(i for i, ln in enumerate(lines) if ln.startswith("COPY stream"))
    deps = next(i for i, ln in enumerate(lines) if "pip install -r /tmp/requirements.txt" in ln)
    assert deps < copy_code
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert [ln for ln in lines if ln.startswith("USER")] == ["USER 10001"]
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"tests", ".git", "**/__pycache__", "deploy/hardhat/node_modules"} <= set(ignored)


def test_compose_mounts_files_that_exist() -> None:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in spec["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def manifests(directory: Path) -> list[dict]:
    """Every document a kustomization applies (its resources, overlays' bases included)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        target = (directory / name).resolve()
        docs += manifests(target) if target.is_dir() else list(yaml.safe_load_all(target.read_text()))
    return docs


def test_kubernetes_manifests_match_the_schema() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("the Kubernetes schema check needs: pip install kubernetes-validate", pytrace=False)
    docs = manifests(DEPLOY / "k8s" / "chain")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert ("Deployment", "chaincast-worker") in kinds and ("Job", "chaincast-bootstrap") in kinds
    assert ("Deployment", "chaincast-producer-chain") in kinds and ("Deployment", "chaincast-api") in kinds
    assert {n for k, n in kinds if k == "PodDisruptionBudget"} == {"chaincast-worker", "chaincast-api"}
    assert not [n for k, n in kinds if k == "Secret"]  # secrets are created out of band, never overwritten
    base = [(d["kind"], d["metadata"]["name"]) for d in manifests(DEPLOY / "k8s")]
    assert ("Deployment", "chaincast-producer-chain") not in base  # the chain is optional
    workers = next(d for d in docs if d["metadata"]["name"] == "chaincast-worker" and d["kind"] == "Deployment")
    assert workers["spec"]["replicas"] == 2


def test_every_pod_is_locked_down_and_probed() -> None:
    for doc in manifests(DEPLOY / "k8s" / "chain"):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"]
        if doc["kind"] == "Deployment":
            main = pod["containers"][0]
            assert "livenessProbe" in main and "readinessProbe" in main, doc["metadata"]["name"]
    workers = yaml.safe_load((DEPLOY / "k8s" / "workers.yaml").read_text())
    init = workers["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][:2] == ["bootstrap", "--wait"]


def test_kustomization_names_a_registry_image() -> None:
    images = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["images"]
    assert images[0]["name"] == "chaincast" and "/" in images[0]["newName"] and images[0]["newTag"] != "latest"
