"""docker-compose.yml as Docker Compose v2 itself reads it: valid, and wired as the local stack needs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import compose
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The real binary: the package's Python wrapper exits 0 even when compose reports an error.
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"


def compose_config(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMPOSE_BIN), "-f", str(path), "config", *args],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def model() -> dict:
    result = compose_config(COMPOSE_FILE, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_file_is_valid() -> None:
    result = compose_config(COMPOSE_FILE, "-q")
    assert result.returncode == 0, result.stderr


def test_a_broken_copy_fails_validation(tmp_path: Path) -> None:
    broken = COMPOSE_FILE.read_text().replace("service_completed_successfully", "service_finished")
    assert broken != COMPOSE_FILE.read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = compose_config(tmp_path / "docker-compose.yml", "-q")
    assert result.returncode != 0
    assert "services.mme.depends_on.seed.condition" in result.stderr


def test_services(model: dict) -> None:
    assert set(model["services"]) == {"minio", "seed", "mme"}


def published(service: dict) -> set[tuple[str, int]]:
    return {(port.get("host_ip", ""), int(port["published"])) for port in service.get("ports", [])}


def test_ports_bind_loopback_only(model: dict) -> None:
    services = model["services"]
    assert published(services["minio"]) == {("127.0.0.1", 9000), ("127.0.0.1", 9001)}
    assert published(services["mme"]) == {("127.0.0.1", 8080)}
    assert published(services["seed"]) == set()


def test_start_order(model: dict) -> None:
    services = model["services"]
    assert services["seed"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["mme"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert services["minio"]["healthcheck"]["test"]


def test_seed_and_server_use_our_image_and_minio(model: dict) -> None:
    services = model["services"]
    for name in ("seed", "mme"):
        service = services[name]
        assert Path(service["build"]["context"]) == ROOT
        assert service["build"]["dockerfile"] == "container/Dockerfile"
        env, minio_env = service["environment"], services["minio"]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert services["seed"]["image"] == services["mme"]["image"]
    seed_script = " ".join(services["seed"]["command"])
    assert "mme train" in seed_script
    assert "--to s3://models/ --s3-endpoint-url http://minio:9000" in seed_script
    assert services["mme"]["command"] == [
        "serve",
        "--models",
        "s3://models/",
        "--s3-endpoint-url",
        "http://minio:9000",
    ]
