"""W1-W4 and what every workload shares: each starts the servers it needs, one at a time, returns rows."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import boto3
import httpx
import psutil

from bench import loadgen, mlserver, servers
from bench.loadgen import LoadResult
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
# MLServer reads every model-settings.json of its repository on each load: a bound on its W3 pass.
W3_PEER_SECONDS = 300.0


@dataclass
class Bench:
    work: Path
    models: ModelSet
    wrk: str | None
    mms_python: Path | None  # None: the baseline is skipped
    scale: Scale
    facts: dict[str, float] = field(default_factory=dict)
    mlserver_python: Path | None = None  # None: MLServer is skipped

    def ours(self, *args: str, name: str = "ours") -> Server:
        return servers.start_ours(self.work, ["--model-root", str(self.models.contract), *args], name)

    def mms(self) -> Server:
        assert self.mms_python is not None
        return servers.start_mms(self.work, self.mms_python)

    def sides(self, mlserver_too: bool = False) -> Iterator[tuple[str, Callable[[], Server]]]:
        """Ours and each peer in this run; MLServer only where a workload asks for it (W1, W4: W2 and
        W3 start it themselves, without loading their models as it starts)."""
        yield "ours", self.ours
        if self.mms_python is not None:
            yield "baseline", self.mms
        if mlserver_too and self.mlserver_python is not None:
            yield "mlserver", self.mlserver

    def mlserver(self) -> Server:
        """MLServer with the first model loaded as `warm` (W1, W4)."""
        return self.mlserver_of({"warm": self.booster(0)})

    def mlserver_of(self, models: dict[str, Path], at_startup: bool = True) -> Server:
        assert self.mlserver_python is not None
        return mlserver.start(self.work, self.mlserver_python, models, at_startup=at_startup)

    def booster(self, i: int) -> Path:
        return self.models.contract / self.models.name(i) / "xgboost-model"


def load_model(client: httpx.Client, models: ModelSet, i: int, name: str | None = None) -> httpx.Response:
    return client.post("/models", json={"model_name": name or models.name(i), "url": models.url(i)})


def invoke(client: httpx.Client, name: str, body: bytes = ROW) -> httpx.Response:
    return client.post(f"/models/{name}/invoke", content=body, headers=CSV)


def http_client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def pair(
    key: str,
    workload: str,
    metric: str,
    unit: str,
    values: dict[str, float],
    higher: bool,
    note: str = "",
    comparable: bool = True,
    peer: str = "MMS",
) -> Row:
    return Row(
        key,
        workload,
        metric,
        unit,
        values.get("ours"),
        values.get("baseline"),
        higher,
        note,
        comparable,
        peer,
    )


# --- W1 warm invoke and W4 batch: every server up, W1 in alternating rounds ---------------------------
# Seconds of one W1 round, whole (wrk takes no fractions). On a shared machine a burst of other work lands
# on whichever server is being measured; alternating short rounds and taking each side's median round
# gives every side the same machine.
W1_ROUND_SECONDS = 2
WARM = "/models/warm/invoke"
V2_WARM = "/v2/models/warm/infer"
JSON = "application/json"
# W4's calls alternate between the servers, one call each per round, so that a burst of other work on the
# machine costs every side about the same; each side's median call is reported.
W4_ROUNDS = 9
W4_NOTE = f"median of {W4_ROUNDS} calls, alternating between the servers"


@dataclass(frozen=True)
class Leg:
    """One side of a comparison: a server, its route and a body maker (CSV rows -> request body)."""

    side: str
    server: Server
    path: str
    body: Callable[[bytes], bytes]
    content_type: str


# Each peer's rows: (key prefix, the side ours is compared with, our side, the peer's name in the report).
PEERS = (("", "baseline", "ours", "MMS"), ("mlserver.", "mlserver", "ours-v2", "MLServer"))


def _csv(body: bytes) -> bytes:
    return body


def w1_w4(bench: Bench) -> list[Row]:
    w1: dict[int, dict[str, list[LoadResult]]] = {1: {}, 16: {}}
    w4: dict[int, dict[str, float]] = {1_000: {}, 10_000: {}}
    cpu: dict[str, float] = {}  # side -> server CPU seconds over the concurrency-16 rounds
    rounds = max(1, round(bench.scale.w1_seconds / W1_ROUND_SECONDS))
    seconds = W1_ROUND_SECONDS
    with ExitStack() as stack:
        running = {side: stack.enter_context(start()) for side, start in bench.sides(mlserver_too=True)}
        legs = []
        for side, server in running.items():
            if side == "mlserver":
                legs.append(Leg(side, server, V2_WARM, mlserver.v2_body, JSON))
                continue
            with http_client(server) as client:
                load_model(client, bench.models, 0, "warm").raise_for_status()
            legs.append(Leg(side, server, WARM, _csv, CSV["Content-Type"]))
            if side == "ours" and bench.mlserver_python is not None:
                legs.append(Leg("ours-v2", server, V2_WARM, mlserver.v2_body, JSON))
        for leg in legs:  # warm-up
            loadgen.fixed_load(bench.wrk, leg.server.url, leg.path, leg.body(ROW), 4, 1, "", leg.content_type)
        for concurrency, by_side in w1.items():
            for _ in range(rounds):
                for leg in legs:
                    used = leg.server.cpu_seconds()
                    result = loadgen.fixed_load(
                        bench.wrk, leg.server.url, leg.path, leg.body(ROW), concurrency, seconds, "",
                        leg.content_type,
                    )  # fmt: skip
                    by_side.setdefault(leg.side, []).append(result)
                    if concurrency == 16:
                        cpu[leg.side] = cpu.get(leg.side, 0.0) + leg.server.cpu_seconds() - used
        clients = {leg.side: stack.enter_context(http_client(leg.server)) for leg in legs}
        for rows, by_side in w4.items():
            posts = {
                leg.side: partial(
                    clients[leg.side].post,
                    leg.path,
                    content=leg.body(csv_rows(rows)),
                    headers={"Content-Type": leg.content_type},
                )
                for leg in legs
            }
            for post in posts.values():
                post().raise_for_status()  # warm-up: a walked model builds its Booster for batches here
            taken: dict[str, list[float]] = {side: [] for side in posts}
            for _ in range(W4_ROUNDS):
                for side, post in posts.items():
                    taken[side].append(timed(post))
            by_side.update((side, statistics.median(times)) for side, times in taken.items())
    tool = w1[1]["ours"][0].tool
    note = f"{tool}, median of {rounds} × {seconds} s" if rounds > 1 else f"{tool}, {seconds} s"
    per_request = {side: cpu_us(cpu[side], w1[16][side]) for side in cpu}
    out = []
    for prefix, peer_side, our_side, peer in PEERS:
        if prefix and peer_side not in w1[1]:
            continue  # a second peer that is not in this run

        def add(key: str, workload: str, metric: str, unit: str, values: dict[str, float], higher: bool,
                note: str = "", prefix: str = prefix, ours: str = our_side, theirs: str = peer_side,
                peer: str = peer) -> None:  # fmt: skip
            if prefix and note:
                note += f"; both on POST {V2_WARM.replace('warm', '{name}')}"
            pick = {"ours": values.get(ours), "baseline": values.get(theirs)}
            both = {side: value for side, value in pick.items() if value is not None}
            out.append(
                pair(key.replace(".", f".{prefix}", 1), workload, metric, unit, both, higher, note, peer=peer)
            )

        for c, by_side in w1.items():
            for key, attribute, metric, unit, higher in (
                (f"rps{c}", "rps", f"req/s, concurrency {c}", "req/s", True),
                (f"p50_{c}", "p50_ms", f"p50, concurrency {c}", "ms", False),
                (f"p99_{c}", "p99_ms", f"p99, concurrency {c}", "ms", False),
            ):
                values = {
                    side: statistics.median(getattr(result, attribute) for result in results)
                    for side, results in by_side.items()
                }
                add(f"w1.{key}", "W1 warm invoke", metric, unit, values, higher, note if higher else "")
            errors = {side: float(sum(r.errors for r in results)) for side, results in by_side.items()}
            add(f"w1.err{c}", "W1 warm invoke", f"errors, concurrency {c}", "count", errors, False)
        add(
            "w1.cpu16",
            "W1 warm invoke",
            "server CPU per request, concurrency 16",
            "µs",
            per_request,
            False,
            "user + system of every server process, over all its rounds",
        )
        for rows, by_side in w4.items():
            values = {side: taken * 1e3 for side, taken in by_side.items()}
            add(f"w4.{rows}", "W4 batch", f"one invoke of {rows:,} rows", "ms", values, False, W4_NOTE)
    return out


def cpu_us(seconds: float, results: list[LoadResult]) -> float:
    """Server CPU microseconds per request answered."""
    return seconds * 1e6 / max(1, sum(result.requests for result in results))


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    call().raise_for_status()
    return time.perf_counter() - started


# --- W2 cold load ------------------------------------------------------------------------------------
def w2(bench: Bench) -> list[Row]:
    n = bench.scale.w2_models
    medians: dict[str, float] = {}
    for side, start in bench.sides():
        with start() as server, http_client(server) as client:
            samples = []
            for i in range(n):
                started = time.perf_counter()
                response = load_model(client, bench.models, i)
                response.raise_for_status()
                invoke(client, bench.models.name(i)).raise_for_status()
                samples.append(time.perf_counter() - started)
                if side == "ours":
                    size = response.json()["sizeBytes"]
                    bench.facts["model_bytes"] = max(bench.facts.get("model_bytes", 0), size)
            medians[side] = statistics.median(samples)
    rows = [
        pair(
            "w2.load",
            "W2 cold load",
            f"POST /models + first invoke, median of {n}",
            "ms",
            {s: v * 1e3 for s, v in medians.items()},
            False,
        )
    ]
    if bench.mlserver_python is not None:
        theirs = _mlserver_cold(bench, n)
        rows.append(
            pair(
                "w2.mlserver.load",
                "W2 cold load",
                f"POST /models + first invoke, median of {n}",
                "ms",
                {"ours": medians["ours"] * 1e3, "baseline": theirs * 1e3},
                False,
                "MLServer: POST /v2/repository/models/{name}/load + first infer",
                peer="MLServer",
            )
        )
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


def _mlserver_cold(bench: Bench, n: int) -> float:
    """MLServer's median seconds for W2's models: a load through its repository API, then a first infer."""
    models = {bench.models.name(i): bench.booster(i) for i in range(n)}
    with bench.mlserver_of(models, at_startup=False) as server, http_client(server) as client:
        samples = []
        for name in models:
            started = time.perf_counter()
            mlserver.load(client, name).raise_for_status()
            mlserver.infer(client, name).raise_for_status()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _endpoint_cold(bench: Bench, args: list[str], n: int, source: str | None = None) -> float:
    cache = bench.work / "endpoint-cache"
    shutil.rmtree(cache, ignore_errors=True)
    source = source or str(bench.models.artifacts)
    server = bench.ours("--models", source, "--cache-dir", str(cache), *args, name="ours-endpoint")
    with server, http_client(server) as client:
        samples = []
        for i in range(n):
            headers = {**CSV, "X-Amzn-SageMaker-Target-Model": bench.models.target(i)}
            samples.append(timed(lambda h=headers: client.post("/invocations", content=ROW, headers=h)))
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
# W3's names are mostly hard links of a few seeds (see bench/models.py), which our compiler writes the
# form of without compiling them again: its load times are of loads of known bytes, W2's of new ones.
_COPIES = "ours: most names are copies of 4 models, compiled once each (W2: a cold compile)"


def w3(bench: Bench) -> list[Row]:
    checkpoints = {"ours": bench.scale.w3_ours, "baseline": (bench.scale.w3_baseline_max,)}
    found: dict[str, dict[int, dict[str, float]]] = {}
    for side, start in bench.sides():
        with start() as server, http_client(server) as client:
            found[side] = _fill(
                server,
                lambda i, c=client: load_model(c, bench.models, i).status_code == 200,
                checkpoints[side],
                side == "baseline",
            )
    base = next(iter(found.get("baseline", {}).values()), None)
    if base is not None:
        bench.facts["baseline_resident"] = base["count"]
    rows = []
    first = bench.scale.w3_ours[0]
    for count, ours in found["ours"].items():
        peer = base if count == first else None
        workload = f"W3 residency, {count:,} models"
        rows += _w3_rows(f"w3.{count}", workload, ours, peer, "MMS", "its memory cap")
    if bench.mlserver_python is not None:
        theirs = _mlserver_fill(bench, first)
        rows += _w3_rows(
            f"w3.mlserver.{first}", f"W3 residency, {first:,} models", found["ours"][first], theirs,
            "MLServer", f"its memory or the {W3_PEER_SECONDS:g} s bound",
        )  # fmt: skip
    return rows


def _w3_rows(
    key: str, workload: str, ours: dict[str, float], peer: dict[str, float] | None, name: str, cap: str
) -> list[Row]:
    values = {"ours": ours} if peer is None else {"ours": ours, "baseline": peer}
    same = peer is None or int(peer["count"]) == int(ours["count"])
    note = f"{name}: {int(peer['count'])} models, {cap}" if peer is not None and not same else ""
    rows = []
    for metric_key, metric, unit, comparable in (
        ("count", "models loaded", "count", False),
        ("seconds", "total load time", "s", same),
        ("per_model_ms", "load time per model", "ms", True),
        ("failures", "failures", "count", True),
        ("pss_mib", "memory of all server processes (PSS)", "MiB", same),
        ("per_model_kib", "memory per model", "KiB", True),
    ):
        sides = {side: numbers[metric_key] for side, numbers in values.items()}
        rows.append(
            pair(
                f"{key}.{metric_key}",
                workload,
                metric,
                unit,
                sides,
                metric_key == "count",
                note if metric_key == "count" else (_COPIES if metric_key == "per_model_ms" else ""),
                comparable,
                peer=name,
            )
        )
    return rows


def _mlserver_fill(bench: Bench, count: int) -> dict[str, float] | None:
    """MLServer's W3 numbers: `count` models in its repository, loaded one after another through its API."""
    models = {bench.models.name(i): bench.booster(i) for i in range(count)}
    names = list(models)
    with bench.mlserver_of(models, at_startup=False) as server, http_client(server) as client:
        points = _fill(
            server,
            lambda i: mlserver.load(client, names[i]).status_code == 200,
            (count,),
            True,
            W3_PEER_SECONDS,
        )
    return next(iter(points.values()), None)


def _fill(
    server: Server,
    load: Callable[[int], bool],
    checkpoints: tuple[int, ...],
    capped: bool,
    seconds: float = math.inf,
) -> dict[int, dict[str, float]]:
    """Load models 0, 1, ... one after another; at each checkpoint (or when memory runs short for a
    `capped` peer, or its loads have taken `seconds`) note time and memory."""
    idle = server.pss_bytes()
    load_seconds = 0.0
    failures = 0
    points: dict[int, dict[str, float]] = {}
    for i in range(checkpoints[-1]):
        started = time.perf_counter()
        try:
            failures += not load(i)
        except httpx.HTTPError:
            failures += 1
        load_seconds += time.perf_counter() - started
        count = i + 1
        short = capped and (
            psutil.virtual_memory().available < BASELINE_MIN_AVAILABLE or load_seconds > seconds
        )
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
