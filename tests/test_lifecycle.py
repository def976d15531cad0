"""SIGTERM: stop accepting, finish every request in flight, clean up, exit 0; bounded by the timeout."""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROW = "0.5,0.25,0.75,0.1,0.9,0.3\n"
ROWS = 4000  # ~100 KB: over the inline limit, so these predict on the worker threads
CLIENTS = 6
TARGET = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "m0.tar.gz"}


@pytest.fixture
def folder(tmp_path: Path, artifact_bytes) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "m0.tar.gz").write_bytes(artifact_bytes(0))
    return root


def held_body(release: threading.Event) -> Iterator[bytes]:
    """Half a batch, then the rest once `release` is set: the request stays in flight until then."""
    yield (ROW * (ROWS // 2)).encode()
    release.wait(60)
    yield (ROW * (ROWS - ROWS // 2)).encode()


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "mme_requests_in_flight")
    return family.samples[0].value


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def ping(connection: http.client.HTTPConnection) -> int | str:
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        return response.status
    except (http.client.RemoteDisconnected, ConnectionError):
        return "closed"


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_finishes_every_request_in_flight(start_server, folder, tmp_path: Path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = start_server("--models", str(folder), "--timeout", "30", env={"TMPDIR": str(temp)})
    assert [p.name[:10] for p in temp.iterdir()] == ["mme-cache-"]  # the disk cache, to be removed
    release = threading.Event()
    warmed = threading.Semaphore(0)

    def client_burst() -> list[httpx.Response]:
        # One keep-alive connection per client: a warm-up call, then a call held in flight.
        with httpx.Client(base_url=server.url, timeout=60) as client:
            first = client.post("/invocations", content=ROW * ROWS, headers=TARGET)
            warmed.release()
            held = client.post("/invocations", content=held_body(release), headers=TARGET)
            return [first, held]

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client_burst) for _ in range(CLIENTS)]
        try:
            for _ in range(CLIENTS):
                assert warmed.acquire(timeout=60)
            # Only the held calls are left to be in flight (plus the scrape asking).
            wait_until(lambda: in_flight(server.url) == CLIENTS + 1, "every held call in flight")
            idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            assert ping(idle) == 200
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining signal=SIGTERM" in server.output(), "the drain to start")
            # Until uvicorn closes idle keep-alive connections (its next 0.1 s tick), a health check
            # on one is answered, and must be red; after, the connection is gone. Never green.
            assert ping(idle) in (503, "closed")
            wait_until(lambda: not accepts_connections(server.port), "listening socket closed")
            assert server.proc.poll() is None  # still up: its requests are not done
        finally:
            release.set()
        responses = [r for f in futures for r in f.result()]

    assert [r.status_code for r in responses] == [200] * (2 * CLIENTS)
    assert all(len(r.json()) == ROWS for r in responses)
    assert server.proc.wait(timeout=60) == 0
    output = server.output()
    assert "Traceback" not in output
    # The held calls, and maybe the last scrape whose answer was sent but whose handler had not returned.
    drained = int(re.search(r"draining signal=SIGTERM in_flight=(\d+)", output).group(1))
    assert drained in (CLIENTS, CLIENTS + 1)
    assert list(temp.iterdir()) == []


def test_drain_is_bounded_by_the_drain_timeout(start_server, folder):
    server = start_server("--models", str(folder), env={"MME_DRAIN_TIMEOUT": "1"})
    never = threading.Event()

    def stuck() -> httpx.Response:
        return httpx.post(server.url + "/invocations", content=held_body(never), headers=TARGET, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(stuck)
        try:
            wait_until(lambda: in_flight(server.url) == 2, "the stuck request in flight")
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=30) == 0
        finally:
            never.set()
        # uvicorn answers a request it had to cancel with a 500: an answer, never a hang.
        assert future.result().status_code == 500
    assert "timeout graceful shutdown exceeded" in server.output()
