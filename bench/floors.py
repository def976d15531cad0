"""The limits: XGBoost's own one-row prediction in-process, and an empty reply from our HTTP stack."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from bench.models import ROW


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
