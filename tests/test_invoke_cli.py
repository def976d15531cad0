"""`mme invoke`: the same command against a local server and against the SageMaker runtime API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import predict_artifact

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"


def mme_invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "serve.cli", "invoke", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_invoke_a_local_server_from_an_argument_a_file_and_stdin(start_server, tmp_path, artifact_bytes):
    (tmp_path / "Chicago_IL.tar.gz").write_bytes(artifact_bytes(2))
    server = start_server("--models", str(tmp_path))
    (tmp_path / "row.csv").write_text(ROW)
    want = predict_artifact(
        artifact_bytes(2), np.array([[float(v) for v in ROW.split(",")]], dtype=np.float32)
    )
    for body, stdin in [(ROW, None), (f"@{tmp_path / 'row.csv'}", None), ("-", ROW)]:
        result = mme_invoke(
            "--endpoint-url", server.url, "--target-model", "Chicago_IL.tar.gz", body, stdin=stdin
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == pytest.approx(want, rel=1e-6)
        assert "took" in result.stderr and "ms" in result.stderr


def test_invoke_errors_are_one_line(start_server, tmp_path):
    server = start_server("--models", str(tmp_path))
    result = mme_invoke("--endpoint-url", server.url, "--target-model", "Missing.tar.gz", ROW)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ValidationError" in lines[0] and "Missing.tar.gz" in lines[0]
    missing_file = mme_invoke("--endpoint-url", server.url, "--target-model", "x.tar.gz", "@/nonexistent/row")
    assert missing_file.returncode == 1 and "cannot read" in missing_file.stderr


def test_without_endpoint_url_it_calls_the_sagemaker_runtime_api(moto_endpoint):
    # No --endpoint-url: the real runtime API, which AWS_ENDPOINT_URL points at moto's server here.
    result = mme_invoke("--endpoint", "prod", "--target-model", "Chicago_IL.tar.gz", ROW,
                        env={"AWS_ENDPOINT_URL": moto_endpoint})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # moto answers a canned body; a real endpoint answers the prediction
