"""One server's numbers from its workers' own: what /metrics, /status and GET /models/{name} answer
when several processes serve (see serve/workers.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import Metric

# Families every worker reports the same value of (one budget, one disk cache): shown once, not summed.
SAME_IN_EVERY_WORKER = frozenset(
    {"mme_model_memory_budget_bytes", "mme_disk_cache_used_bytes", "mme_disk_cache_budget_bytes"}
)


def merge_metrics(workers: list[list[Metric]], replaced: dict[str, float]) -> list[Metric]:
    """Sum each sample over the workers (counters, histogram buckets, per-model gauges); families in
    `replaced` take the given value instead (a count of distinct models, the whole budget)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in workers:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name in SAME_IN_EVERY_WORKER:
                    into[key] = max(into.get(key, 0.0), sample.value)
                else:
                    into[key] = into.get(key, 0.0) + sample.value
    for name, value in replaced.items():
        if name in values:
            values[name] = {key: value for key in values[name]}
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class Fixed:
    """A collector of families computed already, for prometheus_client's text exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_models(described: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, its copies in several workers as one: counts summed, the latest use, the earliest
    load, the p50 of the busiest copy; most recently used first."""
    by_name: dict[str, dict[str, Any]] = {}
    for one in described:
        seen = by_name.get(one["modelName"])
        if seen is None:
            by_name[one["modelName"]] = dict(one)
            continue
        if one["invocations"] > seen["invocations"]:
            seen["p50Ms"] = one["p50Ms"]
        for key in ("invocations", "misses", "inFlight", "loads"):
            seen[key] = seen.get(key, 0) + one.get(key, 0)
        seen["lastUsed"] = max(seen["lastUsed"], one["lastUsed"])
        seen["loadedAt"] = min(seen["loadedAt"], one["loadedAt"])
        seen["sizeBytes"] = max(seen["sizeBytes"], one["sizeBytes"])
    for model in by_name.values():
        calls = model["invocations"]
        model["hitRatio"] = 1 - model["misses"] / calls if calls else None
    return sorted(by_name.values(), key=lambda m: m["lastUsed"], reverse=True)
