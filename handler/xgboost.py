"""The default handler functions for XGBoost Boosters (the default output_fn is handler/outputs.respond).

A model folder's own `code/inference.py` may replace any of them (see handler/user_code.py).
"""

from __future__ import annotations

import re
import threading
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
from handler.outputs import objective_of

DEFAULT_LIMITS = ModelLimits()

ARTIFACT_NAME = "xgboost-model"  # what SageMaker's XGBoost training writes
ARTIFACT_SUFFIXES = (".json", ".ubj", ".bst", ".model")

_FOLD = re.compile(r"xgboost-model-\d+")  # the k-fold outputs of SageMaker's 1.2-2 and later images
# Objectives whose ensemble answer is a vote, not a mean (AWS's image's rule).
VOTING_OBJECTIVES = ("multi:softmax", "binary:hinge")

_XGBOOST_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
_THREAD = threading.local()


def _one_omp_thread() -> None:
    """XGBoost's global nthread of 1 on this thread (its global config is per thread). Without it, loading a
    Booster runs an OpenMP team over every core whose threads then spin idle: twice the CPU time of a
    load, taken from the serving process on a small box, for no speed-up on models of a few trees."""
    if not getattr(_THREAD, "one", False):
        xgb.set_config(nthread=1)
        _THREAD.one = True


def model_fn(model_dir: Path, **options: Any) -> xgb.Booster | list[xgb.Booster]:
    """The Booster in model_dir (`xgboost-model`, or its one *.json / *.ubj / *.bst / *.model file), or the
    list of an ensemble's Boosters (k-fold `xgboost-model-N` files), as AWS's image's model_fn returns."""
    boosters = [booster_from_ubjson(to_ubjson(forest)) for forest in read_forests(model_dir, **options)]
    return boosters[0] if len(boosters) == 1 else boosters


def read_forests(
    model_dir: Path,
    *,
    allow_pickle: bool = False,
    limits: ModelLimits = DEFAULT_LIMITS,
    ensemble: bool = True,
) -> list[Forest]:
    """The validated model(s) in model_dir, read by the project's own readers (handler/formats)."""
    try:
        names = [entry.name for entry in model_dir.iterdir() if entry.is_file()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read model folder {model_dir}: {exc.strerror}") from None
    chosen = find_artifacts(names, f"model folder {model_dir.name!r}", ensemble=ensemble)
    return [read_forest(model_dir / name, allow_pickle=allow_pickle, limits=limits) for name in chosen]


def read_forest(path: Path, *, allow_pickle: bool = False, limits: ModelLimits = DEFAULT_LIMITS) -> Forest:
    """The validated model in the file `path`."""
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
    _one_omp_thread()
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
    _one_omp_thread()
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


def input_fn(input_data: bytes, content_type: str | None, n_features: int | None = None) -> np.ndarray:
    """Float32 rows; n_features, when the model's is known, sizes libsvm rows and checks every request."""
    return codecs.decode(input_data, content_type, n_features)


def predict_fn(data: Any, model: xgb.Booster | list[xgb.Booster]) -> np.ndarray:
    # One small function on purpose: the call a leaner C-API predictor would replace. A DMatrix is what AWS's
    # container's input_fn returns, so users' own input_fn may too.
    if isinstance(model, list):
        return combine_ensemble([predict_fn(data, booster) for booster in model], objective_of(model[0])[0])
    try:
        if isinstance(data, xgb.DMatrix):
            return model.predict(data)
        if _is_linear(model):  # XGBoost has no in-place prediction for gblinear
            return model.predict(xgb.DMatrix(data, missing=np.nan))
        return model.inplace_predict(data)
    except xgb.core.XGBoostError as exc:
        raise BadRequest(f"XGBoost cannot predict on this input: {_first_line(exc)}") from None


def combine_ensemble(answers: list[np.ndarray], objective: str) -> np.ndarray:
    """What AWS's image answers for several model files: the members' mean, or for class-valued objectives
    (multi:softmax, binary:hinge) their vote, the most common answer and the smallest of a tie."""
    stacked = np.stack(answers)
    if objective not in VOTING_OBJECTIVES:
        return np.mean(stacked, axis=0)
    values, index = np.unique(stacked, return_inverse=True)
    index = index.reshape(stacked.shape)
    counts = np.stack([(index == k).sum(axis=0) for k in range(len(values))])
    return values[np.argmax(counts, axis=0)].astype(stacked.dtype)


def _is_linear(booster: xgb.Booster) -> bool:
    # Asked once per Booster and kept on it: save_config costs as much as a small prediction.
    linear = getattr(booster, "_mme_linear", None)
    if linear is None:
        linear = booster._mme_linear = (
            orjson.loads(booster.save_config())["learner"]["gradient_booster"]["name"] == "gblinear"
        )
    return linear


def find_artifacts(names: Iterable[str], where: str, *, ensemble: bool) -> list[str]:
    """The model files of a folder: `xgboost-model`; else k-fold `xgboost-model-N` files, or several
    *.json/*.ubj/... files, served together when ensemble (SAGEMAKER_INFERENCE_ENSEMBLE) is on, as AWS's
    image does, and only the first (by name) when it is off."""
    names = sorted(names)
    folds = sorted((n for n in names if _FOLD.fullmatch(n)), key=lambda n: int(n.rsplit("-", 1)[1]))
    candidates = [n for n in names if n.lower().endswith(ARTIFACT_SUFFIXES)]
    if ARTIFACT_NAME not in names and (folds or len(candidates) > 1):
        members = folds or candidates
        return members if ensemble else members[:1]
    return [find_artifact(names, where)]


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
