"""The load generator: wrk with a Lua script when it is there (apt installs it), else a Python client.

Both drive N keep-alive connections for a fixed time and report the same fields. The Python client is
also the building block of workloads that decide each request from the last answer (W5's platform).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk.lua"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def ensure_wrk() -> str | None:
    """wrk's path; installs Debian's package once if missing and apt is there, else None (Python client)."""
    found = shutil.which("wrk")
    if found or not shutil.which("apt-get"):
        return found
    print("bench: installing wrk with apt-get ...", flush=True)
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            return None
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    url: str,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    target: str = "",
    trace: list[str] | None = None,
    content_type: str = "text/csv",
) -> LoadResult:
    """wrk's run; with `trace`, each request's target model is the trace's next name (see wrk.lua)."""
    with tempfile.NamedTemporaryFile(suffix=".body") as f, tempfile.NamedTemporaryFile("w") as names:
        f.write(body)
        f.flush()
        threads = min(concurrency, 2)
        if trace is not None:
            names.write("\n".join(trace) + "\n")
            names.flush()
            target = f"@{names.name}"
        cmd = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s"]
        cmd += ["-s", str(WRK_SCRIPT), url, "--", path, f.name, content_type, target, str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("{"))
    data = json.loads(line)
    return LoadResult(
        requests=data["requests"],
        errors=data["errors"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        tool="wrk",
    )


class Connection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for the two servers under test."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        assert self._reader is not None
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            payload = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        return status, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


Call = Callable[[Connection, int], Awaitable[bool]]


async def drive(url: str, call: Call, concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """Run `call(connection, i)` from `concurrency` workers until time or count runs out.

    `call` returns whether the request succeeded; an exception counts as an error too.
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors, issued
        conn = Connection(url)
        while issued < max_requests and time.perf_counter() < deadline:
            i = issued
            issued += 1
            started = time.perf_counter()
            try:
                ok = await call(conn, i)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        tool="python",
    )


def run_python(
    url: str,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    target: str = "",
    content_type: str = "text/csv",
) -> LoadResult:
    headers = {"Content-Type": content_type}
    if target:
        headers["X-Amzn-SageMaker-Target-Model"] = target

    async def call(conn: Connection, _: int) -> bool:
        status, _payload = await conn.request("POST", path, body, headers)
        return status == 200

    return asyncio.run(drive(url, call, concurrency, seconds, max_requests=10_000_000))


def fixed_load(
    wrk: str | None,
    url: str,
    path: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    target: str = "",
    content_type: str = "text/csv",
) -> LoadResult:
    """The same POST from `concurrency` connections for `seconds`: wrk if given, else the Python client."""
    if wrk:
        return run_wrk(wrk, url, path, body, concurrency, seconds, target, content_type=content_type)
    return run_python(url, path, body, concurrency, seconds, target, content_type)
