"""deploy/: the Kubernetes manifests validate against a pinned Kubernetes version's schemas
(kubernetes-validate, strict: no unknown field), the KServe resources against KServe's CRD schemas
(vendored in tests/data/kserve), and both agree with the app: probe paths are real routes, the
arguments KServe passes are the ones app.launch takes, the grace period covers the drain."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app import create_app
from app.config import PROJECT_ROOT, Settings
from app.launch import kserve_arguments
from tests.doubles import FakeBackend

KUBERNETES = "1.31.0"
DEPLOY = PROJECT_ROOT / "deploy"
KSERVE_SCHEMAS = Path(__file__).parents[1] / "data" / "kserve"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_resources() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for doc in documents(path)]


def kserve_resources() -> list[dict]:
    return documents(DEPLOY / "kserve" / "kerasrv-runtime.yaml")


@pytest.mark.parametrize("resource", kubernetes_resources(), ids=lambda r: r["kind"])
def test_kubernetes_manifests_validate_strictly(resource):
    kubernetes_validate.validate(resource, KUBERNETES, strict=True)


def test_every_kind_a_scaled_service_needs_is_there():
    assert sorted(r["kind"] for r in kubernetes_resources()) == [
        "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize("resource", kserve_resources(), ids=lambda r: r["kind"])
def test_kserve_resources_validate_against_the_crds(resource):
    name = {"ServingRuntime": "servingruntimes", "InferenceService": "inferenceservices"}[resource["kind"]]
    crd = json.loads(gzip.decompress((KSERVE_SCHEMAS / f"{name}.schema.json.gz").read_bytes()))
    group, version = resource["apiVersion"].split("/")
    assert group == crd["group"]
    jsonschema.Draft7Validator(crd["versions"][version]).validate(resource)


def test_a_kserve_resource_that_breaks_the_crd_is_caught():
    runtime = next(r for r in kserve_resources() if r["kind"] == "ServingRuntime")
    crd = json.loads(gzip.decompress((KSERVE_SCHEMAS / "servingruntimes.schema.json.gz").read_bytes()))
    broken = {**runtime, "spec": {**runtime["spec"], "containers": "kserve-container"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(crd["versions"]["v1alpha1"]).validate(broken)


def container(kind: str) -> dict:
    if kind == "Deployment":
        deployment = next(r for r in kubernetes_resources() if r["kind"] == "Deployment")
        return deployment["spec"]["template"]["spec"]["containers"][0]
    runtime = next(r for r in kserve_resources() if r["kind"] == "ServingRuntime")
    return runtime["spec"]["containers"][0]


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_probes_and_settings_are_the_apps_own(kind):
    spec = container(kind)
    routes = {rule.rule for rule in create_app(Settings(), FakeBackend()).url_map.iter_rules()}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in spec:
            assert spec[probe]["httpGet"]["path"] in routes
    env = {item["name"]: item["value"] for item in spec.get("env", [])}
    if kind == "ServingRuntime":  # what KServe passes, with the model's name filled in
        env = kserve_arguments([a.replace("{{.Name}}", "digits") for a in spec["args"]], env)
        assert env["MODEL_PATH"] == "/mnt/models" and spec["ports"][0]["containerPort"] == int(env["PORT"])
    settings = Settings.from_env(env)  # every variable is one the server reads, with a valid value
    assert str(settings.runtime_dir) == next(m["mountPath"] for m in spec["volumeMounts"] if m["name"] == "runtime")
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_grace_period_covers_the_pause_and_the_drain():
    deployment = next(r for r in kubernetes_resources() if r["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = " ".join(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    pause = float(re.search(r"sleep\((\d+)\)", pre_stop)[1])
    assert pod["terminationGracePeriodSeconds"] >= pause + Settings().harakiri_s


def test_the_user_the_manifests_run_as_is_the_images():
    uid = int(re.search(r"useradd [^\\n]*--uid (\d+)", (PROJECT_ROOT / "Dockerfile").read_text())[1])
    deployment = next(r for r in kubernetes_resources() if r["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    assert container("ServingRuntime")["securityContext"]["runAsUser"] == uid
