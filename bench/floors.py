"""The limits: XGBoost's own one-row prediction in-process, and an empty reply from our HTTP stack."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from bench import loadgen, servers
from bench.models import ROW
from bench.results import Row
from bench.workloads import Bench


def inplace_predict_us(booster_file: Path, repeats: int) -> float:
    """Median microseconds of `Booster.inplace_predict` on one row, after a warm-up."""
    booster = xgb.Booster()
    booster.load_model(bytearray(booster_file.read_bytes()))
    booster.set_param({"nthread": 1})  # as the server runs it: one thread per call
    row = np.array([[float(v) for v in ROW.split(b",")]], dtype=np.float32)
    for _ in range(50):
        booster.inplace_predict(row)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        booster.inplace_predict(row)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def floor_rows(bench: Bench) -> list[Row]:
    seconds = bench.scale.floor_seconds
    predict_us = inplace_predict_us(bench.models.contract / bench.models.name(0) / "xgboost-model", 5000)
    rows = [
        Row(
            "floor.predict",
            "Floor",
            "Booster.inplace_predict, one row, in-process",
            "ms",
            predict_us / 1e3,
            None,
            False,
            "median of 5,000",
        )
    ]
    port = servers.free_port()
    cmd = [sys.executable, "-m", "bench.floor_app", str(port)]
    server = servers.spawn(
        "floor",
        cmd,
        bench.work / "logs" / "floor.log",
        dict(os.environ),
        Path(__file__).resolve().parent.parent,
        port,
    )
    with server:
        for concurrency in (1, 16):
            result = loadgen.fixed_load(bench.wrk, server.url, "/", ROW, concurrency, seconds)
            rows.append(
                Row(
                    f"floor.rps{concurrency}",
                    "Floor",
                    f"empty ASGI reply, req/s, concurrency {concurrency}",
                    "req/s",
                    result.rps,
                    None,
                    True,
                    "uvicorn + httptools + uvloop",
                )
            )
            rows.append(
                Row(
                    f"floor.p50_{concurrency}",
                    "Floor",
                    f"empty ASGI reply, p50, concurrency {concurrency}",
                    "ms",
                    result.p50_ms,
                    None,
                    False,
                )
            )
    return rows
