"""deployment/: the compose file passes its validator, the image's commands exist, and the nginx
proxy in front of the API runs with Debian's nginx and times out slow clients. No Docker engine
runs here, so the images are not run (see the README). The Kubernetes manifests are checked in
tests/test_kubernetes.py."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from client.local_server import free_port
from server.settings import ServerSettings
from tests.conftest import IRIS, REPO, SKLEARN_FIXTURES
from tests.support.nginx import (
    NGINX_CONF,
    TEST_TIMEOUT,
    nginx_t,
    nginx_wrapper,
    render_nginx_conf,
    running_nginx,
)
from tests.support.server_process import ServerProcess

BIN = Path(sys.executable).parent
DEPLOYMENT = REPO / "deployment"
MiB = 1 << 20


def test_compose_file_passes_docker_compose_config() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (make test does)"
    env = {
        "FHE_API_TOKEN": "validation-only",
        "FHE_DB_PASSWORD": "validation-only",
        "FHE_CALLBACK_SIGNING_KEY": "validation-only",
        "FHE_REDIS_PASSWORD": "validation-only-redis",
        "PATH": "/usr/bin:/bin",
    }

    def config(*args: str, **unset: None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [binary, "-f", str(DEPLOYMENT / "compose.yaml"), "config", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={k: v for k, v in env.items() if k not in unset},
            cwd=DEPLOYMENT,
        )

    run = config()
    assert run.returncode == 0, run.stdout + run.stderr
    # Redis has a password, without which the stack does not start, and a bound that drops
    # no queued task; the API, the workers and the health check use that password.
    refused = config("-q", FHE_REDIS_PASSWORD=None)
    assert refused.returncode != 0 and "FHE_REDIS_PASSWORD" in refused.stderr
    resolved = yaml.safe_load(run.stdout)["services"]
    redis = resolved["redis"]
    flags = dict(zip(redis["command"][1::2], redis["command"][2::2], strict=False))
    assert flags["--requirepass"] == env["FHE_REDIS_PASSWORD"]
    assert flags["--maxmemory"] and flags["--maxmemory-policy"] == "noeviction"
    assert redis["environment"]["REDISCLI_AUTH"] == env["FHE_REDIS_PASSWORD"]
    assert "grep -q PONG" in " ".join(redis["healthcheck"]["test"])
    for role in ("api", "worker"):
        command = resolved[role]["command"]
        redis_url = command[command.index("--redis") + 1]
        assert redis_url == f"redis://:{env['FHE_REDIS_PASSWORD']}@redis:6379/0", role
    # A scaled service (the worker, scaled with --scale; anything with replicas) mounts no
    # named volume: its replicas would share one key cache and one metrics directory.
    for name, service in resolved.items():
        if name != "worker" and service.get("deploy", {}).get("replicas", 1) <= 1:
            continue
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":")[0] if ":" in volume else ""
            else:
                source = volume.get("source", "") if volume.get("type") == "volume" else "/"
            assert not source or source.startswith(("/", ".")), (name, volume)
    assert "/var/lib/fhe-server" in resolved["worker"]["volumes"]
    services = yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text())["services"]
    assert {"api", "worker", "redis", "postgres", "demo", "proxy"} <= set(services)
    assert services["api"]["deploy"]["replicas"] == 2 and "volumes" not in services["api"]
    for role in ("api", "worker"):
        url = services[role]["environment"]["FHE_SERVER_DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy", "prometheus"}, "only nginx may publish a port to clients"
    assert all(port.startswith("127.0.0.1:") for port in services["prometheus"]["ports"])
    proxy = services["proxy"]
    assert ":-docker.io/library/nginx:" in proxy["image"]
    assert f"./nginx/{NGINX_CONF.name}:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    aliases = {
        alias
        for service in services.values()
        for network in (service.get("networks") or {}).values()
        for alias in (network or {}).get("aliases", [])
    }
    assert set(re.findall(r"server ([\w-]+):\d+;", NGINX_CONF.read_text())) <= aliases


@pytest.mark.fast
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.client"])
def test_dockerfile_runs_as_non_root_with_a_health_check_and_existing_sources(
    dockerfile: str,
) -> None:
    text = (DEPLOYMENT / dockerfile).read_text()
    assert re.search(r"^USER fhe$", text, re.M) and "HEALTHCHECK" in text
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, re.M)
    sources = re.findall(r"^COPY (?:--chown=\S+ )?([^-\s][^\n]*?) \S+$", text, re.M)
    assert sources, f"no COPY from the build context found in {dockerfile}"
    for source in sources:
        for part in source.split():
            assert (REPO / part).exists(), f"COPY source {part} is missing"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".cache" in ignored


@pytest.mark.fast
def test_each_image_installs_its_role_only() -> None:
    """The server image installs the server extra; the client image the light client's pinned
    list without declared dependencies, then gradio: neither installs the build stack."""
    server = (DEPLOYMENT / "Dockerfile").read_text()
    client = (DEPLOYMENT / "Dockerfile.client").read_text()
    assert "pip install --no-deps -r requirements-server.txt" in server
    assert "pip install --no-deps ." in server
    assert "pip install --no-deps -r requirements-client.txt" in client
    assert "pip install --no-deps ." in client
    for text in (server, client):
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert installs
        for line in installs:
            forbidden = ("build", "test", "demo", "transformers", "torch", "concrete-ml")
            assert not any(word in line for word in forbidden)
    compose = yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text())["services"]
    assert "/fhe-client:" in compose["demo"]["image"]
    assert compose["demo"]["build"]["dockerfile"] == "deployment/Dockerfile.client"
    assert "/fhe-server:" in compose["api"]["image"]


@pytest.mark.fast
def test_the_commands_the_deployment_runs_exist() -> None:
    def help_of(*command: str) -> str:
        run = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    serve = help_of(str(BIN / "fhe-server"), "serve")
    assert "--backend" in serve and "--redis" in serve and "--dev" in serve
    assert "--redis" in help_of(str(BIN / "fhe-server"), "worker")
    demo = help_of(str(BIN / "fhe-client"), "demo")
    assert "--server" in demo and "--host" in demo and "--port" in demo


def test_the_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    rendered = render_nginx_conf(tmp_path, "127.0.0.1:8000", "127.0.0.1:7860", 8080, 7860, 10)
    nginx_wrapper(tmp_path, rendered)
    run = nginx_t(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "test is successful" in run.stderr
    assert "[warn]" not in run.stderr, run.stderr


@pytest.mark.fast
def test_the_nginx_limits_match_the_server_defaults() -> None:
    """Bodies the API takes pass the proxy; the proxy waits longer than the API for a worker."""
    text = NGINX_CONF.read_text()
    defaults = {name: field.default for name, field in ServerSettings.model_fields.items()}
    keys = re.search(r"location = /v1/keys \{[^}]*client_max_body_size (\d+)m;", text)
    assert keys and int(keys.group(1)) * MiB == defaults["max_key_bytes"]
    api = text.split("# The API.")[1].split("# The demo page")[0]
    body = int(re.search(r"^    client_max_body_size (\d+)m;", api, re.M).group(1)) * MiB
    assert body == defaults["max_ciphertext_bytes"] == defaults["max_json_bytes"]
    read = int(re.search(r"proxy_read_timeout (\d+)s;", api).group(1))
    assert read > defaults["celery_task_timeout"]
    assert re.search(r"client_body_timeout (\d+)s;", api).group(1) == "30"
    assert defaults["body_timeout_seconds"] == 30
    # Bodies are buffered, but for keys, which stream to the API that bounds them itself.
    assert "proxy_request_buffering on;" in api
    assert re.search(r"location = /v1/keys \{[^}]*proxy_request_buffering off;", text)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    """The proxy's URL and a real fhe-server (clear iris only) behind Debian's nginx."""
    root = tmp_path_factory.mktemp("proxied")
    shutil.copytree(SKLEARN_FIXTURES / IRIS, root / "models" / "iris")
    server = ServerProcess(root / "models", root / "data").start()
    try:
        demo = f"127.0.0.1:{free_port()}"
        with running_nginx(root / "nginx", f"127.0.0.1:{server.port}", demo) as url:
            yield url, server
    finally:
        server.stop()


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the peer closes `sock` (sending `trickle` every 0.25 s), or None."""
    sock.settimeout(0.25)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_requests_pass_through_the_proxy(proxied: tuple[str, ServerProcess]) -> None:
    url, server = proxied
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    columns = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    rows = 60_000  # about 1.4 MB: past client_body_buffer_size, so nginx buffers it to a file
    body = {"inputs": {"data": {c: [5.1] * rows for c in columns}}}
    response = httpx.post(f"{url}/v1/models/iris/predict?through-proxy", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["output"]) == rows
    assert "through-proxy" in server.log.read_text(errors="replace")


def test_nginx_closes_a_connection_that_trickles_its_headers(
    proxied: tuple[str, ServerProcess],
) -> None:
    url, _ = proxied
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = closed_within(sock, TEST_TIMEOUT + 8, trickle=b"X-Slow: a\r\n")
    assert closed is not None, "a client trickling headers kept its connection"
    assert TEST_TIMEOUT - 0.5 <= closed <= TEST_TIMEOUT + 3, closed
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_nginx_closes_a_stalled_body_before_the_api_sees_it(
    proxied: tuple[str, ServerProcess],
) -> None:
    url, server = proxied
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/models/iris/predict?stalled-body HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inputs"'
        )
        closed = closed_within(sock, TEST_TIMEOUT + 8)
    assert closed is not None and closed <= TEST_TIMEOUT + 3, closed
    assert "stalled-body" not in server.log.read_text(errors="replace")


def test_nginx_refuses_oversized_bodies_as_json(proxied: tuple[str, ServerProcess]) -> None:
    url, _ = proxied
    port = int(url.rsplit(":", 1)[1])
    for path, size in (("/v1/models/iris/predict", 16 * MiB + 1), ("/v1/keys", 512 * MiB + 1)):
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head.encode())
            sock.settimeout(10)
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413"), answer
        assert '"code": "too_large"' in answer and "application/json" in answer


def test_nginx_answers_json_when_the_api_is_down(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with running_nginx(tmp_path, dead, dead) as url:
        response = httpx.get(f"{url}/healthz", timeout=10)
        # A route behind the token check: the check itself cannot reach the API.
        checked = httpx.post(f"{url}/v1/models/iris/predict", json={}, timeout=10)
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
    assert checked.status_code == 502, checked.text
    assert checked.json()["code"] == "upstream_unavailable"


MONITORING = DEPLOYMENT / "monitoring"


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (make system-packages)"
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _exported_names() -> set[str]:
    """Every sample name the API and its workers export (from the metrics module itself)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from server import metrics

    metrics.RUN_SECONDS.labels(model="m").observe(1.0)
    metrics.RUN_TURNAROUND.labels(model="m").observe(1.0)
    metrics.CLEAR_SECONDS.labels(model="m").observe(1.0)
    metrics.REQUESTS.labels(route="/r", code="200").inc()
    metrics.REQUEST_SECONDS.labels(route="/r").observe(1.0)
    metrics.KEY_CHECKS.labels(result="fits").inc()
    registry = CollectorRegistry()
    registry.register(metrics.StateCollector(dict, lambda: (0, 0, 1), lambda: 0))
    registry.register(metrics.CardCollector(lambda: {"m": 1.5}))
    text = metrics.exposition(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def alert_rules() -> list[dict]:
    """Every rule of every group in alerts.yml."""
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


SATURATION_SERIES = {
    "container_cpu_cfs_periods_total": "cAdvisor",
    "container_cpu_cfs_throttled_periods_total": "cAdvisor",
    "container_memory_working_set_bytes": "cAdvisor",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "redis_memory_used_bytes": "redis_exporter",
    "redis_memory_max_bytes": "redis_exporter",
    "kubelet_volume_stats_available_bytes": "the kubelet",
    "kubelet_volume_stats_capacity_bytes": "the kubelet",
}
"""The series the saturation alerts read from exporters other than fhe-server, and which."""


def test_alert_rules_load_and_fire_as_their_unit_tests_say() -> None:
    checked = _promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0 and "SUCCESS: 16 rules found" in checked.stdout, checked
    tested = _promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    wanted = {"FheQueueBacklog", "FheWorkerCrashes", "FheRunSlow", "FheKeyStoreNearlyFull"}
    wanted |= {"FheStateStoreDown", "FheWorkerDown", "FheJobFailures"}
    wanted |= {"FheCpuThrottled", "FheMemoryNearLimit", "FheRedisMemoryHigh"}
    wanted |= {"FhePostgresVolumeLow"}
    assert wanted <= names
    exported = _exported_names()
    used = {n for rule in rules for n in re.findall(r"\bfhe_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported
    # Run latency is judged against each model's card, not a fixed bound alone.
    [slow] = [rule for rule in rules if rule["alert"] == "FheRunSlow"]
    assert "fhe_model_expected_run_seconds" in slow["expr"]
    # Every other series an alert reads comes from an exporter both files name.
    names = {
        n for rule in rules for n in re.findall(r"\b[a-z][a-z0-9]*_[a-z0-9_]+\b", rule["expr"])
    }
    foreign = names - used - {"histogram_quantile", "clamp_min"}
    assert foreign == set(SATURATION_SERIES), foreign ^ set(SATURATION_SERIES)
    comments = (MONITORING / "alerts.yml").read_text()
    readme = (DEPLOYMENT / "README.md").read_text()
    for exporter in set(SATURATION_SERIES.values()):
        assert exporter in comments and exporter in readme, exporter


def test_prometheus_scrapes_the_api_replicas_and_the_workers(tmp_path: Path) -> None:
    """Compose: a job per service, on the port each serves /metrics on (the service's DNS name
    resolves to every replica); promtool accepts the file with the shipped rules. Kubernetes:
    pod-role jobs keeping each component's pods by label and named port, which the manifests
    carry. The job names are the ones the alerts match."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = yaml.safe_load((DEPLOYMENT / "compose.yaml").read_text())["services"]
    command = services["worker"]["command"]
    worker_port = int(command[command.index("--metrics-port") + 1])
    for job, service, port in (("fhe-api", "api", 8000), ("fhe-worker", "worker", worker_port)):
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A" and sd["port"] == port, job
    rules = " ".join(rule["expr"] for rule in alert_rules())
    assert 'up{job="fhe-api"}' in rules and 'up{job="fhe-worker"}' in rules
    config["rule_files"] = [str(MONITORING / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    # Debian's promtool is built without Kubernetes discovery: this file is checked here only.
    cluster = yaml.safe_load((MONITORING / "prometheus-kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in cluster["scrape_configs"]}
    for job, manifest in (("fhe-api", "api.yaml"), ("fhe-worker", "worker.yaml")):
        assert [sd["role"] for sd in jobs[job]["kubernetes_sd_configs"]] == ["pod"]
        keep = {
            tuple(rule["source_labels"]): rule["regex"]
            for rule in jobs[job]["relabel_configs"]
            if rule.get("action") == "keep"
        }
        app = keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
        port = keep[("__meta_kubernetes_pod_container_port_name",)]
        docs = yaml.safe_load_all((DEPLOYMENT / "kubernetes" / manifest).read_text())
        deployment = next(d for d in docs if d and d["kind"] == "Deployment")
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == app == job
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert port in ports, (manifest, port, ports)


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings (lower case, punctuation dropped)."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.fast
def test_every_alert_links_a_runbook_that_exists() -> None:
    rules = alert_rules()
    assert len(rules) >= 5, rules  # an empty or unread rule file must not pass
    anchors = heading_anchors((DEPLOYMENT / "README.md").read_text())
    for rule in rules:
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "deployment/README.md" and anchor in anchors, (rule["alert"], url)
        assert anchor == rule["alert"].lower(), (rule["alert"], url)


def test_every_dashboard_query_parses_and_names_exported_metrics(tmp_path: Path) -> None:
    import json

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    # promtool parses PromQL only in rule files: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    checked = _promtool("check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    used = {n for expr in exprs for n in re.findall(r"\bfhe_[a-z_]+", expr)}
    assert used <= _exported_names(), used - _exported_names()
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("jobs", "queue wait", "fhe run p95", "key store", "crashes", "turnaround"):
        assert topic in titles
    # Runs per second from the histogram each run is counted in once (not the API's turnaround,
    # which would add nothing, nor both, which would double them).
    [runs] = [p for p in dashboard["panels"] if p["title"].startswith("FHE runs per second")]
    assert [t["expr"] for t in runs["targets"]] == [
        "sum by (model) (rate(fhe_run_seconds_count[5m]))"
    ]


@pytest.mark.fast
def test_the_workers_scale_on_the_backlog_the_server_exports() -> None:
    """HPA, prometheus-adapter and the KEDA alternative read one recording rule, built on the
    fhe_backlog gauge the API exports, and scale down slowly."""
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    records = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    assert set(re.findall(r"\bfhe_[a-z_]+", records["fhe:backlog"])) == {"fhe_backlog"}
    assert "fhe_backlog" in _exported_names()
    parts = set(re.findall(r'part="(\w+)"', records["fhe:backlog"]))
    assert parts == {"jobs_queued", "broker", "turns"}
    [rule] = yaml.safe_load((MONITORING / "prometheus-adapter.yaml").read_text())["external"]
    assert rule["seriesQuery"] == "fhe:backlog" and "fhe:backlog" in rule["metricsQuery"]
    docs = yaml.safe_load_all((DEPLOYMENT / "kubernetes" / "worker.yaml").read_text())
    hpa = next(d for d in docs if d and d["kind"] == "HorizontalPodAutoscaler")
    external = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert [m["metric"]["name"] for m in external] == [rule["name"]["as"]]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    keda = yaml.safe_load(
        (DEPLOYMENT / "kubernetes" / "keda" / "worker-scaledobject.yaml").read_text()
    )
    [trigger] = keda["spec"]["triggers"]
    assert "fhe:backlog" in trigger["metadata"]["query"]
    assert keda["spec"]["fallback"]["replicas"] >= keda["spec"]["minReplicaCount"]
    assert keda["spec"]["scaleTargetRef"]["name"] == hpa["spec"]["scaleTargetRef"]["name"]
