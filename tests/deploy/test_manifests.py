"""The deployment files say what the server does: probes on the real routes, non-root, a stop
grace longer than the drain, internal ports per worker, WebSockets through the balancer.
(nginx itself checks deploy/nginx.conf in tests/e2e/test_load_balancer.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from parley.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DRAIN_S = Settings().shutdown_grace_s


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def by_kind(kind: str, name: str | None = None) -> dict:
    for path in K8S.glob("*.yaml"):
        for d in yaml.safe_load_all(path.read_text()):
            if d and d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise AssertionError(f"no {kind} {name or ''}")


def test_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
        for d in docs(resource):
            assert {"apiVersion", "kind", "metadata"} <= set(d)


def test_parley_pods_probe_the_real_routes_run_as_non_root_and_outlast_the_drain() -> None:
    deployment = by_kind("Deployment", "parley")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + DRAIN_S
    env = {e["name"]: e for e in container["env"]}
    assert env["PARLEY_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    config = by_kind("ConfigMap", "parley-config")["data"]
    workers, base = int(config["PARLEY_WORKERS"]), int(config["PARLEY_INTERNAL_PORT"])
    ports = {p["containerPort"] for p in container["ports"]}
    assert {base + i for i in range(workers)} <= ports  # one internal port per worker
    secret = by_kind("Secret", "parley-secrets")["stringData"]
    assert {"PARLEY_API_KEYS", "PARLEY_CLUSTER_SECRET"} <= set(secret)  # Redis needs the cluster secret
    Settings(**{k.removeprefix("PARLEY_").lower(): v for k, v in {**config, **secret}.items()
                if k.startswith("PARLEY_")})  # the settings parse as Parley reads them


def test_a_disruption_budget_keeps_a_node() -> None:
    pdb = by_kind("PodDisruptionBudget", "parley")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"] == by_kind("Deployment", "parley")["spec"]["selector"]["matchLabels"]


def test_the_ingress_keeps_long_websockets_and_audio_uploads() -> None:
    annotations = by_kind("Ingress", "parley")["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > Settings().session_max_minutes * 60
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"].endswith("m")


def test_compose_runs_two_nodes_redis_a_balancer_and_an_llm() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "llm"} <= set(services) and sum(1 for s in services if s.startswith("parley")) >= 2
    balancer = next(s for s in services.values() if "nginx" in str(s.get("image", "")))
    assert balancer
    for name, service in services.items():
        if name.startswith("parley"):
            grace = service["stop_grace_period"]
            assert int(re.sub(r"\D", "", grace)) > DRAIN_S, (name, grace)


def test_the_image_is_non_root_with_a_healthcheck_and_no_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!0|root)", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert 'VOLUME ["/models"]' in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile
    assert "torch was pulled in" in dockerfile  # the build fails if an install brings torch


def test_nginx_upgrades_websockets_without_stickiness() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade" in conf and "$connection_upgrade" in conf
    assert "ip_hash" not in conf and "sticky" not in conf.replace("stickiness", "")
    assert "# upstreams:begin" in conf and "# upstreams:end" in conf
