"""Hyperparameters, fitting one XGBoost model, and the whole train-evaluate-pack run for one location."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xgboost as xgb

from serve.errors import CommandError
from training import data, package

Hyperparameters = dict[str, int | float | str]

# The notebook's values; `reg:linear` there is the deprecated name of reg:squarederror.
DEFAULTS: Hyperparameters = {
    "max_depth": 5,
    "eta": 0.2,
    "gamma": 4,
    "min_child_weight": 6,
    "subsample": 0.8,
    "objective": "reg:squarederror",
    "num_round": 25,
    "early_stopping_rounds": 5,
}
OBJECTIVE_ALIASES = {"reg:linear": "reg:squarederror"}
WHOLE = {"max_depth", "num_round", "early_stopping_rounds", "max_leaves", "max_bin", "nthread"}
NON_NEGATIVE = WHOLE | {
    "eta",
    "learning_rate",
    "gamma",
    "min_split_loss",
    "min_child_weight",
    "subsample",
    "colsample_bytree",
    "colsample_bylevel",
    "colsample_bynode",
    "lambda",
    "reg_lambda",
    "alpha",
    "reg_alpha",
    "max_delta_step",
    "scale_pos_weight",
}
# Run settings, not booster parameters.
ROUND_KEYS = ("num_round", "early_stopping_rounds")


def _number_or_text(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def hyperparameters(overrides: Mapping[str, str]) -> Hyperparameters:
    """DEFAULTS updated by string values (as `--hp` and hyperparameters.json give them), numbers parsed."""
    merged = dict(DEFAULTS)
    for key, text in overrides.items():
        value = _number_or_text(text.strip())
        if key in NON_NEGATIVE:
            if isinstance(value, str) or not math.isfinite(value) or value < 0:
                raise CommandError(f"hyperparameter {key} must be a non-negative number, got {text!r}")
            if key in WHOLE:
                if value != int(value):
                    raise CommandError(f"hyperparameter {key} must be a whole number, got {text!r}")
                value = int(value)
        merged[key] = value
    if merged["num_round"] < 1:
        raise CommandError(f"hyperparameter num_round must be at least 1, got {merged['num_round']}")
    merged["objective"] = OBJECTIVE_ALIASES.get(str(merged["objective"]), merged["objective"])
    return merged


def _xgboost_message(exc: xgb.core.XGBoostError) -> str:
    # XGBoost errors carry a timestamp, a source path and a native stack trace; the first line says it all.
    first = str(exc).strip().splitlines()[0]
    return re.sub(r"^\[[\d:]+\] \S+: ", "", first)


def fit(
    train: data.Table,
    validation: data.Table | None,
    hp: Hyperparameters,
    nthread: int | None = None,
    log_rounds: bool = False,
) -> xgb.Booster:
    """A booster trained on `train`, stopped early on `validation` if given, cut back to its best round."""
    width = train.features.shape[1]
    if validation is not None and validation.features.shape[1] != width:
        raise CommandError(
            f"validation has {validation.features.shape[1]} feature columns, train has {width}"
        )
    params = {key: value for key, value in hp.items() if key not in ROUND_KEYS}
    if nthread:
        params.setdefault("nthread", nthread)
    dtrain = xgb.DMatrix(train.features, label=train.labels)
    evals = [(dtrain, "train")]
    stopping = None
    if validation is not None:
        evals.append((xgb.DMatrix(validation.features, label=validation.labels), "validation"))
        stopping = int(hp["early_stopping_rounds"]) or None
    try:
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=int(hp["num_round"]),
            evals=evals,
            early_stopping_rounds=stopping,
            verbose_eval=log_rounds,
        )
    except xgb.core.XGBoostError as exc:
        raise CommandError(f"XGBoost failed: {_xgboost_message(exc)}") from None
    # Keep only the rounds up to the best one, so the served model predicts what was evaluated.
    return booster[: booster.best_iteration + 1] if stopping else booster


def evaluate(booster: xgb.Booster, table: data.Table) -> tuple[float, float]:
    """(RMSE, MAE) of the booster's predictions on `table`."""
    errors = booster.predict(xgb.DMatrix(table.features)) - table.labels
    return float(np.sqrt(np.mean(errors**2))), float(np.mean(np.abs(errors)))


def train_location(location: str, data_dir: Path, out_dir: Path, hp: Hyperparameters) -> dict:
    """Fit one location from its channel files, score it on its test split, write <out>/<location>.tar.gz."""
    started = time.perf_counter()
    channels = {channel: data.channel_file(data_dir, location, channel).parent for channel in data.CHANNELS}
    train = data.read_channel(channels["train"], "train")
    booster = fit(train, data.read_channel(channels["val"], "val"), hp, nthread=1)
    rmse, mae = evaluate(booster, data.read_channel(channels["test"], "test"))
    package.write_artifact(out_dir / f"{location}.tar.gz", bytes(booster.save_raw("ubj")))
    return {
        "location": location,
        "rows": len(train.labels),
        "rounds": booster.num_boosted_rounds(),
        "test_rmse": round(rmse, 2),
        "test_mae": round(mae, 2),
        "seconds": round(time.perf_counter() - started, 3),
    }
