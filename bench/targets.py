"""The issue's targets, judged from one run's rows: met or missed, and by how much."""

from __future__ import annotations

import math

from bench.results import Row, Target

GiB_IN_MiB = 1024
# A second worker may add its own bookkeeping per model, never a second copy of the model.
MEMORY_GROWTH = 1.25


def _ratio_target(name: str, goal: str, ratio: float | None, need: float, what: str) -> Target:
    if ratio is None or math.isnan(ratio):
        return Target(name, goal, "not measured (no baseline in this run)", None, "")
    met = ratio >= need
    margin = f"{ratio / need:.2f}× the goal" if met else f"short by {need / ratio:.1f}×"
    return Target(name, goal, f"{ratio:.1f}× {what}", met, margin)


def evaluate(rows: list[Row]) -> list[Target]:
    by_key = {row.key: row for row in rows}

    def row(key: str) -> Row | None:
        return by_key.get(key)

    targets = []
    if r := row("w1.rps16"):
        targets.append(
            _ratio_target(
                "W1 throughput",
                "≥ 10× the baseline's req/s at concurrency 16",
                r.ratio,
                10,
                "the baseline's req/s",
            )
        )
    if r := row("w1.p50_1"):
        targets.append(
            _ratio_target(
                "W1 latency",
                "p50 at concurrency 1 ≤ 1/5 of the baseline's",
                r.ratio,
                5,
                "lower p50 than the baseline",
            )
        )
    if r := row("w2.load"):
        targets.append(
            _ratio_target(
                "W2 cold load",
                "a cold load from local disk ≥ 50× faster",
                r.ratio,
                50,
                "faster than the baseline",
            )
        )
    targets.append(_residency(row("w3.10000.pss_mib"), row("w3.10000.failures")))
    targets.extend(_w5(row))
    targets.extend(_loads(row))
    targets.extend(_workers(row))
    targets.extend(_ahead_of_mlserver(row))
    return targets


def _ahead_of_mlserver(row) -> list[Target]:
    """Where the second peer was ahead before (the issue's measurements), ours must end ahead."""
    out = []
    for name, keys in (
        ("W4 vs MLServer", ("w4.mlserver.1000", "w4.mlserver.10000")),
        ("First load vs MLServer", ("w2.mlserver.load",)),
    ):
        ratios = [r.ratio for key in keys if (r := row(key)) and r.ratio is not None]
        if len(ratios) != len(keys):
            continue  # MLServer is not in this run
        worst = min(ratios)
        actual = f"{worst:.2f}× faster" if worst > 1 else f"{1 / worst:.2f}× slower"
        where = " at the closest" if len(keys) > 1 else ""
        out.append(Target(name, "faster than MLServer", actual + where, worst > 1, ""))
    return out


def _residency(pss: Row | None, failures: Row | None) -> Target:
    goal = "10,000 resident models in one server under 1.5 GiB in all"
    if pss is None or pss.ours is None:
        return Target("W3 residency", goal, "not measured (the quick run loads 1,000)", None, "")
    limit = 1.5 * GiB_IN_MiB
    failed = int(failures.ours or 0) if failures else 0
    met = pss.ours < limit and failed == 0
    actual = f"{pss.ours / GiB_IN_MiB:.2f} GiB, {failed} failed loads"
    margin = (
        f"{(limit - pss.ours) / GiB_IN_MiB:+.2f} GiB headroom"
        if pss.ours < limit
        else (f"over by {(pss.ours - limit) / GiB_IN_MiB:.2f} GiB")
    )
    return Target("W3 residency", goal, actual, met, margin)


def _w5(row) -> list[Target]:
    errors, hit, lru = row("w5.errors"), row("w5.hit_ratio"), row("w5.lru_hit_ratio")
    peak, budget = row("w5.model_peak_mib"), row("w5.budget")
    out = []
    if errors and errors.ours is not None:
        n = int(errors.ours)
        out.append(
            Target("W5 errors", "zero errors", f"{n} errors", n == 0, "" if n == 0 else f"{n} too many")
        )
    if peak and budget and peak.ours is not None and budget.ours:
        limit = budget.ours * 1.1
        met = peak.ours <= limit
        out.append(
            Target(
                "W5 memory",
                "peak memory within the budget + 10%",
                f"{peak.ours:.0f} MiB above idle vs budget {budget.ours:.0f} MiB",
                met,
                f"{peak.ours / budget.ours * 100:.0f}% of the budget",
            )
        )
    out.extend(
        _half_of_w1(
            "W5 throughput", "≥ 50% of our own W1 req/s (concurrency 16) in the same run",
            row("w5.rps"), row("w1.rps16"),
        )
    )  # fmt: skip
    for key, limit in (("p50", 2.0), ("p99", 25.0)):
        latency = row(f"w5.{key}")
        if latency and latency.ours is not None:
            met = latency.ours <= limit
            out.append(
                Target(
                    f"W5 {key}",
                    f"≤ {limit:g} ms",
                    f"{latency.ours:.2f} ms",
                    met,
                    f"{latency.ours / limit:.0%} of it",
                )
            )
    if hit and lru and lru.ours is not None:
        if hit.ours is None or math.isnan(hit.ours):
            out.append(
                Target(
                    "W5 hit ratio", "within 2 points of exact LRU", "server reports no hit counters", None, ""
                )
            )
        else:
            gap = hit.ours - lru.ours
            out.append(
                Target(
                    "W5 hit ratio",
                    "within 2 points of an exact LRU simulation of the same trace",
                    f"{hit.ours:.1f}% vs LRU {lru.ours:.1f}%",
                    abs(gap) <= 2,
                    f"{gap:+.1f} points",
                )
            )
    return out


def _loads(row) -> list[Target]:
    out = []
    for key, name, limit in (("load.remiss_cpu", "Re-miss CPU", 0.3), ("load.first", "First load", 3.0)):
        r = row(key)
        if r and r.ours is not None:
            out.append(
                Target(
                    name,
                    f"≤ {limit:g} ms",
                    f"{r.ours:.2f} ms",
                    r.ours <= limit,
                    f"{r.ours / limit:.0%} of it",
                )
            )
    r = row("storm.ratio")
    if r and r.ours is not None:
        out.append(
            Target(
                "Hits during loads",
                "hot p99 during a load storm ≤ 2× without",
                f"{r.ours:.2f}×",
                r.ours <= 2,
                "",
            )
        )
    return out


def _half_of_w1(name: str, goal: str, w5: Row | None, w1: Row | None) -> list[Target]:
    """W5's req/s as a share of W1's (ours, one run): the target is half."""
    if not (w5 and w1 and w5.ours and w1.ours):
        return []
    share = w5.ours / w1.ours
    actual = f"{w5.ours:,.0f} vs W1 {w1.ours:,.0f} req/s"
    return [Target(name, goal, actual, share >= 0.5, f"{share:.0%} of W1")]


def _workers(row) -> list[Target]:
    """With 2 serving processes: W5 against W1 of the same server, and what a resident model costs."""
    out = []
    goal = "≥ 50% of W1 req/s of the same 2-worker server, in the same run"
    out.extend(_half_of_w1("W5 throughput, 2 workers", goal, row("workers.w5.rps"), row("workers.w1.rps")))
    for key, name in (
        ("workers.w5.errors", "W5 errors, 2 workers"),
        ("workers.w5c.errors", "W5 contract mode errors"),
    ):
        r = row(key)
        if r and r.ours is not None:
            n = int(r.ours + (r.baseline or 0))
            out.append(Target(name, "zero errors, 1 and 2 workers", f"{n} errors", n == 0, ""))
    pss, errors = row("workers.memory.pss_mib"), row("workers.memory.errors")
    if pss and pss.ours is not None:
        failed = int(errors.ours or 0) if errors else 0
        limit = 1.5 * GiB_IN_MiB
        out.append(
            Target(
                "W3 residency, 2 workers",
                "W3's models under 1.5 GiB in all with 2 workers, each model invoked on both",
                f"{pss.ours / GiB_IN_MiB:.2f} GiB, {failed} errors",
                pss.ours < limit and failed == 0,
                f"{(limit - pss.ours) / GiB_IN_MiB:+.2f} GiB headroom",
            )
        )
    memory = row("workers.memory.per_model_kib")
    if memory and memory.ours and memory.baseline:
        growth = memory.ours / memory.baseline
        out.append(
            Target(
                "Memory per model, 2 workers",
                f"≤ {MEMORY_GROWTH:g}× that of 1 worker (≈ the same)",
                f"{memory.ours:.1f} vs {memory.baseline:.1f} KiB",
                growth <= MEMORY_GROWTH,
                f"{growth:.2f}×",
            )
        )
    return out


def limits(rows: list[Row]) -> list[str]:
    """How close our W1 comes to the floors measured in the same run."""
    by_key = {row.key: row.ours for row in rows}
    lines = []
    for c in (1, 16):
        ours_rps, floor_rps = by_key.get(f"w1.rps{c}"), by_key.get(f"floor.rps{c}")
        ours_p50, floor_p50 = by_key.get(f"w1.p50_{c}"), by_key.get(f"floor.p50_{c}")
        if ours_rps and floor_rps and ours_p50 and floor_p50:
            lines.append(
                f"Concurrency {c}: our warm invoke does {ours_rps / floor_rps:.0%} of the empty reply's "
                f"req/s ({ours_rps:,.0f} vs {floor_rps:,.0f}); p50 {ours_p50:.3f} ms vs {floor_p50:.3f} ms."
            )
    predict, p50 = by_key.get("floor.predict"), by_key.get("w1.p50_1")
    if predict and p50:
        lines.append(
            f"One-row Booster.inplace_predict in-process takes {predict * 1e3:.0f} µs; our whole request at "
            f"concurrency 1 takes {p50 * 1e3:.0f} µs at p50."
        )
    return lines
