"""W5's traffic: a Zipf-distributed trace of model names, and an exact LRU simulation of it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

ZIPF_S = 1.1


def zipf_trace(models: int, length: int, seed: int = 42, s: float = ZIPF_S) -> list[int]:
    """Model indexes, rank k drawn with probability ∝ 1/k^s over `models` ranks shuffled onto indexes."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, models + 1) ** s
    ranks = rng.choice(models, size=length, p=weights / weights.sum())
    return rng.permutation(models)[ranks].tolist()


def lru_hit_ratio(trace: Sequence[int], capacity: int) -> float:
    resident: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in trace:
        if key in resident:
            hits += 1
            resident.move_to_end(key)
            continue
        if len(resident) >= capacity:
            resident.popitem(last=False)
        resident[key] = None
    return hits / len(trace) if trace else float("nan")
