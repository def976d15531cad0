"""Serving processes: W1, W5, W5 in MME contract mode and W3 (memory per model), with 1 and 2 workers.

Each row compares our server with 2 workers against itself with 1, measured in the same run: the
"peer" column is the 1-worker server. CPU per request is every server process's user + system time
over the measured requests, which is what an instance's cores are divided by.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from contextlib import ExitStack

from bench import loadgen, trace, w5
from bench.loadgen import Connection, LoadResult
from bench.mme_platform import PlatformEmulator
from bench.models import ROW
from bench.results import Row
from bench.workloads import CSV, W1_ROUND_SECONDS, WARM, Bench, MiB, cpu_us, http_client, load_model

WORKERS = (1, 2)
PEER = "1 worker"
W1_CONCURRENCY = 16
# After W3's models are loaded, every one is invoked this many times over W1_CONCURRENCY connections,
# which the kernel spread over the workers: with 2, each worker then likely holds its own copy of each
# model (all but ~1% of them), as on a busy endpoint.
INVOKES_PER_MODEL = 8
LOAD_CONCURRENCY = 4
JSON = {"Content-Type": "application/json"}
CONTRACT_WARM_UP_S = 10.0


def scaling_rows(bench: Bench) -> list[Row]:
    found: dict[str, dict[int, float]] = {}
    scale = bench.scale

    def keep(numbers: dict[str, float], workers: int, prefix: str) -> None:
        for key, value in numbers.items():
            found.setdefault(f"{prefix}.{key}", {})[workers] = value

    found.update(_w1(bench))
    for workers in WORKERS:
        keep(w5.run_ours(bench, workers)[0], workers, "w5")
        keep(_w5_contract(bench, workers), workers, "w5c")
        keep(_memory(bench, workers, scale.w3_ours[-1]), workers, "memory")
    return _rows(bench, found)


def _w1(bench: Bench) -> dict[str, dict[int, float]]:
    """W1 at concurrency 16 on a 1-worker and a 2-worker server, in alternating rounds."""
    rounds = max(1, round(bench.scale.w1_seconds / W1_ROUND_SECONDS))
    results: dict[int, list[LoadResult]] = {n: [] for n in WORKERS}
    cpu = dict.fromkeys(WORKERS, 0.0)
    with ExitStack() as stack:
        servers = {
            n: stack.enter_context(bench.ours("--workers", str(n), name=f"ours-w1-{n}")) for n in WORKERS
        }
        for server in servers.values():
            with http_client(server) as client:
                load_model(client, bench.models, 0, "warm").raise_for_status()
            loadgen.fixed_load(bench.wrk, server.url, WARM, ROW, W1_CONCURRENCY, 1)  # every worker's copy
        for _ in range(rounds):
            for n, server in servers.items():
                used = server.cpu_seconds()
                result = loadgen.fixed_load(
                    bench.wrk, server.url, WARM, ROW, W1_CONCURRENCY, W1_ROUND_SECONDS
                )
                cpu[n] += server.cpu_seconds() - used
                results[n].append(result)
    return {
        "w1.rps": {n: statistics.median(r.rps for r in rs) for n, rs in results.items()},
        "w1.p99": {n: statistics.median(r.p99_ms for r in rs) for n, rs in results.items()},
        "w1.errors": {n: float(sum(r.errors for r in rs)) for n, rs in results.items()},
        "w1.cpu_us": {n: cpu_us(cpu[n], results[n]) for n in WORKERS},
    }


def contract_args(budget: int, workers: int) -> tuple[str, ...]:
    """Our server as a multi-model endpoint runs it: full, it answers 507 and the platform unloads (the
    SAGEMAKER_MULTI_MODEL default). Under its own LRU it would drop models the platform counts as loaded."""
    return ("--memory-budget", str(budget), "--eviction", "reject", "--workers", str(workers))


def _w5_contract(bench: Bench, workers: int) -> dict[str, float]:
    """W5's trace in contract mode: the platform emulator loads on a miss and unloads on 507."""
    scale = bench.scale
    budget = int(scale.w5_cache * bench.facts.get("model_bytes", 72 * 1024))
    names = trace.zipf_trace(scale.w5_models, w5.TRACE_LENGTH)
    platform = PlatformEmulator(scale.w5_cache, lambda name: str(bench.models.contract / name))
    with bench.ours(*contract_args(budget, workers), name=f"ours-w5c-{workers}") as server:
        start = 0

        async def call(conn: Connection, i: int) -> bool:
            return await platform.invoke(conn, bench.models.name(names[start + i]), ROW)

        warm_up = asyncio.run(
            loadgen.drive(server.url, call, w5.CONCURRENCY, CONTRACT_WARM_UP_S, len(names) // 2)
        )
        start = warm_up.requests
        platform.hits = platform.misses = 0
        platform.failures.clear()
        used = server.cpu_seconds()
        load = asyncio.run(
            loadgen.drive(server.url, call, w5.CONCURRENCY, scale.w5_seconds, len(names) - start)
        )
        used = server.cpu_seconds() - used
    if load.errors:
        named = ", ".join(f"{count} × {what}" for what, count in platform.failures.most_common())
        print(f"bench: W5 contract mode, {workers} worker(s), {load.errors} errors: {named}", flush=True)
    lru = trace.lru_hit_ratio(names[: start + load.requests], scale.w5_cache)
    return {
        "rps": load.rps,
        "p50": load.p50_ms,
        "p99": load.p99_ms,
        "errors": float(load.errors),
        "hit_ratio": platform.hits / max(1, platform.hits + platform.misses) * 100,
        "lru_hit_ratio": lru * 100,
        "cpu_us": cpu_us(used, [load]),
    }


def _memory(bench: Bench, workers: int, count: int) -> dict[str, float]:
    """W3 through every worker: `count` models loaded, then each invoked over several connections (so
    that with 2 workers each is likely to hold its own copy); PSS in all, and per model above idle."""
    with bench.ours("--workers", str(workers), name=f"ours-memory-{workers}") as server:
        with http_client(server) as client:
            load_model(client, bench.models, 0, "idle").raise_for_status()
            loadgen.fixed_load(bench.wrk, server.url, "/models/idle/invoke", ROW, W1_CONCURRENCY, 1)
            client.delete("/models/idle").raise_for_status()
        idle = server.pss_bytes()
        bodies = [json.dumps({"model_name": bench.models.name(i), "url": bench.models.url(i)}).encode()
                  for i in range(count)]  # fmt: skip
        paths = [f"/models/{bench.models.name(i)}/invoke" for i in range(count)]

        async def post(conn: Connection, i: int) -> bool:
            try:
                status, _ = await conn.request("POST", "/models", bodies[i], JSON)
                return status == 200
            finally:
                conn.close()  # a fresh connection per request spreads them over the workers

        # Keep-alive here: a fresh connection for each of these would run the client out of ports.
        async def call(conn: Connection, i: int) -> bool:
            status, _ = await conn.request("POST", paths[i % count], ROW, CSV)
            return status == 200

        loads = asyncio.run(loadgen.drive(server.url, post, LOAD_CONCURRENCY, 600, count))
        invokes = asyncio.run(loadgen.drive(server.url, call, W1_CONCURRENCY, 600, count * INVOKES_PER_MODEL))
        pss = server.pss_bytes()
    return {
        "per_model_kib": (pss - idle) / count / 1024,
        "pss_mib": pss / MiB,
        "load_ms": loads.seconds / max(1, loads.requests) * 1e3,
        "errors": float(loads.errors + invokes.errors),
    }


# (key, metric, unit, higher is better) of each W5 variant's rows.
_W5_METRICS = (
    ("rps", "req/s", "req/s", True),
    ("p50", "p50", "ms", False),
    ("p99", "p99", "ms", False),
    ("errors", "errors", "count", False),
    ("hit_ratio", "hit ratio", "%", True),
    ("lru_hit_ratio", "exact LRU hit ratio", "%", True),
    ("cpu_us", "server CPU per request", "µs", False),
)


def _rows(bench: Bench, found: dict[str, dict[int, float]]) -> list[Row]:
    scale = bench.scale
    w5_name = f"2 workers vs 1, {scale.w5_models:,} models, cache {scale.w5_cache:,}"
    groups = {
        "w1": ("W1, 2 workers vs 1", (
            ("rps", "req/s, concurrency 16", "req/s", True),
            ("p99", "p99, concurrency 16", "ms", False),
            ("errors", "errors", "count", False),
            ("cpu_us", "server CPU per request", "µs", False),
        ), {"rps": "wrk on the same 2 cores", "cpu_us": "every server process"}),
        "w5": (f"W5 local endpoint, {w5_name}", _W5_METRICS, {
            "rps": "wrk, the trace",
            "hit_ratio": "each worker's LRU sees the requests it answers",
            "lru_hit_ratio": "one LRU of the cache's size over the same requests",
            "cpu_us": "every server process",
        }),
        "w5c": (f"W5 contract mode, {w5_name}", _W5_METRICS, {
            "rps": "the platform emulator (bench's asyncio client): misses are POST /models, 507 unloads",
            "hit_ratio": "resident on arrival, as the emulator saw it",
            "cpu_us": "every server process",
        }),
        "memory": (f"W3 through every worker, {scale.w3_ours[-1]:,} models, 2 workers vs 1", (
            ("pss_mib", "PSS of all server processes", "MiB", False),
            ("per_model_kib", "memory per model", "KiB", False),
            ("load_ms", "load time per model", "ms", False),
            ("errors", "errors", "count", False),
        ), {
            "pss_mib": f"after {INVOKES_PER_MODEL} invokes of each model over {W1_CONCURRENCY} connections",
            "per_model_kib": "PSS above the idle server",
            "load_ms": f"POST /models from {LOAD_CONCURRENCY} connections",
            "errors": "loads and invokes",
        }),
    }  # fmt: skip
    rows = []
    for prefix, (workload, metrics, notes) in groups.items():
        for key, metric, unit, higher in metrics:
            values = found.get(f"{prefix}.{key}", {})
            rows.append(Row(f"workers.{prefix}.{key}", workload, metric, unit, values.get(2), values.get(1),
                            higher, notes.get(key, ""), peer=PEER))  # fmt: skip
    return rows
