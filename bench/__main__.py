"""`python -m bench [--quick]`: build the peers, run every workload on ours and theirs, write the report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    baseline,
    floors,
    loadgen,
    loads,
    machine,
    mlserver,
    models,
    profile,
    report,
    scaling,
    targets,
    w5,
    workloads,
)
from bench.results import Row, Target

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
DOCS = ROOT / "docs"
QUICK_OUT = WORK / "quick"
# Workloads in the order they run: the floors right after W1, so both see the same machine; W2 and W3
# before W5, which sizes its budget from W2's models and the baseline's scale from what it survived in W3;
# the serving-process rows size theirs from W2's models too.
STEPS: list[tuple[str, Callable[[workloads.Bench], list[Row]]]] = [
    ("W1 warm invoke + W4 batch", workloads.w1_w4),
    ("floors", floors.floor_rows),
    ("W2 cold load", workloads.w2),
    ("W3 residency", workloads.w3),
    ("W5 MME workload", w5.w5),
    ("serving processes", scaling.scaling_rows),
    ("model loads", loads.load_rows),
    ("load storm", loads.storm_rows),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a reduced set in under 3 minutes (not for CI)")
    parser.add_argument("--no-baseline", action="store_true", help="measure ours only")
    parser.add_argument("--no-mlserver", action="store_true", help="leave out the second peer, MLServer")
    parser.add_argument("--profile", action="store_true", help="only profile our W1 path with py-spy")
    parser.add_argument("--only", action="append", help="run only this step (repeatable), e.g. 'load storm'")
    parser.add_argument(
        "--out",
        type=Path,
        help="where benchmarks.md/.png go (default docs/, or bench/.work/quick/ with --quick)",
    )
    args = parser.parse_args(argv)
    out = report_folder(args.out, quick=args.quick)
    scale = workloads.QUICK if args.quick else workloads.FULL
    started = time.monotonic()
    load_at_start = machine.load_average()

    WORK.mkdir(parents=True, exist_ok=True)
    mms_python = None if args.no_baseline or args.profile else baseline.ensure_venv(WORK / "baseline-venv")
    skip_mlserver = args.no_baseline or args.no_mlserver or args.profile
    mlserver_python = None if skip_mlserver else mlserver.ensure_venv(WORK / "mlserver-venv")
    wrk = loadgen.ensure_wrk()
    model_set = models.prepare(WORK, max(scale.w5_models, *scale.w3_ours))
    bench = workloads.Bench(WORK, model_set, wrk, mms_python, scale, mlserver_python=mlserver_python)
    if args.profile:
        print(profile.profile_w1(bench, scale.w1_seconds))
        return 0

    rows: list[Row] = []
    for title, step in STEPS:
        if args.only and title not in args.only:
            continue
        print(f"bench: {title} ...", flush=True)
        step_started = time.monotonic()
        rows.extend(step(bench))
        print(f"bench: {title} done in {time.monotonic() - step_started:.0f} s", flush=True)

    command = "make bench-quick" if args.quick else "make bench"
    if sys.argv[1:] and not argv:
        command += f" ({shlex.join(['python', '-m', 'bench', *sys.argv[1:]])})"
    tool = f"wrk ({wrk}) with bench/wrk.lua" if wrk else "the bench's Python asyncio client (wrk not found)"
    description = machine.describe(mms_python, tool, command, load_at_start, mlserver_python)
    checks = targets.evaluate(rows)
    limits = targets.limits(rows)
    report.print_table(rows, checks, limits)
    out.mkdir(parents=True, exist_ok=True)
    report.write_chart(out / "benchmarks.png", rows)
    report.write_markdown(out / "benchmarks.md", description, rows, checks, limits, "benchmarks.png")
    print(f"bench: wrote {out / 'benchmarks.md'} and benchmarks.png in {time.monotonic() - started:.0f} s")
    return verdict(checks, quick=args.quick)


def report_folder(out: Path | None, *, quick: bool) -> Path:
    """docs/ holds the record of full runs; a quick run's smaller scale must never overwrite it."""
    return out or (QUICK_OUT if quick else DOCS)


def verdict(checks: list[Target], *, quick: bool) -> int:
    """1 when a full run missed a target, naming each; a quick run's smaller scale is not a verdict."""
    missed = [check.name for check in checks if check.met is False]
    if not missed:
        return 0
    if quick:
        print(f"bench: a quick run missed {', '.join(missed)}: only a full run (make bench) is judged")
        return 0
    print(f"bench: FAILED: missed {', '.join(missed)} (see the report)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
