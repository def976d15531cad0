"""What a workload hands the report: rows of ours-vs-baseline numbers, and facts later ones reuse."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    key: str  # stable id the targets look up, e.g. "w1.rps16"
    workload: str
    metric: str
    unit: str
    ours: float | None
    baseline: float | None
    higher_is_better: bool
    note: str = ""
    comparable: bool = True  # False when the sides ran at different scales: no ratio then
    peer: str = "MMS"  # whose numbers `baseline` holds: MMS (AWS's image stack) or MLServer

    @property
    def ratio(self) -> float | None:
        """How many times better ours is (>1 better, <1 worse); None when a side is missing."""
        if not self.comparable or not self.ours or not self.baseline:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    actual: str
    met: bool | None  # None: could not be measured in this run
    margin: str
