"""What a model's load costs, and what loads cost the hits around them.

In-process (this process, one load at a time): a first load from a local .tar.gz (unpack, read,
compile, check against XGBoost, write the compiled form) and a re-miss (the compiled form read back),
each as the local endpoint does it. Then a server: p99 of one hot model's requests alone, and again
while other models load cold the whole time (every storm request a miss: a cache of a few models).
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench import loadgen
from bench.models import ROW
from bench.results import Row
from bench.workloads import CSV, Bench, http_client
from handler.model import load_model
from serve.unpack import MAX_MEMBERS, MAX_UNPACKED_BYTES, open_archive

LOADS = 40
STORM_CONCURRENCY = 4
STORM_CACHE = 8  # models the storm server holds: far fewer than the storm names


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of work()."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def _first_load(tarball: Path, folder: Path) -> None:
    with open_archive(tarball, max_bytes=MAX_UNPACKED_BYTES, max_members=MAX_MEMBERS) as archive:
        archive.extract_to(folder)
    load_model(folder, persist=True)


def load_rows(bench: Bench) -> list[Row]:
    root = bench.work / "loads"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    folders = [root / f"m{i}" for i in range(LOADS)]
    tarballs = [bench.models.artifacts / bench.models.target(i) for i in range(LOADS)]
    _first_load(tarballs[0], root / "warm-up")  # imports and XGBoost's first-use costs are not a load's
    first = [_timed(lambda t=t, f=f: _first_load(t, f)) for t, f in zip(tarballs, folders, strict=True)]
    again = [_timed(lambda f=f: load_model(f, persist=True)) for f in folders * 3]
    shutil.rmtree(root, ignore_errors=True)
    workload = "Model loads, in-process"

    def ms(samples: list[tuple[float, float]], which: int) -> float:
        return statistics.median(sample[which] for sample in samples) * 1e3

    note = f"median of {LOADS}, city model, one at a time"
    return [
        Row("load.first", workload, "first load from a local .tar.gz (unpack + compile)", "ms",
            ms(first, 1), None, False, note),
        Row("load.first_cpu", workload, "first load, CPU time", "ms", ms(first, 0), None, False, note),
        Row("load.remiss_cpu", workload, "re-miss from the disk cache (compiled form), CPU time", "ms",
            ms(again, 0), None, False, f"median of {len(again)}"),
        Row("load.remiss", workload, "re-miss from the disk cache, wall time", "ms",
            ms(again, 1), None, False, f"median of {len(again)}"),
    ]  # fmt: skip


def storm_rows(bench: Bench) -> list[Row]:
    """Hit p99 of a hot model, alone and while a storm of cold loads of other models runs."""
    cache = bench.work / "storm-cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = ["--models", str(bench.models.artifacts), "--cache-dir", str(cache)]
    args += ["--max-models", str(STORM_CACHE), "--revalidate-after", "off"]
    seconds = max(3, round(bench.scale.w1_seconds / 2))
    hot = bench.models.target(0)
    path = "/invocations"
    with bench.ours(*args, name="ours-storm") as server, http_client(server) as client:
        for _ in range(20):
            client.post(path, content=ROW, headers={**CSV, "X-Amzn-SageMaker-Target-Model": hot})
        quiet = loadgen.fixed_load(bench.wrk, server.url, path, ROW, STORM_CONCURRENCY, seconds, hot)
        storm = _Storm(server.url, range(1, bench.models.count), bench.models.target)
        with storm:
            before = storm.loads
            stormy = loadgen.fixed_load(bench.wrk, server.url, path, ROW, STORM_CONCURRENCY, seconds, hot)
            loads = storm.loads - before
    shutil.rmtree(cache, ignore_errors=True)
    workload = "Hits during a load storm"
    note = f"{loads / stormy.seconds:,.0f} cold loads/s of other models ({storm.failures} failed)"
    return [
        Row("storm.quiet_p99", workload, f"hot model p99, concurrency {STORM_CONCURRENCY}, no loads", "ms",
            quiet.p99_ms, None, False, quiet.tool),
        Row("storm.p99", workload, "hot model p99 during the storm", "ms", stormy.p99_ms, None, False, note),
        Row("storm.ratio", workload, "p99 during the storm / without", "×", stormy.p99_ms / quiet.p99_ms,
            None, False, f"{stormy.rps:,.0f} vs {quiet.rps:,.0f} hot req/s"),
    ]  # fmt: skip


class _Storm:
    """STORM_CONCURRENCY threads, each invoking the next model of `indexes` (never the hot one) in turn:
    with a cache of a few models, every one of these is a miss, a first load on the first pass."""

    def __init__(self, url: str, indexes: range, target: Callable[[int], str]) -> None:
        self._url = url
        self._names = [target(i) for i in indexes]
        self._next = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(STORM_CONCURRENCY)]
        self.loads = 0
        self.failures = 0

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=60) as client:
            while not self._stop.is_set():
                with self._lock:
                    name = self._names[self._next % len(self._names)]
                    self._next += 1
                headers = {**CSV, "X-Amzn-SageMaker-Target-Model": name}
                ok = client.post("/invocations", content=ROW, headers=headers).status_code == 200
                with self._lock:
                    self.loads += ok
                    self.failures += not ok

    def __enter__(self) -> _Storm:
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)  # under way before the measurement starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
