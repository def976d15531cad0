"""W5, the real multi-model workload: Zipf traffic over many models through a cache that holds a tenth.

Ours runs its local endpoint over the model source; the baseline has SageMaker emulated in front of it
(bench.mme_platform), at the largest scale it survived in W3.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections import Counter

import httpx

from bench import loadgen, trace
from bench.loadgen import Connection, LoadResult
from bench.mme_platform import PlatformEmulator
from bench.models import ROW
from bench.results import Row
from bench.servers import Server
from bench.workloads import CSV, Bench, MiB, cpu_us, http_client, pair

CONCURRENCY = 16
TRACE_LENGTH = 400_000  # more than any run issues: runs end by time
WARM_UP_CALLS = 20
FIRST_PASS_S = 180.0  # bound of the pass over every model that fills the disk cache


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
    results: dict[str, dict[str, float]] = {}
    results["ours"], failed, tool = run_ours(bench, workers=1)
    if bench.mms_python is not None:
        results["baseline"] = _w5_baseline(bench)
    statuses = ", ".join(f"{count} × {status}" for status, count in sorted(failed.items()) if count)
    return _w5_rows(bench, results, f"ours: {statuses}" if statuses else "", f"ours: {tool}")


def run_ours(bench: Bench, workers: int) -> tuple[dict[str, float], Counter[int], str]:
    """Our local endpoint under W5 with `workers` serving processes: its numbers, failed statuses, tool."""
    scale = bench.scale
    ours_trace = trace.zipf_trace(scale.w5_models, TRACE_LENGTH)
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
        "--workers",
        str(workers),
    ]
    with bench.ours(*args, name=f"ours-w5-{workers}") as server, http_client(server) as client:
        # Idle means warmed up and empty: the first requests allocate once what every later one reuses
        # (thread stacks, XGBoost's and numpy's globals), which is the server's footprint, not the models'.
        warm = bench.models.target(0)
        for _ in range(WARM_UP_CALLS * workers):
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": warm}
            client.post("/invocations", content=ROW, headers=headers).raise_for_status()
        client.delete(f"/models/{warm}").raise_for_status()
        idle = server.pss_bytes()
        failed: Counter[int] = Counter()  # status -> answers, to say what went wrong if anything did

        async def first(conn: Connection, i: int) -> bool:
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": bench.models.target(i)}
            status, _ = await conn.request("POST", "/invocations", ROW, headers)
            return status == 200

        # W5 is measured as the issue that set its targets measured it: after a pass that put every
        # artifact in the disk cache, as on an endpoint that has run a while, so its misses are re-misses
        # (evicted from memory, current on disk), not a fresh server's first unpacks. That pass is a row too.
        warm_up = asyncio.run(loadgen.drive(server.url, first, CONCURRENCY, FIRST_PASS_S, scale.w5_models))
        before = _cache_counts(client)

        async def call(conn: Connection, i: int) -> bool:
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": bench.models.target(ours_trace[i])}
            status, _ = await conn.request("POST", "/invocations", ROW, headers)
            failed[status] += status != 200
            return status == 200

        used = server.cpu_seconds()
        with PeakMemory(server) as memory:
            if bench.wrk:
                names = [bench.models.target(i) for i in ours_trace]
                load = loadgen.run_wrk(
                    bench.wrk, server.url, "/invocations", ROW, CONCURRENCY, scale.w5_seconds, trace=names
                )
            else:
                load = asyncio.run(
                    loadgen.drive(server.url, call, CONCURRENCY, scale.w5_seconds, len(ours_trace))
                )
        used = server.cpu_seconds() - used
        after = _cache_counts(client)
    shutil.rmtree(cache, ignore_errors=True)
    hit_ratio = float("nan")
    if before is not None and after is not None:
        hits, misses = after[0] - before[0], after[1] - before[1]
        hit_ratio = hits / (hits + misses) if hits + misses else float("nan")
    numbers = _w5_numbers(
        load, hit_ratio, trace.lru_hit_ratio(ours_trace[: load.requests], scale.w5_cache), memory.peak, idle
    )
    numbers.update(
        budget_mib=budget / MiB,
        cpu_us=cpu_us(used, [load]),
        first_pass_rps=warm_up.rps,
        first_pass_errors=float(warm_up.errors),
        first_pass_requests=float(warm_up.requests),
    )
    tool = "wrk, bench/wrk.lua following the trace" if load.tool == "wrk" else "the bench's asyncio client"
    return numbers, failed, tool


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


def _w5_baseline(bench: Bench) -> dict[str, float]:
    """The baseline at the scale it survives: the cache W3 reached (at most a cap), 10× that in the source."""
    scale = bench.scale
    capacity = int(
        min(scale.w5_baseline_cache_max, bench.facts.get("baseline_resident", scale.w5_baseline_cache_max))
    )
    source = capacity * scale.w5_models // scale.w5_cache
    base_trace = trace.zipf_trace(source, TRACE_LENGTH)
    platform = PlatformEmulator(capacity, lambda name: str(bench.models.contract / name))
    with bench.mms() as server:
        idle = server.pss_bytes()

        async def call(conn: Connection, i: int) -> bool:
            return await platform.invoke(conn, bench.models.name(base_trace[i]), ROW)

        with PeakMemory(server) as memory:
            load = asyncio.run(
                loadgen.drive(server.url, call, CONCURRENCY, scale.w5_seconds, len(base_trace))
            )
    hit_ratio = platform.hits / max(1, platform.hits + platform.misses)
    numbers = _w5_numbers(
        load, hit_ratio, trace.lru_hit_ratio(base_trace[: load.requests], capacity), memory.peak, idle
    )
    numbers.update(models=float(source), cache=float(capacity))
    return numbers


def _w5_rows(bench: Bench, results: dict[str, dict[str, float]], errors_note: str, tool: str) -> list[Row]:
    scale = bench.scale
    base = results.get("baseline")
    name = f"W5 MME, {scale.w5_models:,} models, cache {scale.w5_cache:,}"
    note = tool
    if base:
        # The baseline ran smaller (what it survives): the name says so wherever the row is shown.
        name = f"W5 MME, ours {scale.w5_models:,} models / cache {scale.w5_cache:,}"
        name += f", baseline {int(base['models']):,} / {int(base['cache']):,}"
        note = f"{tool}; baseline at the largest scale it survived in W3"
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
        values = {side: numbers[key] for side, numbers in results.items()}
        # Memory grows with the cache's size, and the baseline's cache is smaller: no ratio for it.
        comparable = unit != "MiB"
        row_note = {"rps": note, "errors": errors_note}.get(key, "")
        rows.append(pair(f"w5.{key}", name, metric, unit, values, higher, row_note, comparable))
    ours = results["ours"]
    rows.append(
        Row(
            "w5.first_pass",
            name,
            "first pass: each model once, cold disk cache (req/s)",
            "req/s",
            ours["first_pass_rps"],
            None,
            True,
            f"before the measured run; {ours['first_pass_requests']:,.0f} requests, "
            f"{ours['first_pass_errors']:,.0f} errors, the bench's asyncio client",
        )
    )
    rows.append(
        Row(
            "w5.cpu",
            name,
            "server CPU per request",
            "µs",
            results["ours"]["cpu_us"],
            None,
            False,
            "user + system of every server process (compilers too), over the run",
        )
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
