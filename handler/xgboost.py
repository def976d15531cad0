"""The default handler functions, sagemaker-inference-toolkit's four, for XGBoost Boosters.

A model folder's own `code/inference.py` may replace any of them (see handler/user_code.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xgboost as xgb

from handler import codecs, formats
from handler.errors import BadRequest, ModelLoadError
from handler.forest import Forest, ModelLimits, check_rows, leaf_indices  # noqa: F401 - check_rows for convert
from handler.formats import ubjson
from handler.formats.document import document_from_forest

DEFAULT_LIMITS = ModelLimits()

ARTIFACT_NAME = "xgboost-model"  # what SageMaker's XGBoost training writes
ARTIFACT_SUFFIXES = (".json", ".ubj", ".bst", ".model")

_XGBOOST_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def model_fn(
    model_dir: Path, *, allow_pickle: bool = False, limits: ModelLimits = DEFAULT_LIMITS
) -> xgb.Booster:
    """The Booster in model_dir: `xgboost-model`, or its one *.json / *.ubj / *.bst / *.model file."""
    return booster_from_ubjson(to_ubjson(read_forest(model_dir, allow_pickle=allow_pickle, limits=limits)))


def read_forest(
    model_dir: Path, *, allow_pickle: bool = False, limits: ModelLimits = DEFAULT_LIMITS
) -> Forest:
    """The validated model in model_dir, read by the project's own readers (handler/formats)."""
    path = artifact_path(model_dir)
    try:
        with path.open("rb") as file:
            data = file.read(limits.max_model_bytes + 1)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(data) > limits.max_model_bytes:
        raise ModelLoadError(f"{path.name} is larger than {limits.max_model_bytes} bytes (--max-model-bytes)")
    return formats.read(data, path.name, limits, allow_pickle=allow_pickle)


def to_ubjson(forest: Forest) -> bytes:
    """The model as UBJSON in XGBoost's schema: what XGBoost loads, and what `mme convert` writes."""
    return ubjson.dumps(document_from_forest(forest))


def verify_ubjson(forest: Forest, raw: bytes, rows: np.ndarray) -> None:
    """ValueError unless XGBoost, loading `raw` on its own, walks `rows` to the leaves the project's own
    reference walk finds in `forest` (gbtree/dart), or holds its weights (gblinear)."""
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    if forest.booster == "gblinear":
        weights = orjson.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"][
            "weights"
        ]
        if not np.array_equal(np.float32(weights), forest.linear_weights):
            raise ValueError("the linear weights differ")
        return
    theirs = booster.predict(xgb.DMatrix(rows, missing=np.nan), pred_leaf=True).reshape(len(rows), -1)
    if not np.array_equal(theirs, leaf_indices(forest, rows)):
        raise ValueError("XGBoost walks some rows to other leaves than the model as read")


def forest_of(booster: xgb.Booster) -> Forest:
    """The Forest of a Booster made by other code (a user's model_fn), read back from its UBJSON."""
    return formats.read(bytes(booster.save_raw("ubj")), "model_fn's Booster", DEFAULT_LIMITS)


def booster_from_ubjson(raw: bytes) -> xgb.Booster:
    """XGBoost's Booster of to_ubjson's output (so native code only ever sees validated models)."""
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))
    except xgb.core.XGBoostError as exc:
        raise ModelLoadError(
            f"XGBoost {xgb.__version__} cannot load this model: {_first_line(exc)}"
        ) from None
    # The server runs requests in parallel; a Booster using every core per request would oversubscribe.
    booster.set_param({"nthread": 1})
    return booster


def artifact_path(model_dir: Path) -> Path:
    try:
        names = [entry.name for entry in model_dir.iterdir() if entry.is_file()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read model folder {model_dir}: {exc.strerror}") from None
    return model_dir / find_artifact(names, f"model folder {model_dir.name!r}")


def input_fn(input_data: bytes, content_type: str | None, n_features: int | None = None) -> np.ndarray:
    """Float32 rows; n_features, when the model's is known, sizes libsvm rows and checks every request."""
    return codecs.decode(input_data, content_type, n_features)


def predict_fn(data: Any, model: xgb.Booster) -> np.ndarray:
    # One small function on purpose: the call a leaner C-API predictor would replace. A DMatrix is what AWS's
    # container's input_fn returns, so users' own input_fn may too.
    try:
        if isinstance(data, xgb.DMatrix):
            return model.predict(data)
        return model.inplace_predict(data)
    except xgb.core.XGBoostError as exc:
        raise BadRequest(f"XGBoost cannot predict on this input: {_first_line(exc)}") from None


def output_fn(prediction: np.ndarray, accept: str | None) -> tuple[bytes, str]:
    return codecs.encode(prediction, accept)


def find_artifact(names: Iterable[str], where: str) -> str:
    """Which of a folder's (or archive's) top-level file names is the model; ModelLoadError if unclear."""
    names = sorted(names)
    if ARTIFACT_NAME in names:
        return ARTIFACT_NAME
    candidates = [name for name in names if name.lower().endswith(ARTIFACT_SUFFIXES)]
    if len(candidates) == 1:
        return candidates[0]
    wanted = f"`{ARTIFACT_NAME}` or exactly one {'/'.join('*' + s for s in ARTIFACT_SUFFIXES)} file"
    if candidates:
        raise ModelLoadError(
            f"{where} holds {len(candidates)} model files ({', '.join(candidates)}); want {wanted}"
        )
    found = f" (it holds: {', '.join(names[:10])})" if names else " (it is empty)"
    raise ModelLoadError(f"{where} holds no model file; want {wanted}{found}")


def size_bytes(ubjson_size: int) -> int:
    """Estimated resident memory of a loaded Booster whose UBJSON serialisation takes ubjson_size bytes.

    Calibrated with psutil: RSS growth over 60-1000 loads (one fresh process per model) of models of 1.5 KB
    to 2.3 MB of UBJSON (1-1000 trees, depth 1-8) fits 2 KiB + 1.17 x UBJSON size within -17%..+20%; the
    rounder 3 KiB + 1.25 x errs towards overestimating (-11%..+29%), which is safer for a memory budget.
    """
    return 3 * 1024 + int(1.25 * ubjson_size)


def _first_line(exc: Exception) -> str:
    # XGBoost's messages open with "[time] file.cc:line: " and end in a C++ stack trace; keep only the reason.
    lines = str(exc).strip().splitlines()
    return _XGBOOST_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
