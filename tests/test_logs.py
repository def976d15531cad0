"""Server logs: one line per request and per model event, JSON that parses line by line, no bodies."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"
SECRET = "0.123456789,0.987654321,0.5,0.5,0.5,0.5"  # a body that must never reach the log


@pytest.fixture
def folder(tmp_path: Path, artifact_bytes) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    for seed in range(2):
        (root / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    return root


def traffic(url: str) -> None:
    """Two loads, an eviction, a failed load, a client error, an unload, health checks and a scrape."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for target, body, status in [
            ("m0.tar.gz", SECRET, 200),
            ("m1.tar.gz", ROW, 200),  # evicts m0: --max-models 1
            ("Missing.tar.gz", ROW, 400),
            ("m1.tar.gz", "not,numbers," + SECRET, 424),
        ]:
            headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
            assert client.post("/invocations", content=body, headers=headers).status_code == status
        assert client.delete("/models/m1.tar.gz").status_code == 200
        assert client.get("/ping").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_json_logs_parse_line_by_line(start_server, folder):
    server = start_server("--models", str(folder), "--max-models", "1", "--log-format", "json")
    traffic(server.url)
    output = server.stop()

    assert SECRET not in output and "not,numbers" not in output
    assert "Traceback" not in output  # client errors and a missing model are no stack traces
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one JSON object
    for line in lines:
        assert {"ts", "level"} <= line.keys() and ("event" in line or "msg" in line), line
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)  # uvicorn's, same format

    [config] = [line for line in lines if line.get("event") == "config"]
    assert config["log_format"] == "json" and config["max_models"] == 1

    requests = [line for line in lines if line.get("event") == "request"]
    assert [(r["method"], r["path"], r["model"], r["status"]) for r in requests] == [
        ("POST", "/invocations", "m0.tar.gz", 200),
        ("POST", "/invocations", "m1.tar.gz", 200),
        ("POST", "/invocations", "Missing.tar.gz", 400),
        ("POST", "/invocations", "m1.tar.gz", 424),
        ("DELETE", "/models/m1.tar.gz", "m1.tar.gz", 200),
    ]  # /ping and /metrics are not access-logged at info
    first = requests[0]
    assert first["bytes_in"] == len(SECRET) and first["bytes_out"] > 0 and first["ms"] > 0

    events = [(line["event"], line["model"]) for line in lines if line.get("logger") == "mme.models"]
    assert events == [
        ("load", "m0.tar.gz"),
        ("evict", "m0.tar.gz"),
        ("load", "m1.tar.gz"),
        ("load_failed", "Missing.tar.gz"),  # evicting nothing: m1 stays resident
        ("unload", "m1.tar.gz"),
    ]
    by_event = {line["event"]: line for line in lines if line.get("logger") == "mme.models"}
    assert by_event["evict"]["reason"] == "max_models"
    assert "not found" in by_event["load_failed"]["error"] and by_event["load_failed"]["level"] == "warning"
    assert by_event["load"]["bytes"] > 0 and by_event["unload"]["seconds"] >= 0


def test_text_logs_and_debug_level_show_health_checks(start_server, folder):
    server = start_server("--models", str(folder), "--max-models", "1", "--log-level", "debug")
    traffic(server.url)
    output = server.stop()

    assert SECRET not in output and "Traceback" not in output
    request_lines = [line for line in output.splitlines() if " mme.access: request " in line]
    assert len(request_lines) >= 7  # the five above, /ping and /metrics at debug, and the fixture's pings
    assert any(" path=/ping " in line and " status=200 " in line for line in request_lines)
    assert any(
        " method=POST path=/invocations model=Missing.tar.gz status=400 " in line for line in request_lines
    )
    assert any(" mme.models: evict model=m0.tar.gz reason=max_models" in line for line in output.splitlines())
    failed = [line for line in output.splitlines() if " mme.models: load_failed " in line]
    assert len(failed) == 1 and failed[0].split(" ")[1] == "WARNING"
    assert 'error="model' in failed[0]  # a value with spaces is quoted, so the line stays one line
