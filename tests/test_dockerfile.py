"""container/Dockerfile and its entry scripts, checked without a container engine."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import free_port, wait_for_port
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONTAINER = ROOT / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
HADOLINT = VENV_BIN / "hadolint"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def only(parsed: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in parsed if kw == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "RUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3013" in result.stdout or "DL3042" in result.stdout


def test_base_image_is_a_build_argument(parsed) -> None:
    assert only(parsed, "FROM") == "${BASE_IMAGE}"
    assert "BASE_IMAGE=python:3.11-slim" in [args for kw, args in parsed if kw == "ARG"]


def test_sagemaker_labels(parsed) -> None:
    labels = dict(pair.split("=", 1) for kw, args in parsed if kw == "LABEL" for pair in shlex.split(args))
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_command_is_serve_in_exec_form(parsed) -> None:
    # Exec form, no wrapping entrypoint: `docker run IMAGE serve|train` runs the script as PID 1.
    assert json.loads(only(parsed, "ENTRYPOINT")) == []
    assert json.loads(only(parsed, "CMD")) == ["serve"]


def test_exposes_8080_on_every_interface(parsed) -> None:
    assert only(parsed, "EXPOSE") == "8080"
    # The server's own default is loopback, which nothing outside the container can reach.
    env = dict(pair.split("=", 1) for kw, args in parsed if kw == "ENV" for pair in shlex.split(args))
    assert env["MME_HOST"] == "0.0.0.0"


def healthcheck_command(parsed) -> list[str]:
    args = only(parsed, "HEALTHCHECK")
    return json.loads(args[args.index("CMD ") + len("CMD ") :])


def test_healthcheck_probes_ping_on_the_bind_port(parsed, tmp_path: Path) -> None:
    """Run the image's probe on the host against a real `mme serve`, then against nothing."""
    command = healthcheck_command(parsed)
    assert command[0] == "python3"
    probe = [sys.executable, *command[1:]]
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port)}
    server = subprocess.Popen(
        [str(VENV_BIN / "mme"), "serve", "--host", "127.0.0.1", "--model-root", str(tmp_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0


@pytest.mark.parametrize(("script", "subcommand"), [("serve", "serve"), ("train", "train-job")])
def test_entry_scripts_exec_mme(script: str, subcommand: str) -> None:
    """The same entry scripts the image puts on PATH, run here with the venv's `mme`."""
    path = CONTAINER / script
    assert os.access(path, os.X_OK)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(path), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: mme {subcommand} ")


def test_lock_satisfies_pyproject() -> None:
    """The image installs deps from container/requirements.lock: it must match pyproject's ranges."""
    locked = {}
    for line in (CONTAINER / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            locked[canonicalize_name(name)] = version
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in locked, f"{name} is missing from container/requirements.lock"
        assert dependency.specifier.contains(locked[name]), f"{name}=={locked[name]} is not {dependency}"
