"""`python -m bench --profile`: where our warm invoke (W1, concurrency 16) spends its time, by py-spy.

py-spy samples the server from outside while wrk (or the Python client) drives it; the folded stacks it
writes are reduced to the functions that hold the most samples, on their own (self) and with callees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench import loadgen
from bench.models import ROW
from bench.workloads import Bench, http_client, load_model

RATE = 250  # samples per second: enough for a 10 s run, light enough not to steal a core
# Native stacks carry no idle flag: a pool thread waiting for work shows up blocked in this call.
IDLE_FRAME = "PyThread_acquire_lock_timed"


def hot_functions(folded: str, top: int = 10) -> tuple[int, list[tuple[str, int, int]]]:
    """(busy samples, [(function, self samples, total samples)]) from py-spy's raw folded stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or IDLE_FRAME in stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, [(name, samples, inclusive[name]) for name, samples in own.most_common(top)]


def profile_w1(bench: Bench, seconds: float) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = bench.work / "profile-w1.folded"
    with bench.ours(name="ours-profile") as server, http_client(server) as http:
        load_model(http, bench.models, 0, "warm").raise_for_status()
        cmd = [py_spy, "record", "--native", "--format", "raw", "--rate", str(RATE)]
        cmd += ["--duration", f"{seconds:g}", "--pid", str(server.proc.pid), "--output", str(out)]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = loadgen.fixed_load(bench.wrk, server.url, "/models/warm/invoke", ROW, 16, seconds)
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode:
            raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    total, hot = hot_functions(out.read_text())
    lines = [
        f"W1 under py-spy ({RATE} Hz, --native, {total:,} busy samples): {result.rps:,.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms; folded stacks in {out}",
        f"{'self %':>7} {'total %':>8}  function",
    ]
    lines += [f"{own / total:7.1%} {inclusive / total:8.1%}  {name}" for name, own, inclusive in hot]
    return "\n".join(lines)
