"""The default handler functions for XGBoost Boosters (the default output_fn is handler/outputs.respond).

A model folder's own `code/inference.py` may replace any of them (see handler/user_code.py).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from handler import codecs
from handler.errors import BadRequest, ModelLoadError

ARTIFACT_NAME = "xgboost-model"  # what SageMaker's XGBoost training writes
ARTIFACT_SUFFIXES = (".json", ".ubj", ".bst", ".model")

PICKLE_OPT_IN = "--allow-pickle (MME_ALLOW_PICKLE=true)"

_XGBOOST_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")

# What a pickled Booster references, in every protocol SageMaker's XGBoost 0.90/1.0 images wrote (2 and up).
_PICKLE_GLOBALS = {
    ("xgboost.core", "Booster"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("_codecs", "encode"),
}


def model_fn(model_dir: Path, *, allow_pickle: bool = False) -> xgb.Booster:
    """The Booster in model_dir: `xgboost-model`, or its one *.json / *.ubj / *.bst / *.model file."""
    path = artifact_path(model_dir)
    return booster_from_bytes(path.read_bytes(), allow_pickle=allow_pickle, source=path.name)


def artifact_path(model_dir: Path) -> Path:
    try:
        names = [entry.name for entry in model_dir.iterdir() if entry.is_file()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read model folder {model_dir}: {exc.strerror}") from None
    return model_dir / find_artifact(names, f"model folder {model_dir.name!r}")


def ubjson_size(path: Path) -> int:
    """The UBJSON size of the model in the artifact file `path`, from the file alone.

    Exact for UBJSON files; XGBoost's JSON of the same model is 0.93-1.37x its UBJSON (measured), so a
    JSON file is taken at its size / 1.15. Asking the Booster instead (save_raw) would cost a thread of
    its own per load (see handler.model) for a number the size formula rounds anyway.
    """
    with path.open("rb") as file:
        head = file.read(2)
        size = os.fstat(file.fileno()).st_size
    is_json = head[:1] == b"{" and head[1:2] in (b'"', b" ", b"\n", b"\r", b"\t")
    return int(size / 1.15) if is_json else size


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


def booster_from_bytes(data: bytes, *, allow_pickle: bool, source: str) -> xgb.Booster:
    """A Booster from an artifact's bytes, whichever of XGBoost's formats (or a pickle) they are in."""
    if not data:
        raise ModelLoadError(f"{source} is empty")
    if data[:1] == b"\x80":  # the PROTO opcode every pickle of protocol 2+ starts with
        if not allow_pickle:
            raise ModelLoadError(
                f"{source} is a pickled Booster (as SageMaker XGBoost 0.90/1.0 images wrote); unpickling can "
                f"run code, so it needs {PICKLE_OPT_IN}, or re-save it once as UBJSON with `mme convert`"
            )
        return _unpickle(data, source)
    booster = xgb.Booster()
    try:
        # load_model takes the raw bytes of JSON and UBJSON alike (and legacy binary before XGBoost 3.1).
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        if data[:1] == b"{":  # both JSON and UBJSON documents open with an object
            raise ModelLoadError(f"{source} is a corrupt XGBoost model: {_first_line(exc)}") from None
        raise ModelLoadError(
            f"{source} is not an XGBoost JSON or UBJSON model (it starts with {data[:8]!r}); if it is the "
            f"legacy binary format, XGBoost {xgb.__version__} cannot read it (support ended in 3.1): re-save "
            "it as UBJSON with xgboost<3.1"
        ) from None
    return booster


def format_name(data: bytes) -> str:
    """A human name for an artifact's format, for messages."""
    if data[:1] == b"\x80":
        return "pickle"
    if data[:1] == b"{":
        return "JSON" if data[1:2] in (b'"', b"}", b" ", b"\n", b"\r", b"\t") else "UBJSON"
    return "legacy binary"


def size_bytes(ubjson_size: int) -> int:
    """Estimated resident memory of a loaded Booster whose UBJSON serialisation takes ubjson_size bytes.

    Calibrated with psutil: RSS growth over 60-1000 loads (one fresh process per model) of models of 1.5 KB
    to 2.3 MB of UBJSON (1-1000 trees, depth 1-8) fits 2 KiB + 1.17 x UBJSON size within -17%..+20%; the
    rounder 3 KiB + 1.25 x errs towards overestimating (-11%..+29%), which is safer for a memory budget.
    """
    return 3 * 1024 + int(1.25 * ubjson_size)


def _unpickle(data: bytes, source: str) -> xgb.Booster:
    try:
        booster = _BoosterUnpickler(io.BytesIO(data)).load()
    except xgb.core.XGBoostError as exc:
        raise ModelLoadError(
            f"{source} is a pickled Booster that XGBoost {xgb.__version__} cannot read ({_first_line(exc)}); "
            "pickles written before XGBoost 1.6 (SageMaker's 0.90/1.0 images among them) hold the legacy "
            "binary format, which only xgboost<3.1 reads: run `mme convert` where xgboost<3.1 is installed"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{source} is not a readable Booster pickle: {exc}") from None
    if not isinstance(booster, xgb.Booster):
        raise ModelLoadError(f"{source} unpickles to {type(booster).__name__}, not an xgboost Booster")
    return booster


class _BoosterUnpickler(pickle.Unpickler):
    """Resolves only what a pickled Booster needs, so an opted-in pickle still cannot name os.system & co."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}; only pickled Boosters are loaded")
        return super().find_class(module, name)


def _first_line(exc: Exception) -> str:
    # XGBoost's messages open with "[time] file.cc:line: " and end in a C++ stack trace; keep only the reason.
    lines = str(exc).strip().splitlines()
    return _XGBOOST_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
