"""`mme status` against a live server: its table of resident models, once and under --watch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"
ENV = {**os.environ, "COLUMNS": "160"}  # wide enough for rich to print every column whole


def watch(command: list[str], **streams) -> subprocess.Popen:
    """`mme status --watch` as a terminal starts it: Ctrl-C (SIGINT) stops it. A shell's background job
    (how a test run may be started) ignores SIGINT, and a child inherits that, so it is put back here."""
    interruptible = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(command, text=True, env=ENV, preexec_fn=interruptible, **streams)


@pytest.fixture
def server(start_server, tmp_path: Path, artifact_bytes):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for seed in range(3):
        (folder / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    server = start_server("--models", str(folder), "--memory-budget", "64MiB", "--disk-budget", "32MiB")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for target in ["m0.tar.gz"] * 4 + ["m1.tar.gz"]:  # m2 stays on the shelf
            headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
            assert client.post("/invocations", content=ROW, headers=headers).status_code == 200
    return server


def mme_status(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "serve.cli", "status", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60)


def rows(table: str) -> dict[str, list[str]]:
    """model name -> the cells of its row."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if "│" in line]
    return {row[0]: row for row in cells if row and row[0].startswith("m")}


def test_table_of_resident_models(server):
    result = mme_status("--endpoint-url", server.url)
    assert result.returncode == 0, result.stderr
    table = result.stdout
    by_model = rows(table)
    assert list(by_model) == ["m1.tar.gz", "m0.tar.gz"]  # most recently used first; m2 never loaded
    status = httpx.get(server.url + "/status").json()
    for model in status["models"]:
        name, size, loads, invocations, p50, hit_ratio, last_used = by_model[model["modelName"]]
        assert (loads, invocations) == ("1", str(model["invocations"]))
        assert p50 == f"{model['p50Ms']:.2f}" and last_used.endswith("ago") and size.endswith("KiB")
    assert by_model["m0.tar.gz"][3:6:2] == ["4", "75%"]  # 4 invocations, the first a miss
    assert by_model["m1.tar.gz"][3:6:2] == ["1", "0%"]
    assert "2 resident models" in table
    assert "memory " in table and "/ 64.0 MiB" in table and "/ 32.0 MiB" in table


def test_watch_refreshes_until_interrupted(server):
    command = [sys.executable, "-m", "serve.cli", "status", "--endpoint-url", server.url, "--watch", "0.1"]
    proc = watch(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Each refresh asks the server once; three access lines mean it has refreshed twice.
        deadline = time.monotonic() + 30
        while server.output().count("path=/status") < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "mme status --watch never refreshed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "m0.tar.gz" in stdout and "m1.tar.gz" in stdout


def test_unreachable_url_is_one_line_and_exit_1():
    result = mme_status("--endpoint-url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("mme status: error: cannot reach http://127.0.0.1:")


def test_long_names_stay_whole_at_80_columns(start_server, tmp_path: Path, artifact_bytes):
    name = "northeast/massachusetts/Boston_MA_single_family_homes_2024.tar.gz"
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_bytes(artifact_bytes(0))
    server = start_server("--models", str(tmp_path))
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": name}
    assert httpx.post(server.url + "/invocations", content=ROW, headers=headers).status_code == 200
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "status", "--endpoint-url", server.url],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert any(name in line for line in result.stdout.splitlines()), result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80


def test_limit_says_how_many_rows_it_hides(server):
    result = mme_status("--endpoint-url", server.url, "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert list(rows(result.stdout)) == ["m1.tar.gz"]
    assert "showing the 1 most recently used of 2 (--limit)" in result.stdout


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} never happened"
        assert proc.poll() is None, f"mme status exited {proc.returncode} before {what}"
        time.sleep(0.05)


def test_watch_into_a_file_writes_while_running_and_outlives_the_server(server, tmp_path: Path):
    out = tmp_path / "status.log"
    command = [sys.executable, "-m", "serve.cli", "status", "--endpoint-url", server.url, "--watch", "0.1"]
    with out.open("w") as file:
        proc = watch(command, stdout=file, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: out.read_text().count("m0.tar.gz") >= 2, "two snapshots in the file", proc)
        server.stop()
        wait_for(lambda: "down: cannot reach" in out.read_text(), "a 'down' line", proc)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out.read_text()
