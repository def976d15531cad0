"""The `mme` command as a new user meets it: --version, exit codes, flag ranges, and `mme serve` failing
at startup (busy port, missing source) with one line instead of saying ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import free_port

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"


def mme(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str], *wanted: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in wanted:
        assert text in lines[0]
    return lines[0]


def test_version() -> None:
    from importlib import metadata

    result = mme("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mme {metadata.version('xgboost-mme')}"


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["status"], "--endpoint-url"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["serve", "--port", "eighty"], "invalid"),
    ],
)
def test_bad_arguments_exit_1_as_the_readme_says(argv: list[str], wanted: str) -> None:
    line = one_error_line(mme(*argv), wanted)
    assert line.startswith("mme") and line.endswith("--help)")


@pytest.mark.parametrize(
    ("argv", "env", "wanted"),
    [
        (["serve", "--port", "99999"], {}, "--port='99999': must be a port number from 1 to 65535"),
        (["serve", "--port", "0"], {}, "must be a port number from 1 to 65535"),
        (["serve"], {"SAGEMAKER_BIND_TO_PORT": "70000"}, "SAGEMAKER_BIND_TO_PORT='70000'"),
        (["status", "--endpoint-url", "http://127.0.0.1:1", "--watch", "0"], {}, "greater than 0"),
        (["status", "--endpoint-url", "http://127.0.0.1:1", "--limit", "0"], {}, "want at least 1"),
        (["invoke", "--repeat", "0", ROW], {}, "want from 1 to 100000"),
        (["demo", "--port", "65536"], {}, "want from 0 to 65535"),
    ],
)
def test_flag_ranges_are_checked(argv: list[str], env: dict[str, str], wanted: str) -> None:
    one_error_line(mme(*argv, env=env), wanted)


def test_serve_on_a_busy_port_is_one_line_and_never_says_ready() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = mme("serve", "--host", "127.0.0.1", "--port", str(port))
    line = one_error_line(result, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert line.startswith("mme serve: error: ")
    assert "ready on" not in result.stdout + result.stderr


def test_serve_with_a_missing_folder_fails_at_startup(tmp_path: Path, start_server) -> None:
    missing = tmp_path / "nonexistent"
    one_error_line(mme("serve", "--models", str(missing), "--port", str(free_port())), "does not exist")
    # --lazy-source starts anyway, for a source that appears later.
    server = start_server("--models", str(missing), "--lazy-source")
    assert httpx.get(server.url + "/ping").status_code == 200


def test_serve_with_an_s3_source_it_cannot_list_fails_at_startup(moto_endpoint: str, tmp_path: Path) -> None:
    port = str(free_port())
    missing_bucket = mme("serve", "--models", "s3://no-such-bucket/", "--s3-endpoint-url", moto_endpoint,
                         "--port", port)  # fmt: skip
    one_error_line(missing_bucket, "--models s3://no-such-bucket/", "NoSuchBucket", "--lazy-source")

    no_credentials = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    no_credentials |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    no_credentials |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "serve", "--models", "s3://models/", "--port", port,
         "--s3-endpoint-url", moto_endpoint],
        capture_output=True, text=True, timeout=60, env=no_credentials,
    )  # fmt: skip
    one_error_line(result, "no AWS credentials to read s3://models/")


def test_invoke_times_each_call_and_reports_p50_p99(start_server, tmp_path: Path, artifact_bytes) -> None:
    (tmp_path / "m.tar.gz").write_bytes(artifact_bytes(0))
    server = start_server("--models", str(tmp_path))
    result = mme("invoke", "--endpoint-url", server.url, "--target-model", "m.tar.gz", "--repeat", "5", ROW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1  # the prediction once, not five times
    [line] = result.stderr.splitlines()
    assert "5 calls: first " in line and " p50 " in line and " p99 " in line
    assert httpx.get(server.url + "/status").json()["totals"]["invocations"] == 5
