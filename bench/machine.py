"""The machine and versions a run was measured on, for the report's header."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _java() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return out.splitlines()[0] if out else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def _versions(python: Path | None, packages: tuple[str, ...]) -> list[str] | None:
    """The versions of `packages` in another virtualenv, or None when that peer is not in this run."""
    if python is None:
        return None
    script = f"from importlib.metadata import version as v; print(*(v(p) for p in {packages!r}))"
    return subprocess.run([str(python), "-c", script], capture_output=True, text=True).stdout.split()


def describe(
    baseline_python: Path | None,
    load_tool: str,
    command: str,
    load_at_start: str,
    mlserver_python: Path | None = None,
) -> dict[str, str]:
    baseline = "skipped"
    if out := _versions(baseline_python, ("multi-model-server", "sagemaker-inference", "xgboost-cpu")):
        baseline = f"MMS: multi-model-server {out[0]}, sagemaker-inference {out[1]}, xgboost {out[2]}"
    second = "skipped"
    if out := _versions(mlserver_python, ("mlserver", "mlserver-xgboost", "xgboost-cpu", "uvloop")):
        second = (
            f"MLServer {out[0]}, mlserver-xgboost {out[1]}, xgboost {out[2]}, uvloop {out[3]}; "
            "parallel_workers=0, OMP_NUM_THREADS=1"
        )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "cpu": f"{_cpu_model()}, {psutil.cpu_count()} cores",
        "memory": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ours": f"xgboost {_version('xgboost-cpu')}, uvicorn {_version('uvicorn')}, "
        f"httptools {_version('httptools')}, uvloop {_version('uvloop')}",
        "baseline": baseline,
        "second peer": second,
        "java": _java(),
        "load generator": load_tool,
        # The machine may be shared: a busy one slows both sides, and shows here.
        "load average 1/5/15 min, start → end": f"{load_at_start} → {load_average()}",
    }
