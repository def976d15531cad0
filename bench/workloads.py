"""W1-W5 and the floors: each starts the servers it needs, one at a time, and returns report rows."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import psutil

from bench import floors, loadgen, servers, trace
from bench.loadgen import Connection, LoadResult
from bench.mme_platform import PlatformEmulator
from bench.models import ROW, ModelSet, csv_rows
from bench.results import Row
from bench.servers import Server

MiB = 1024**2
GiB = 1024**3
CSV = {"Content-Type": "text/csv"}


@dataclass(frozen=True)
class Scale:
    w1_seconds: float
    w2_models: int
    w3_ours: tuple[int, ...]  # checkpoints of one loading pass
    w3_baseline_max: int
    w5_models: int
    w5_cache: int
    w5_seconds: float
    w5_baseline_cache_max: int
    floor_seconds: float


FULL = Scale(10, 20, (1_000, 10_000), 200, 10_000, 1_000, 60, 100, 5)
QUICK = Scale(3, 5, (1_000,), 20, 2_000, 200, 15, 20, 2)
# The baseline stops adding models when the machine has less than this left.
BASELINE_MIN_AVAILABLE = 4 * GiB
W5_TRACE_LENGTH = 400_000


@dataclass
class Bench:
    work: Path
    models: ModelSet
    wrk: str | None
    mms_python: Path | None  # None: the baseline is skipped
    scale: Scale
    facts: dict[str, float] = field(default_factory=dict)

    def ours(self, *args: str, name: str = "ours") -> Server:
        return servers.start_ours(self.work, ["--model-root", str(self.models.contract), *args], name)

    def mms(self) -> Server:
        assert self.mms_python is not None
        return servers.start_mms(self.work, self.mms_python)

    def sides(self) -> Iterator[tuple[str, Callable[[], Server]]]:
        yield "ours", self.ours
        if self.mms_python is not None:
            yield "baseline", self.mms


def _load(client: httpx.Client, models: ModelSet, i: int, name: str | None = None) -> httpx.Response:
    return client.post("/models", json={"model_name": name or models.name(i), "url": models.url(i)})


def _invoke(client: httpx.Client, name: str, body: bytes = ROW) -> httpx.Response:
    return client.post(f"/models/{name}/invoke", content=body, headers=CSV)


def _client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def _pair(
    key: str,
    workload: str,
    metric: str,
    unit: str,
    values: dict[str, float],
    higher: bool,
    note: str = "",
    comparable: bool = True,
) -> Row:
    return Row(
        key, workload, metric, unit, values.get("ours"), values.get("baseline"), higher, note, comparable
    )


# --- W1 warm invoke and W4 batch: one server start per side --------------------------------------------
def w1_w4(bench: Bench) -> list[Row]:
    w1: dict[int, dict[str, LoadResult]] = {1: {}, 16: {}}
    w4: dict[int, dict[str, float]] = {1_000: {}, 10_000: {}}
    for side, start in bench.sides():
        with start() as server, _client(server) as client:
            _load(client, bench.models, 0, "warm").raise_for_status()
            loadgen.fixed_load(bench.wrk, server.url, "/models/warm/invoke", ROW, 4, 1)  # warm-up
            for concurrency in w1:
                w1[concurrency][side] = loadgen.fixed_load(
                    bench.wrk, server.url, "/models/warm/invoke", ROW, concurrency, bench.scale.w1_seconds
                )
            for rows in w4:
                body = csv_rows(rows)
                _invoke(client, "warm", body).raise_for_status()
                w4[rows][side] = statistics.median(
                    _timed(lambda b=body: _invoke(client, "warm", b)) for _ in range(5)
                )
    note = f"{next(iter(w1[1].values())).tool}, {bench.scale.w1_seconds:g} s"
    out = []
    for c, by_side in w1.items():
        for key, attribute, metric, unit, higher in (
            (f"rps{c}", "rps", f"req/s, concurrency {c}", "req/s", True),
            (f"p50_{c}", "p50_ms", f"p50, concurrency {c}", "ms", False),
            (f"p99_{c}", "p99_ms", f"p99, concurrency {c}", "ms", False),
            (f"err{c}", "errors", f"errors, concurrency {c}", "count", False),
        ):
            values = {side: float(getattr(result, attribute)) for side, result in by_side.items()}
            out.append(
                _pair(f"w1.{key}", "W1 warm invoke", metric, unit, values, higher, note if higher else "")
            )
    for rows, by_side in w4.items():
        values = {side: seconds * 1e3 for side, seconds in by_side.items()}
        out.append(
            _pair(
                f"w4.{rows}", "W4 batch", f"one invoke of {rows:,} rows", "ms", values, False, "median of 5"
            )
        )
    return out


def _timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    call().raise_for_status()
    return time.perf_counter() - started


# --- W2 cold load ------------------------------------------------------------------------------------
def w2(bench: Bench) -> list[Row]:
    n = bench.scale.w2_models
    medians: dict[str, float] = {}
    for side, start in bench.sides():
        with start() as server, _client(server) as client:
            samples = []
            for i in range(n):
                started = time.perf_counter()
                response = _load(client, bench.models, i)
                response.raise_for_status()
                _invoke(client, bench.models.name(i)).raise_for_status()
                samples.append(time.perf_counter() - started)
                if side == "ours":
                    size = response.json()["sizeBytes"]
                    bench.facts["model_bytes"] = max(bench.facts.get("model_bytes", 0), size)
            medians[side] = statistics.median(samples)
    rows = [
        _pair(
            "w2.load",
            "W2 cold load",
            f"POST /models + first invoke, median of {n}",
            "ms",
            {s: v * 1e3 for s, v in medians.items()},
            False,
        )
    ]
    folder = _endpoint_cold(bench, [], n)
    rows.append(
        Row(
            "w2.folder",
            "W2 cold load",
            f"local endpoint from a folder, median of {n}",
            "ms",
            folder * 1e3,
            None,
            False,
            "/invocations, TargetModel not yet resident",
        )
    )
    with _moto() as (endpoint, bucket):
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        for i in range(n):
            key = bench.models.target(i)
            s3.upload_file(str(bench.models.artifacts / key), bucket, f"models/{key}")
        s3_median = _endpoint_cold(bench, ["--s3-endpoint-url", endpoint], n, f"s3://{bucket}/models/")
    rows.append(
        Row(
            "w2.s3",
            "W2 cold load",
            f"local endpoint from S3 (moto), median of {n}",
            "ms",
            s3_median * 1e3,
            None,
            False,
            "moto server on 127.0.0.1",
        )
    )
    return rows


def _endpoint_cold(bench: Bench, args: list[str], n: int, source: str | None = None) -> float:
    cache = bench.work / "endpoint-cache"
    shutil.rmtree(cache, ignore_errors=True)
    source = source or str(bench.models.artifacts)
    server = bench.ours("--models", source, "--cache-dir", str(cache), *args, name="ours-endpoint")
    with server, _client(server) as client:
        samples = []
        for i in range(n):
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": bench.models.target(i)}
            samples.append(_timed(lambda h=headers: client.post("/invocations", content=ROW, headers=h)))
    shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(samples)


@contextmanager
def _moto() -> Iterator[tuple[str, str]]:
    port = servers.free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        yield endpoint, "bench"
    finally:
        proc.terminate()
        proc.wait(10)


# --- W3 residency ------------------------------------------------------------------------------------
def w3(bench: Bench) -> list[Row]:
    checkpoints = {"ours": bench.scale.w3_ours, "baseline": (bench.scale.w3_baseline_max,)}
    found: dict[str, dict[int, dict[str, float]]] = {}
    for side, start in bench.sides():
        with start() as server, _client(server) as client:
            found[side] = _fill(server, client, bench.models, checkpoints[side], side == "baseline")
    base = next(iter(found.get("baseline", {}).values()), None)
    if base is not None:
        bench.facts["baseline_resident"] = base["count"]
    rows = []
    for count, ours in found["ours"].items():
        values = (
            {"ours": ours}
            if base is None or count != bench.scale.w3_ours[0]
            else {"ours": ours, "baseline": base}
        )
        same = "baseline" not in values or int(base["count"]) == count
        workload = f"W3 residency, {count:,} models"
        note = f"baseline: {int(base['count'])} models, its memory cap" if "baseline" in values else ""
        for key, metric, unit, comparable in (
            ("count", "models loaded", "count", False),
            ("seconds", "total load time", "s", same),
            ("per_model_ms", "load time per model", "ms", True),
            ("failures", "failures", "count", True),
            ("pss_mib", "memory of all server processes (PSS)", "MiB", same),
            ("per_model_kib", "memory per model", "KiB", True),
        ):
            pair = {side: numbers[key] for side, numbers in values.items()}
            higher = key == "count"
            rows.append(
                _pair(
                    f"w3.{count}.{key}",
                    workload,
                    metric,
                    unit,
                    pair,
                    higher,
                    note if key == "count" else "",
                    comparable,
                )
            )
    return rows


def _fill(
    server: Server, client: httpx.Client, models: ModelSet, checkpoints: tuple[int, ...], capped: bool
) -> dict[int, dict[str, float]]:
    """Load models one after another; at each checkpoint (or when memory runs short) note time and memory."""
    idle = server.pss_bytes()
    load_seconds = 0.0
    failures = 0
    points: dict[int, dict[str, float]] = {}
    for i in range(checkpoints[-1]):
        started = time.perf_counter()
        try:
            failures += _load(client, models, i).status_code != 200
        except httpx.HTTPError:
            failures += 1
        load_seconds += time.perf_counter() - started
        count = i + 1
        short = capped and psutil.virtual_memory().available < BASELINE_MIN_AVAILABLE
        if count in checkpoints or short:
            pss = server.pss_bytes()
            points[checkpoints[0] if capped else count] = {
                "count": count,
                "seconds": load_seconds,
                "per_model_ms": load_seconds / count * 1e3,
                "failures": failures,
                "pss_mib": pss / MiB,
                "per_model_kib": (pss - idle) / count / 1024,
            }
        if short:
            break
    return points


# --- W5 the MME workload -----------------------------------------------------------------------------
class PeakMemory:
    """Samples a server's PSS every half second in a thread; `peak` is the largest seen."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.server.pss_bytes())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.pss_bytes())


def _cache_counts(client: httpx.Client) -> tuple[float, float] | None:
    """Our server's (hits, misses) from /metrics, or None if it has no such counters."""
    response = client.get("/metrics")
    if response.status_code != 200:
        return None
    counts = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("mme_model_cache_hits_total", "mme_model_cache_misses_total"):
            counts[name] = float(value)
    if len(counts) != 2:
        return None
    return counts["mme_model_cache_hits_total"], counts["mme_model_cache_misses_total"]


def w5(bench: Bench) -> list[Row]:
    scale = bench.scale
    concurrency = 16
    results: dict[str, dict[str, float]] = {}
    ours_trace = trace.zipf_trace(scale.w5_models, W5_TRACE_LENGTH)
    budget = int(scale.w5_cache * bench.facts.get("model_bytes", 72 * 1024))
    cache = bench.work / "w5-cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = [
        "--models",
        str(bench.models.artifacts),
        "--cache-dir",
        str(cache),
        "--max-models",
        str(scale.w5_cache),
        "--memory-budget",
        str(budget),
        "--revalidate-after",
        "off",
    ]
    with bench.ours(*args, name="ours-w5") as server, _client(server) as client:
        idle = server.pss_bytes()
        before = _cache_counts(client)

        async def call(conn: Connection, i: int) -> bool:
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": bench.models.target(ours_trace[i])}
            status, _ = await conn.request("POST", "/invocations", ROW, headers)
            return status == 200

        with PeakMemory(server) as memory:
            load = asyncio.run(
                loadgen.drive(server.url, call, concurrency, scale.w5_seconds, len(ours_trace))
            )
        after = _cache_counts(client)
        hit_ratio = float("nan")
        if before is not None and after is not None:
            hits, misses = after[0] - before[0], after[1] - before[1]
            hit_ratio = hits / (hits + misses) if hits + misses else float("nan")
        results["ours"] = _w5_numbers(
            load,
            hit_ratio,
            trace.lru_hit_ratio(ours_trace[: load.requests], scale.w5_cache),
            memory.peak,
            idle,
        )
        results["ours"]["budget_mib"] = budget / MiB
    shutil.rmtree(cache, ignore_errors=True)
    if bench.mms_python is not None:
        results["baseline"] = _w5_baseline(bench, concurrency)
    return _w5_rows(bench, results)


def _w5_numbers(load: LoadResult, hit_ratio: float, lru: float, peak: int, idle: int) -> dict[str, float]:
    return {
        "rps": load.rps,
        "p50": load.p50_ms,
        "p99": load.p99_ms,
        "errors": float(load.errors),
        "requests": float(load.requests),
        "hit_ratio": hit_ratio * 100,
        "lru_hit_ratio": lru * 100,
        "peak_mib": peak / MiB,
        "model_peak_mib": (peak - idle) / MiB,
    }


def _w5_baseline(bench: Bench, concurrency: int) -> dict[str, float]:
    """The baseline at the scale it survives: the cache W3 reached (at most a cap), 10× that in the source."""
    scale = bench.scale
    capacity = int(
        min(scale.w5_baseline_cache_max, bench.facts.get("baseline_resident", scale.w5_baseline_cache_max))
    )
    source = capacity * scale.w5_models // scale.w5_cache
    base_trace = trace.zipf_trace(source, W5_TRACE_LENGTH)
    platform = PlatformEmulator(capacity, lambda name: str(bench.models.contract / name))
    with bench.mms() as server:
        idle = server.pss_bytes()

        async def call(conn: Connection, i: int) -> bool:
            return await platform.invoke(conn, bench.models.name(base_trace[i]), ROW)

        with PeakMemory(server) as memory:
            load = asyncio.run(
                loadgen.drive(server.url, call, concurrency, scale.w5_seconds, len(base_trace))
            )
    hit_ratio = platform.hits / max(1, platform.hits + platform.misses)
    numbers = _w5_numbers(
        load, hit_ratio, trace.lru_hit_ratio(base_trace[: load.requests], capacity), memory.peak, idle
    )
    numbers.update(models=float(source), cache=float(capacity))
    return numbers


def _w5_rows(bench: Bench, results: dict[str, dict[str, float]]) -> list[Row]:
    scale = bench.scale
    base = results.get("baseline")
    note = f"baseline: {int(base['models']):,} models, cache {int(base['cache'])}" if base else ""
    name = f"W5 MME, {scale.w5_models:,} models, cache {scale.w5_cache:,}"
    rows = []
    for key, metric, unit, higher in (
        ("rps", "req/s, Zipf s=1.1, concurrency 16", "req/s", True),
        ("p50", "p50", "ms", False),
        ("p99", "p99", "ms", False),
        ("errors", "errors", "count", False),
        ("hit_ratio", "hit ratio", "%", True),
        ("lru_hit_ratio", "exact LRU hit ratio, same trace", "%", True),
        ("peak_mib", "peak memory of all server processes (PSS)", "MiB", False),
        ("model_peak_mib", "peak memory above the idle server", "MiB", False),
    ):
        pair = {side: numbers[key] for side, numbers in results.items()}
        # Memory grows with the cache's size, and the baseline's cache is smaller: no ratio for it.
        comparable = unit != "MiB"
        rows.append(
            _pair(f"w5.{key}", name, metric, unit, pair, higher, note if key == "rps" else "", comparable)
        )
    rows.append(
        Row(
            "w5.budget",
            name,
            "memory budget (--memory-budget)",
            "MiB",
            results["ours"]["budget_mib"],
            None,
            False,
            f"--max-models {scale.w5_cache}",
        )
    )
    return rows


# --- floors ------------------------------------------------------------------------------------------
def floor_rows(bench: Bench) -> list[Row]:
    seconds = bench.scale.floor_seconds
    predict_us = floors.inplace_predict_us(
        bench.models.contract / bench.models.name(0) / "xgboost-model", 5000
    )
    rows = [
        Row(
            "floor.predict",
            "Floor",
            "Booster.inplace_predict, one row, in-process",
            "ms",
            predict_us / 1e3,
            None,
            False,
            "median of 5,000",
        )
    ]
    port = servers.free_port()
    cmd = [sys.executable, "-m", "bench.floor_app", str(port)]
    server = servers.spawn(
        "floor",
        cmd,
        bench.work / "logs" / "floor.log",
        dict(os.environ),
        Path(__file__).resolve().parent.parent,
        port,
    )
    with server:
        for concurrency in (1, 16):
            result = loadgen.fixed_load(bench.wrk, server.url, "/", ROW, concurrency, seconds)
            rows.append(
                Row(
                    f"floor.rps{concurrency}",
                    "Floor",
                    f"empty ASGI reply, req/s, concurrency {concurrency}",
                    "req/s",
                    result.rps,
                    None,
                    True,
                    "uvicorn + httptools + uvloop",
                )
            )
            rows.append(
                Row(
                    f"floor.p50_{concurrency}",
                    "Floor",
                    f"empty ASGI reply, p50, concurrency {concurrency}",
                    "ms",
                    result.p50_ms,
                    None,
                    False,
                )
            )
    return rows
