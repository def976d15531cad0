"""The Makefile's targets as a new user runs them: what each installs, where reports go, which Compose.

`make -n` shows what a target would run without running it, so these need no network and no Docker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.__main__ import DOCS, report_folder, verdict
from bench.results import Target

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A make of its own even under `make test`: no sub-make prefixes ("make[1]:"), no directory lines.
    env = {k: v for k, v in (env or os.environ).items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    command = ["make", "--no-print-directory", "-C", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def pip_installs(output: str) -> list[str]:
    return [line.split(" -e ", 1)[1] for line in output.splitlines() if "pip" in line and " -e " in line]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A virtualenv as make leaves it after installing nothing yet: its python exists, no stamps."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    return tmp_path / "venv"


@pytest.mark.parametrize(
    ("target", "extras"),
    [("demo", "'.'"), ("install", "'.'"), ("test", "'.[dev,sdk,bench]'"), ("bench", "'.[bench]'")],
)
def test_each_target_installs_only_what_it_needs_and_says_so(venv: Path, target: str, extras: str) -> None:
    result = make("-n", target, f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    assert pip_installs(result.stdout) == [extras]
    announce = next(line for line in result.stdout.splitlines() if "== installing" in line)
    assert "the first time" in announce


def test_runtime_installed_then_make_test_installs_the_test_extras(venv: Path) -> None:
    (venv / ".installed-runtime").touch()
    assert pip_installs(make("-n", "demo", f"VENV={venv}").stdout) == []
    assert pip_installs(make("-n", "test", f"VENV={venv}").stdout) == ["'.[dev,sdk,bench]'"]
    (venv / ".installed-test").touch()
    assert pip_installs(make("-n", "test", f"VENV={venv}").stdout) == []


def test_license_is_an_spdx_string_so_setuptools_prints_no_deprecation_banner() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # the first to read the SPDX form


def test_a_quick_bench_never_overwrites_the_committed_report() -> None:
    assert report_folder(None, quick=False) == DOCS
    quick = report_folder(None, quick=True)
    assert quick != DOCS and quick.is_relative_to(ROOT / "bench" / ".work")  # git-ignored
    assert "--out" not in make("-n", "bench-quick", "VENV=/nonexistent").stdout  # the default applies


def test_a_full_bench_fails_naming_the_missed_targets(capsys: pytest.CaptureFixture[str]) -> None:
    checks = [
        Target("W1 throughput", "goal", "12x", True, "+2x"),
        Target("W2 cold load", "goal", "3x", False, "-2x"),
        Target("W5 MME workload", "goal", "-", False, "-"),
        Target("W3 residency", "goal", "-", None, "-"),
    ]
    assert verdict(checks, quick=False) == 1
    assert "missed W2 cold load, W5 MME workload" in capsys.readouterr().out
    assert verdict(checks, quick=True) == 0
    assert verdict(checks[:1] + checks[3:], quick=False) == 0


# --- make up / make down ------------------------------------------------------------------------------


def fake_tools(folder: Path, plugin: bool, docker_compose: bool) -> dict[str, str]:
    """A PATH holding stand-ins for the docker CLI (with or without its compose plugin) and docker-compose."""
    folder.mkdir()
    compose = 'if [ "$1" = compose ]; then shift; echo "docker compose $*"; exit 0; fi\n' if plugin else ""
    unknown = 'echo "docker: unknown command: docker $1" >&2; exit 1\n'
    (folder / "docker").write_text(f"#!/bin/sh\n{compose}{unknown}")
    if docker_compose:
        (folder / "docker-compose").write_text('#!/bin/sh\necho "docker-compose $*"\n')
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("plugin", "docker_compose", "up", "down"),
    [
        (True, True, "docker compose up -d --build", "docker compose down -v"),
        (False, True, "docker-compose up -d --build", "docker-compose down -v"),
    ],
    ids=["plugin", "docker-compose"],
)
def test_up_and_down_use_whichever_compose_exists(tmp_path: Path, plugin, docker_compose, up, down) -> None:
    env = fake_tools(tmp_path / "bin", plugin, docker_compose)
    for target, wanted in (("up", up), ("down", down)):
        result = make("-s", target, f"VENV={tmp_path / 'no-venv'}", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == wanted


def test_up_and_down_without_any_compose_fail_with_one_line(tmp_path: Path) -> None:
    env = fake_tools(tmp_path / "bin", plugin=False, docker_compose=False)
    for target in ("up", "down"):
        result = make("-s", target, f"VENV={tmp_path / 'no-venv'}", env=env)
        assert result.returncode != 0
        first, *rest = result.stderr.strip().splitlines()
        assert first.startswith(
            "make: no Docker Compose found: install Docker's compose plugin or docker-compose"
        )
        assert all(line.startswith("make: ***") for line in rest)  # only make's own "Error 1" after it
        assert "Docker version" not in result.stdout + result.stderr
