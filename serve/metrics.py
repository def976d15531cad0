"""Prometheus metrics: plain numbers updated on the event loop, turned into metric families at scrape time.

The invoke path only adds to ints and to one histogram's bucket list: prometheus_client's own metric
objects take a lock per update, which the single-threaded event loop does not need. Per-model series
are computed from the cache entries' counters when /metrics is scraped, and only for the most used
models, so 10,000 resident models cost neither per-request work nor 10,000 series per metric.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from serve.cache import Entry, ModelCache
from serve.diskcache import DiskCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "_other"  # the label that sums every model outside the top N
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """Prometheus histogram buckets without a lock: only ever observed from the event loop thread."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus's "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = list(accumulate(self.counts))
        buckets = [(floatToGoString(b), c) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class Stats:
    """Whole-server numbers; app.py updates the request ones, model events arrive as a cache listener."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.invocations = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.errors: dict[int, int] = {}  # status -> responses
        self.evictions: dict[str, int] = {}  # reason -> evictions
        self.load_failures = 0
        self.loads: dict[str, int] = {}  # model -> loads, reloads included; survives evictions
        self.invoke_latency = Histogram(LATENCY_BUCKETS)
        self.load_wait = Histogram(LOAD_BUCKETS)
        self.downloading = Histogram(LOAD_BUCKETS)
        self.loading = Histogram(LOAD_BUCKETS)
        self.unloading = Histogram(LOAD_BUCKETS)

    def on_model_event(self, name: str, event: str, details: dict[str, Any]) -> None:
        if event in ("load", "reload"):
            self.loads[name] = self.loads.get(name, 0) + 1
            self.loading.observe(details["seconds"])
            if details.get("fetch_seconds") is not None:
                self.downloading.observe(details["fetch_seconds"])
        elif event == "unload":
            self.unloading.observe(details["seconds"])
        elif event == "evict":
            reason = details["reason"]
            self.evictions[reason] = self.evictions.get(reason, 0) + 1
        elif event == "load_failed":
            self.load_failures += 1


class Collector:
    """Every mme_* metric family, read from Stats, the model cache and the disk cache at scrape time."""

    def __init__(self, stats: Stats, cache: ModelCache, disk: DiskCache | None, top_models: int) -> None:
        self.stats = stats
        self.cache = cache
        self.disk = disk
        self.top_models = top_models

    def collect(self) -> Iterator[Metric]:
        stats, cache = self.stats, self.cache
        yield GaugeMetricFamily("mme_requests_in_flight", "HTTP requests being served", stats.in_flight)
        yield CounterMetricFamily(
            "mme_invocations", "invocation requests, errors included", stats.invocations
        )
        errors = CounterMetricFamily("mme_errors", "responses with an error status", labels=["status"])
        for status, count in sorted(stats.errors.items()):
            errors.add_metric([str(status)], count)
        yield errors
        yield stats.invoke_latency.family(
            "mme_invoke_latency_seconds", "invocation latency, request to response"
        )
        yield CounterMetricFamily(
            "mme_model_cache_hits", "invocations whose model was resident (ModelCacheHit)", stats.cache_hits
        )
        yield CounterMetricFamily(
            "mme_model_cache_misses", "invocations whose model was not resident", stats.cache_misses
        )
        yield GaugeMetricFamily("mme_loaded_models", "resident models (LoadedModelCount)", len(cache))
        yield stats.load_wait.family(
            "mme_model_loading_wait_seconds",
            "time an invocation waited for its model to become resident (ModelLoadingWaitTime)",
        )
        yield stats.downloading.family(
            "mme_model_downloading_seconds",
            "time to get an artifact onto local disk, a cache check included (ModelDownloadingTime)",
        )
        yield stats.loading.family(
            "mme_model_loading_seconds", "time to load a model from local disk (ModelLoadingTime)"
        )
        yield stats.unloading.family(
            "mme_model_unloading_seconds",
            "time to unload a model, in-flight calls included (ModelUnloadingTime)",
        )
        yield CounterMetricFamily("mme_model_loads", "model loads and reloads", sum(stats.loads.values()))
        yield CounterMetricFamily("mme_model_load_failures", "model loads that failed", stats.load_failures)
        evictions = CounterMetricFamily(
            "mme_model_evictions", "models evicted to make room", labels=["reason"]
        )
        for reason, count in sorted(stats.evictions.items()):
            evictions.add_metric([reason], count)
        yield evictions
        yield GaugeMetricFamily("mme_model_memory_used_bytes", "bytes of resident models", cache.used_bytes)
        yield GaugeMetricFamily("mme_model_memory_budget_bytes", "bytes models may take", cache.budget)
        if self.disk is not None:
            yield GaugeMetricFamily(
                "mme_disk_cache_used_bytes", "bytes of unpacked artifacts on disk", self.disk.used_bytes()
            )
            yield GaugeMetricFamily(
                "mme_disk_cache_budget_bytes", "bytes the disk cache may take", self.disk.budget
            )
        yield from self._per_model(cache.entries())

    def _per_model(self, entries: list[Entry]) -> Iterator[Metric]:
        top = heapq.nlargest(self.top_models, entries, key=lambda e: e.invocations)
        shown = {id(e) for e in top}
        rest = [e for e in entries if id(e) not in shown]
        invocations = GaugeMetricFamily(
            "mme_model_invocations",
            f"invocations of a resident model since its load; {self.top_models} most used, rest in {OTHER}",
            labels=["model"],
        )
        size = GaugeMetricFamily(
            "mme_model_size_bytes",
            f"bytes of a resident model; the {self.top_models} most used, rest in {OTHER}",
            labels=["model"],
        )
        for entry in top:
            invocations.add_metric([entry.name], entry.invocations)
            size.add_metric([entry.name], entry.size)
        if rest:
            invocations.add_metric([OTHER], sum(e.invocations for e in rest))
            size.add_metric([OTHER], sum(e.size for e in rest))
        yield invocations
        yield size


def make_registry(collector: Collector) -> CollectorRegistry:
    """A registry of our own: the global one would also export whatever else the process registered."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
