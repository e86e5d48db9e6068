"""What the deployment files promise, checked against the code they run: one beat, graceful stops longer than the
longest push, probes on routes the webhook server has, the image's user in every pod. The linters in
deploy/lint.sh check the files' syntax and schemas; these check that they fit this project."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from config.settings import Settings
from worker.catalog import CatalogClient
from worker.webhooks import create_app

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def longest_push_seconds() -> float:
    """A push's worst case with the default settings: the client's retry budget, one more request, one wait for
    the rate budget."""
    settings = Settings(_env_file=None)
    budget = inspect.signature(CatalogClient.__init__).parameters["max_total_time"].default
    return float(budget) + settings.catalog_timeout + settings.catalog_max_retry_after


def duration_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            documents[(document["kind"], document["metadata"]["name"])] = document
    return documents


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return services


def pod(manifests: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifests[("Deployment", name)]["spec"]["template"]["spec"]
    return spec


def routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The webhook server's routes, built from the deployment's own sources file as a pod would."""
    from config.settings import get_settings

    for name in ("ACME_SHOPIFY_TOKEN", "ACME_SHOPIFY_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "placeholder")
    monkeypatch.setenv("CATALOG_SYNC_CONFIG", str(DEPLOY / "kubernetes" / "catalog-sync.toml"))
    monkeypatch.setenv("CATALOG_SYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    get_settings.cache_clear()
    try:
        return {route.path for route in create_app().routes}  # type: ignore[attr-defined]
    finally:
        get_settings.cache_clear()


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_kubernetes_runs_exactly_one_beat_and_never_two_during_an_upgrade(manifests: dict[Any, Any]) -> None:
    beat = manifests[("Deployment", "catalog-sync-beat")]["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}


def test_workers_are_given_longer_to_stop_than_the_longest_push(
    manifests: dict[Any, Any], compose: dict[str, Any]
) -> None:
    longest = longest_push_seconds()
    assert pod(manifests, "catalog-sync-worker")["terminationGracePeriodSeconds"] > longest
    assert duration_seconds(compose["worker"]["stop_grace_period"]) > longest


@pytest.mark.usefixtures("clean_env")
def test_probes_use_the_webhook_servers_liveness_and_readiness_routes(
    manifests: dict[Any, Any], compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [container] = pod(manifests, "catalog-sync-webhooks")["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= routes(tmp_path, monkeypatch)
    assert any("/readyz" in part for part in compose["webhooks"]["healthcheck"]["test"])


def test_workers_are_checked_with_worker_check(manifests: dict[Any, Any], compose: dict[str, Any]) -> None:
    [container] = pod(manifests, "catalog-sync-worker")["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["catalog-sync", "worker", "--check"]
    assert compose["worker"]["healthcheck"]["test"] == ["CMD", "catalog-sync", "worker", "--check"]


def test_every_pod_runs_as_the_images_non_root_user(manifests: dict[Any, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+):\d+$", dockerfile, flags=re.MULTILINE)
    templates = [doc["spec"]["template"]["spec"] for doc in manifests.values() if "template" in doc.get("spec", {})]
    assert len(templates) == 4  # migrate, worker, beat, webhooks
    for spec in templates:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert str(spec["securityContext"]["runAsUser"]) == user


def test_the_image_runs_every_role_from_one_entrypoint_on_a_chosen_base() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["catalog-sync"]' in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", dockerfile, flags=re.MULTILINE)
    assert dockerfile.count("FROM ${BASE_IMAGE}") == 2


def test_compose_migrates_first_and_runs_one_beat(compose: dict[str, Any]) -> None:
    assert compose["migrate"]["command"] == ["db", "upgrade"]
    assert compose["migrate"]["restart"] == "no"
    for name in ("worker", "beat", "webhooks"):
        assert compose[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert compose["beat"]["deploy"]["replicas"] == 1
    assert "--appendonly" in compose["redis"]["command"]
    assert compose["flower"]["profiles"] == ["flower"]


def metric_names(node: Any) -> set[str]:
    """The metric names a PromQL expression selects."""
    if type(node).__name__ == "VectorSelector":
        return {node.name}
    names: set[str] = set()
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None:
            names |= metric_names(child)
    for argument in getattr(node, "args", None) or []:
        names |= metric_names(argument)
    return names


def test_every_alert_rule_parses_and_uses_only_metrics_the_project_exports() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    modules = ("webhooks.py", "source_metrics.py", "work_metrics.py")
    exported = "".join((DEPLOY.parent / "worker" / name).read_text() for name in modules)
    used: set[str] = set()
    for rule in rules:
        # Counters are exported with a `_total` suffix over the name they are declared with.
        used |= {name.removesuffix("_total") for name in metric_names(promql_parser.parse(rule["expr"]))}

    assert len(rules) >= 5
    assert used, "no metric selected by any rule"
    assert {name for name in used if f'"{name}"' not in exported} == set()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
