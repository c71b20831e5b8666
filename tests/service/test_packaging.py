"""Docker cannot run here: check that the compose file and the Dockerfile say what the
service needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.redis_clients import cluster_url_problem, url_nodes

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(entry.split("=", 1) for entry in env)
    return {k: str(v) for k, v in env.items()}


def _targets(volumes: list) -> list[tuple[str, str]]:
    """(source, target) of short ("src:dst[:mode]") and long ({source, target}) volume entries."""
    out = []
    for volume in volumes:
        if isinstance(volume, dict):
            out.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = volume.rsplit(":", 2) if volume.endswith((":ro", ":rw")) else volume.rsplit(":", 1)
            out.append((parts[0], parts[1]))
    return out


def _command(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def test_compose_file_runs_redis_and_two_replicas():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis = services["redis"]
    app = services["genrec"]

    assert "--appendonly yes" in _command(redis["command"])
    redis_volume = [source for source, target in _targets(redis["volumes"]) if target == "/data"]
    assert redis_volume and redis_volume[0] in compose["volumes"]
    assert "ping" in _command(redis["healthcheck"]["test"])

    env = _env(app)
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["GENREC_BUNDLE"] == "/bundle"
    assert "/bundle" in [target for _source, target in _targets(app["volumes"])]
    assert "/healthz" in _command(app["healthcheck"]["test"])
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["deploy"]["replicas"] == 2
    assert "build" in app


def test_cluster_compose_file_runs_the_service_on_a_redis_cluster():
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    nodes = {name: service for name, service in services.items() if name.startswith("redis-") and name[6:].isdigit()}
    assert len(nodes) == 6
    addresses = set()
    for service in nodes.values():
        command = _command(service["command"])
        assert "--cluster-enabled yes" in command and "--appendonly yes" in command
        [(volume, target)] = _targets(service["volumes"])
        assert target == "/data" and volume in compose["volumes"]
        addresses.add(service["networks"]["cluster"]["ipv4_address"])
    init = _command(services["redis-cluster-init"]["command"])
    assert "--cluster create" in init and "--cluster-replicas 1" in init
    assert all(f"{address}:6379" in init for address in addresses)
    assert set(services["redis-cluster-init"]["depends_on"]) == set(nodes)

    app = services["genrec"]
    env = _env(app)
    assert env["REDIS_CLUSTER"] == "true"
    assert cluster_url_problem(env["REDIS_URL"]) is None
    assert {host for host, _port in url_nodes(env["REDIS_URL"])} <= set(nodes)
    assert app["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
    assert app["deploy"]["replicas"] == 2 and "/healthz" in _command(app["healthcheck"]["test"])


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "download.pytorch.org/whl/cpu" in text and "torch==" in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/healthz" in text
    assert "VOLUME" in text and "/bundle" in text
    assert "genrec-serve" in lines[-1] and "0.0.0.0" in lines[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "bundles" in ignored
