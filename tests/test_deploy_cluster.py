"""The Kubernetes manifests in deploy/: each document valid against the Kubernetes API schema, and coherent.

kubernetes-validate checks every document strictly (unknown fields are errors) against
the OpenAPI schema of a Kubernetes release it ships, offline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator import config as config_module

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.33.0"
ENV = {"CONTROL_PASSWORD": "c", "PG_PASSWORD": "x", "MYSQL_PASSWORD": "y", "REDIS_PASSWORD": "z",
       "ORCHESTRATOR_TOKEN": "t" * 32}


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def by_kind(name: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents(name)}


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("k8s*.yaml")))
def test_every_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    docs = documents(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_an_unknown_field() -> None:
    deployment = by_kind("k8s-cluster.yaml")["Deployment"]
    deployment["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _load_config(config_map: dict[str, Any], tmp_path: Path) -> config_module.Config:
    # The sets are the image's files (/etc/orchestrator/sets, from deploy/sets through Dockerfile.sets).
    text = config_map["data"]["config.json"].replace("/etc/orchestrator/sets", str(DEPLOY / "sets"))
    (tmp_path / "config.json").write_text(text)
    return config_module.load(tmp_path / "config.json", env=ENV)


def test_cluster_deployment_has_three_replicas_a_disruption_budget_probes_and_the_store_secret() -> None:
    kinds = by_kind("k8s-cluster.yaml")
    assert {"ConfigMap", "Secret", "Deployment", "PodDisruptionBudget", "Service"} <= set(kinds)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"][0] == "daemon" and "--shard" not in container["args"]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    text = kinds["ConfigMap"]["data"]["config.json"]
    assert set(re.findall(r"\$\{(\w+)", text)) <= set(kinds["Secret"]["stringData"])
    assert "CONTROL_PASSWORD" in kinds["Secret"]["stringData"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/etc/orchestrator/config"]  # config only


def test_the_sets_are_files_in_the_image_not_configmap_keys() -> None:
    dockerfile = (DEPLOY / "Dockerfile.sets").read_text()
    assert re.search(r"^COPY .*sets /etc/orchestrator/sets$", dockerfile, re.M)
    for name in ("k8s-cluster.yaml", "k8s-catchup-job.yaml"):
        config_map = by_kind(name)["ConfigMap"]
        assert list(config_map["data"]) == ["config.json"]
        assert '"directory": "/etc/orchestrator/sets"' in config_map["data"]["config.json"]


def test_catch_up_job_is_indexed_and_each_pod_takes_its_shard_from_the_completion_index(tmp_path: Path) -> None:
    kinds = by_kind("k8s-catchup-job.yaml")
    job = kinds["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    args = job["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["daemon", "/etc/orchestrator/config/config.json", "--once"]
    assert args[args.index("--shard") + 1] == f"auto/{job['completions']}"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    config = _load_config(kinds["ConfigMap"], tmp_path)
    assert set(config.sets) == {"app", "cache"} and all(spec.folder.is_dir() for spec in config.sets.values())


def test_the_cluster_config_loads_and_names_its_control_store(tmp_path: Path) -> None:
    config = _load_config(by_kind("k8s-cluster.yaml")["ConfigMap"], tmp_path)
    assert config.daemon.cluster is not None and config.daemon.cluster.lease == 30
    assert config.daemon.cluster.store in config.databases
    # the control store is not a migration target
    assert all(config.daemon.cluster.store not in spec.targets for spec in config.sets.values())


def test_compose_runs_three_replicas_of_one_program_on_one_control_store() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    replicas = [name for name in compose["services"] if name.startswith("orchestrator")]
    assert replicas == ["orchestrator", "orchestrator-2", "orchestrator-3"]
    services = compose["services"]
    assert len({tuple(services[n]["command"]) for n in replicas}) == 1
    assert len({tuple(services[n]["volumes"]) for n in replicas}) == 1
    assert len({services[n]["ports"][0] for n in replicas}) == 3  # one status page each
    assert "CREATE DATABASE orchestrator_control" in (DEPLOY / "initdb" / "control.sql").read_text()
    config = config_module.load(DEPLOY / "config.json", env=ENV)
    assert config.daemon.cluster is not None
    assert config.databases[config.daemon.cluster.store].dbname == "orchestrator_control"  # type: ignore[union-attr]
