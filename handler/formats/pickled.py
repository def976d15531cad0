"""Pickled XGBoost Boosters, read without running anything.

A pickled Booster is a class name and a state dict: `handle` holds the model bytes (legacy binary in
0.90, a "CONFIG-offset:" snapshot in 1.0-1.2, a JSON or UBJSON snapshot from 1.3 on), and Python-side
attributes such as `best_ntree_limit` sit beside it. The unpickler here resolves a short allowlist of
globals to stand-ins of our own, so a stream naming anything else (os.system, a lambda, any class) is
refused before it is called; nothing from the pickle is ever imported.

With allow_sklearn (the server's --allow-pickle), XGBoost's scikit-learn wrappers and the numpy arrays
in their state are also resolved, still to inert stand-ins: their Booster is what is served.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from handler.errors import ModelLoadError

_BOOSTER = ("xgboost.core", "Booster")
_SKLEARN_CLASSES = {
    "XGBModel",
    "XGBRegressor",
    "XGBClassifier",
    "XGBRanker",
    "XGBRFRegressor",
    "XGBRFClassifier",
}
PICKLE_OPT_IN = "--allow-pickle (MME_ALLOW_PICKLE=true)"


@dataclass
class BoosterState:
    """What a pickled Booster held: its model bytes and the attributes the serving code reads."""

    handle: bytes = b""
    best_ntree_limit: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a Booster's state is not a dict")
        handle = state.get("handle")
        if not isinstance(handle, bytes | bytearray):
            raise pickle.UnpicklingError("the pickled Booster holds no model (its handle is empty)")
        self.handle = bytes(handle)
        limit = state.get("best_ntree_limit", 0)
        self.best_ntree_limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else 0
        self.attributes = {k: v for k, v in state.items() if k != "handle"}


class _WrapperState:
    """A scikit-learn wrapper (XGBRegressor & co.): only its Booster matters."""

    booster: BoosterState | None = None

    def __setstate__(self, state: Any) -> None:
        booster = state.get("_Booster") if isinstance(state, dict) else None
        if not isinstance(booster, BoosterState):
            raise pickle.UnpicklingError("the pickled scikit-learn model holds no Booster")
        self.booster = booster


def _bytearray(*args: Any) -> bytearray:
    # bytearray(n) would allocate n bytes: only the copy of given bytes is allowed.
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin1")
    raise pickle.UnpicklingError("bytearray() with arguments other than bytes")


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(str, "latin1").
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    raise pickle.UnpicklingError("_codecs.encode() other than of a latin1 string")


def _numpy_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), dtype="b")


def _numpy_dtype(name: Any, *args: Any) -> np.dtype:
    dtype = np.dtype(name) if isinstance(name, str) and len(name) < 16 else None
    if dtype is None or dtype.kind == "O":
        raise pickle.UnpicklingError("a numpy dtype other than a plain number type")
    return dtype


def _numpy_scalar(dtype: Any, raw: Any = b"") -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("a numpy scalar that is not a plain number")
    return np.frombuffer(raw, dtype=dtype)[0]


_ALWAYS = {
    _BOOSTER: BoosterState,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("_codecs", "encode"): _encode,
}
_NUMPY = {
    "_reconstruct": _numpy_reconstruct,
    "dtype": _numpy_dtype,
    "scalar": _numpy_scalar,
    "ndarray": np.ndarray,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allow_sklearn: bool) -> None:
        super().__init__(io.BytesIO(data))
        self.allow_sklearn = allow_sklearn

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALWAYS:
            return _ALWAYS[(module, name)]
        if self.allow_sklearn:
            if module == "xgboost.sklearn" and name in _SKLEARN_CLASSES:
                return _WrapperState
            if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY:
                return _NUMPY[name]
        if not self.allow_sklearn and (module == "xgboost.sklearn" or module.startswith("numpy")):
            raise _Refused(f"it references {module}.{name}, which needs {PICKLE_OPT_IN}")
        raise _Refused(f"it references {module}.{name}; only pickled XGBoost Boosters are loaded")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses persistent ids, which no pickled Booster does")


class _Refused(pickle.UnpicklingError):
    pass


def read(data: bytes, source: str, *, allow_sklearn: bool) -> BoosterState:
    """The Booster state in a pickle; ModelLoadError (naming the global) for any other pickle."""
    try:
        loaded = _Unpickler(data, allow_sklearn).load()
    except _Refused as exc:
        raise ModelLoadError(f"{source} is a pickle that is not a plain XGBoost Booster: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, UnicodeDecodeError) as exc:  # fmt: skip
        raise ModelLoadError(
            f"{source} is not a readable Booster pickle: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(loaded, _WrapperState) and loaded.booster is not None:
        return loaded.booster
    if not isinstance(loaded, BoosterState):
        raise ModelLoadError(f"{source} unpickles to {type(loaded).__name__}, not an XGBoost Booster")
    return loaded
