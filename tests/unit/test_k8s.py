"""The Kubernetes manifests and forge workflows: rendered with sample tags, every object valid
against the Kubernetes schemas, and the invariants a reviewer checks by eye held by tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from data_contracts.artifacts import write_champion_pointer
from flows.cli import main as cli
from flows.core.settings import Settings
from flows.serving import kubernetes as k8s

ROOT = Path(__file__).resolve().parents[2]
VALUES = k8s.SAMPLE_VALUES


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return k8s.render_manifests(VALUES)


@pytest.fixture(scope="module")
def job_template() -> dict:
    return k8s.render_job_template(VALUES)


def _one(documents: list[dict], kind: str, name: str) -> dict:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _pod_specs(documents: list[dict], job_template: dict) -> dict[str, dict]:
    specs = {
        k8s.object_name(d): d["spec"]["template"]["spec"]
        for d in documents
        if d["kind"] == "Deployment"
    }
    specs["Job/flow-run"] = k8s.flow_run_job(job_template)["spec"]["template"]["spec"]
    return specs


# --------------------------------------------------------------------------- schemas


def test_every_object_is_valid_against_the_kubernetes_schemas(documents):
    kinds = {d["kind"] for d in documents}
    assert {
        "Namespace",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    } <= kinds
    assert k8s.schema_problems(documents) == []


def test_the_schema_check_refuses_an_unknown_field_and_a_wrong_type(documents):
    service = json.loads(json.dumps(_one(documents, "Service", "fraud-detector")))
    service["spec"]["selectr"] = {}
    hpa = json.loads(json.dumps(_one(documents, "HorizontalPodAutoscaler", "fraud-detector")))
    hpa["spec"]["minReplicas"] = "two"
    problems = k8s.schema_problems([service, hpa])
    assert len(problems) == 2
    assert problems[0].startswith("Service/fraud-detector:") and "selectr" in problems[0]
    assert problems[1].startswith("HorizontalPodAutoscaler/fraud-detector:")


def test_objects_come_in_apply_order(documents):
    kinds = [d["kind"] for d in documents]
    assert kinds[0] == "Namespace"
    assert kinds.index("PersistentVolumeClaim") < kinds.index("Deployment")
    assert kinds.index("ConfigMap") < kinds.index("Deployment")
    assert kinds.index("Deployment") < kinds.index("HorizontalPodAutoscaler")


# --------------------------------------------------------------------------- the work pool


def test_the_work_pool_template_is_accepted_by_prefect_and_makes_a_valid_job(job_template):
    assert k8s.work_pool_problems(job_template) == []
    job = k8s.flow_run_job(job_template, {"env": {"FRAUD_RUN": "1"}, "name": "release-1"})
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == VALUES.pipeline_image
    assert {"name": "FRAUD_RUN", "value": "1"} in container["env"]
    assert job["metadata"]["namespace"] == VALUES.namespace
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "fraud-flow-run"
    assert k8s.schema_problems([k8s.without_prefect_pod_fields(job)]) == []


def test_deployment_job_variables_override_the_pool_defaults(job_template):
    job = k8s.flow_run_job(job_template, {"image": "other:1", "memory_limit": "16Gi"})
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "other:1"
    assert container["resources"]["limits"]["memory"] == "16Gi"


def test_a_template_placeholder_without_a_variable_is_refused(job_template):
    broken = json.loads(json.dumps(job_template))
    broken["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    problems = k8s.work_pool_problems(broken)
    assert problems and "variables schema" in problems[0]


def test_flow_runs_share_the_inference_log_claim_with_the_bento(documents, job_template):
    claim = _one(documents, "PersistentVolumeClaim", "fraud-inference-log")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    config = _one(documents, "ConfigMap", "fraud-pipeline")["data"]
    log_dir = config["FRAUD_INFERENCE_LOG_DIR"]
    for name, pod in _pod_specs(documents, job_template).items():
        if name == "Deployment/prefect-worker":
            continue
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert claims.get(mounts.get(log_dir)) == "fraud-inference-log", name


# --------------------------------------------------------------------------- serving


def test_bento_probes_hit_bentoml_health_routes_on_the_serving_port(documents):
    pod = _one(documents, "Deployment", "fraud-detector")["spec"]["template"]["spec"]
    (bento,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in bento["ports"]}
    env = {e["name"]: e["value"] for e in bento["env"]}
    assert ports["http"] == int(env["BENTOML_PORT"]) == 3000
    assert bento["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert bento["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert bento["startupProbe"]["httpGet"]["path"] == "/livez"
    assert bento["image"] == VALUES.bento_image


def test_the_bento_writes_only_to_mounted_volumes(documents):
    pod = _one(documents, "Deployment", "fraud-detector")["spec"]["template"]["spec"]
    (bento,) = pod["containers"]
    assert bento["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in bento["env"]}
    mounts = [m["mountPath"] for m in bento["volumeMounts"]]
    # BentoML's home (store folders, Prometheus multiprocess files) and the inference log
    for path in (env["BENTOML_HOME"], env["FRAUD_INFERENCE_LOG_DIR"]):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path
    assert "/tmp" in mounts  # worker sockets
    # the bento image's user (bento/Dockerfile.template runs it as uid 1034)
    assert pod["securityContext"]["runAsUser"] == 1034


def test_service_pdb_and_hpa_point_at_the_bento_pods(documents):
    deployment = _one(documents, "Deployment", "fraud-detector")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = _one(documents, "Service", "fraud-detector")
    pdb = _one(documents, "PodDisruptionBudget", "fraud-detector")
    assert service["spec"]["selector"] == selector
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    port_names = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    target = _one(documents, "HorizontalPodAutoscaler", "fraud-detector")["spec"]
    assert target["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert target["minReplicas"] > pdb["spec"]["minAvailable"]  # a drain can always proceed
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0  # the old version serves until the new one is ready


# --------------------------------------------------------------------------- every pod


def test_every_pod_runs_non_root_with_limits_and_no_privilege(documents, job_template):
    for name, pod in _pod_specs(documents, job_template).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, name


def test_the_worker_may_manage_jobs_in_its_namespace_only(documents):
    pod = _one(documents, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "prefect-worker"
    (worker,) = pod["containers"]
    assert worker["image"] == VALUES.pipeline_image
    args = worker["args"]
    assert args[args.index("--pool") + 1] == VALUES.work_pool
    assert args[args.index("--type") + 1] == "kubernetes"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    role = _one(documents, "Role", "prefect-worker")
    jobs = next(r for r in role["rules"] if r["resources"] == ["jobs"])
    assert {"create", "watch", "delete"} <= set(jobs["verbs"])
    binding = _one(documents, "RoleBinding", "prefect-worker")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prefect-worker", "namespace": VALUES.namespace}
    ]
    assert not any(d["kind"].startswith("Cluster") for d in [role, binding])
    assert (
        _one(documents, "ServiceAccount", "fraud-flow-run")["automountServiceAccountToken"] is False
    )


def test_everything_is_in_one_namespace_with_nothing_left_to_fill(documents, job_template):
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == VALUES.namespace, k8s.object_name(document)
    text = yaml.safe_dump_all(documents) + json.dumps(job_template)
    assert "${" not in text
    assert VALUES.git_commit in text


def test_no_secret_values_are_in_the_files_only_secret_names(documents, job_template):
    assert "Secret" not in {d["kind"] for d in documents}
    secret_refs = set()
    for name, pod in _pod_specs(documents, job_template).items():
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    secret_refs.add(source["secretRef"]["name"])
            for variable in container.get("env", []):
                assert not re.search(r"PASSWORD|TOKEN|AUTH|KEY", variable["name"]), name
    config = _one(documents, "ConfigMap", "fraud-pipeline")["data"]
    assert not [key for key in config if re.search(r"PASSWORD|TOKEN|AUTH_STRING|KEY$", key)]
    assert secret_refs == {"fraud-pipeline-credentials", "fraud-id-hash-key", "fraud-api-keys"}
    bento = _one(documents, "Deployment", "fraud-detector")["spec"]["template"]["spec"]
    bento_refs = {s["secretRef"]["name"] for s in bento["containers"][0].get("envFrom", [])}
    # the bento gets the id hash key and its API keys, nothing else
    assert bento_refs == {"fraud-id-hash-key", "fraud-api-keys"}
    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    assert "fraud-pipeline-credentials" in readme and "fraud-api-keys" in readme
    for key in ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD", "FRAUD_SMTP_PASSWORD"):
        assert key in readme


# --------------------------------------------------------------------------- rendering


def test_an_unknown_placeholder_is_refused_with_the_file_name(tmp_path):
    (tmp_path / "extra.yaml").write_text("kind: ConfigMap\ndata: {a: ${NOT_A_VALUE}}\n")
    with pytest.raises(k8s.RenderError, match=r"extra.yaml: unknown placeholder\(s\) \$\{NOT_A"):
        k8s.render_manifests(VALUES, tmp_path)


def test_values_are_checked(tmp_path):
    with pytest.raises(k8s.RenderError, match="namespace='Fraud'"):
        k8s.RenderValues(
            bento_image="a:v1", pipeline_image="b:c", git_commit="d", namespace="Fraud"
        )
    with pytest.raises(k8s.RenderError, match="bento_image"):
        k8s.RenderValues(bento_image="", pipeline_image="b:c", git_commit="d")
    with pytest.raises(k8s.RenderError, match="not a hexadecimal commit"):
        k8s.pipeline_image("main")


def test_images_come_from_the_champion_pointer_and_the_commit(tmp_path):
    settings = Settings(home=tmp_path, image_prefix="team-")
    with pytest.raises(k8s.RenderError, match="no champion of 'fraud-detector'"):
        k8s.champion_image(settings, "fraud-detector")
    write_champion_pointer(settings.bentoml_home, "fraud-detector:v3")
    assert k8s.champion_image(settings, "fraud-detector") == "team-fraud-detector:v3"
    assert (
        k8s.champion_image(settings, "fraud-detector", "reg.invalid/ml/")
        == "reg.invalid/ml/team-fraud-detector:v3"
    )
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert k8s.pipeline_image(f"{sha}-dirty", "reg.invalid/ml") == (
        "reg.invalid/ml/fraud-pipeline:0123456789ab"
    )
    assert k8s.in_registry("fraud-detector:v3", "reg.invalid") == "reg.invalid/fraud-detector:v3"
    with pytest.raises(k8s.RenderError, match="no registry"):
        k8s.push_images(["fraud-detector:v3"], " ")


def test_render_command_writes_what_kubectl_and_prefect_read(tmp_path, capsys):
    out = tmp_path / "k8s"
    code = cli.main(
        [
            "k8s",
            "render",
            "--out",
            str(out),
            "--bento-image",
            "reg.invalid/fraud-detector:v4",
            "--git-commit",
            "89abcdef0123456789abcdef0123456789abcdef",
            "--registry",
            "reg.invalid",
            "--namespace",
            "fraud-staging",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "pipeline image: reg.invalid/fraud-pipeline:89abcdef0123" in stdout
    assert "kubectl apply -f" in stdout
    rendered = list(yaml.safe_load_all((out / "fraud.yaml").read_text()))
    assert k8s.schema_problems(rendered) == []
    bento = _one(rendered, "Deployment", "fraud-detector")
    assert bento["metadata"]["namespace"] == "fraud-staging"
    assert bento["metadata"]["labels"]["app.kubernetes.io/version"] == "v4"
    template = json.loads((out / "base-job-template.json").read_text())
    assert template["variables"]["properties"]["image"]["default"] == (
        "reg.invalid/fraud-pipeline:89abcdef0123"
    )


def test_render_command_without_a_champion_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    code = cli.main(["k8s", "render", "--out", str(tmp_path / "out"), "--git-commit", "abcdef1"])
    assert code == 2
    assert "no champion of 'fraud-detector'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_command_passes_on_the_checked_in_files(capsys):
    assert cli.main(["k8s", "check"]) == 0
    assert "13 of 13 objects valid" in capsys.readouterr().out


# --------------------------------------------------------------------------- workflows

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# steps that are no build: a guard that the registry is named, and the registry login
NOT_BUILD_STEPS = {"registry named", "log in to the registry"}


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", makefile, flags=re.MULTILINE))


def test_workflows_build_and_test_only_through_make_and_ci_run():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "release.yml"}
    targets = _make_targets()
    seen: set[str] = set()
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "run" not in step or step.get("name") in NOT_BUILD_STEPS:
                    continue
                command = step["run"].strip()
                if "bash .ci/run" in command:
                    seen.add(".ci/run")
                    continue
                match = re.fullmatch(r"make ([a-z0-9-]+)( [A-Z_]+=\"\$[A-Z_]+\")?", command)
                assert match, f"{path.name}: step {step.get('name')!r} runs {command!r}"
                assert match.group(1) in targets, f"{path.name}: no make target {match.group(1)}"
                seen.add(match.group(1))
    assert {".ci/run", "run", "pipeline-image", "push-images", "k8s-render"} <= seen


def test_workflows_hold_no_credentials_and_pin_actions():
    for path in WORKFLOWS:
        text = path.read_text()
        for uses in re.findall(r"uses: (\S+)", text):
            assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", uses), f"{path.name}: {uses}"
        # credentials only from the forge's secrets, registry only from its variables
        for line in text.splitlines():
            if re.search(r"(?i)password|username|token", line) and ":" in line:
                value = line.split(":", 1)[1]
                assert (
                    "${{ secrets." in value
                    or "$REGISTRY_" in value
                    or "--" in value
                    or not value.strip()
                ), line
    pull_requests = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert "pull_request" in pull_requests[True]  # PyYAML reads the key `on` as True
    release = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    assert release[True]["push"]["tags"] == ["v*"]
    assert release["jobs"]["images"]["env"]["REGISTRY"] == "${{ vars.IMAGE_REGISTRY }}"
