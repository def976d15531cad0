"""README examples run as written, after `make demo`: every bash and python block is either run here or
says why not (an AWS account, a Docker engine), in an HTML comment right above it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- (run|not run): ([^>]*?) -->\n)?```(bash|python)\n(.*?)```", re.S)
AFTER_DEMO = "after make demo"
WITH_SERVER = "with a server on models/"


def examples() -> list[tuple[str | None, str, str, str, int]]:
    """(marker, what, language, code, line) of each bash/python block of the README."""
    text = (ROOT / "README.md").read_text()
    found = []
    for match in BLOCK.finditer(text):
        marker, what, language, code = match.groups()
        found.append((marker, what, language, code, text.count("\n", 0, match.start(3)) + 1))
    return found


def runnable(what: str) -> list[pytest.param]:
    return [
        pytest.param(language, code, id=f"line-{line}")
        for marker, how, language, code, line in examples()
        if marker == "run" and how == what
    ]


def test_every_example_is_run_or_says_why_not() -> None:
    unmarked = [line for marker, _, _, _, line in examples() if marker is None]
    assert not unmarked, f"README blocks at lines {unmarked} need <!-- run: ... --> or <!-- not run: why -->"
    kinds = {what for marker, what, *_ in examples() if marker == "run"}
    assert kinds == {AFTER_DEMO, WITH_SERVER}


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder as `make demo` leaves it: models/ with the four city artifacts."""
    folder = tmp_path_factory.mktemp("readme")
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "demo", "--houses", "200"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def env_with_mme(port: int) -> dict[str, str]:
    # `mme` is the console script of the interpreter running the tests; the port replaces 8080.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "SAGEMAKER_BIND_TO_PORT": str(port)}


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples call curl")
@pytest.mark.parametrize(("language", "code"), runnable(AFTER_DEMO))
def test_example_runs_after_make_demo(demo_folder: Path, tmp_path: Path, language: str, code: str) -> None:
    assert language == "bash"
    port = free_port()
    script = code.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("/tmp/ml", str(tmp_path / "ml"))
    # A failing line must not leave the example's background server running.
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script + "\nwait\n"
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=demo_folder,
        capture_output=True,
        text=True,
        timeout=300,
        env=env_with_mme(port),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("language", "code"), runnable(WITH_SERVER))
def test_example_runs_against_a_server_on_models(
    demo_folder: Path, start_server, language: str, code: str
) -> None:
    assert language == "python"
    server = start_server("--models", str(demo_folder / "models"))
    result = subprocess.run(
        [sys.executable, "-c", code.replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")],
        cwd=demo_folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
