"""Model file -> validated Forest, for every format SageMaker's XGBoost images and users' code wrote.

The format is chosen from the bytes, never from a file name: a pickle opens with the PROTO opcode,
JSON and UBJSON with an object, a Booster snapshot of XGBoost 1.0-1.2 with "CONFIG-offset:", and
anything else is read as the legacy binary format, whose own checks say when it is not one.
"""

from __future__ import annotations

import orjson

from handler.errors import ModelLoadError
from handler.forest import Forest, ModelLimits, build
from handler.formats import document, legacy, pickled, ubjson

SNAPSHOT = b"CONFIG-offset:"
FORMATS_HELP = (
    "legacy binary (XGBoost 0.x-2.x save_model), JSON, UBJSON, pickled Boosters (every SageMaker XGBoost "
    "image from 0.90 on; scikit-learn wrappers with --allow-pickle)"
)


def read(data: bytes, source: str, limits: ModelLimits, *, allow_pickle: bool = False) -> Forest:
    """The validated model in `data` (a file's bytes), served as the image that wrote it served it:
    a pickle's best_ntree_limit is applied. ModelLoadError names the format and the problem."""
    if not data:
        raise ModelLoadError(f"{source} is empty")
    try:
        if data[:1] == b"\x80":  # the PROTO opcode every pickle of protocol 2+ starts with
            state = pickled.read(data, source, allow_sklearn=allow_pickle)
            forest = build(_unpickled(state.handle, f"{source} (pickled Booster)", limits), limits)
            # SageMaker's 0.90-1.2 images predicted a pickle with its best_ntree_limit; pickles of 1.3 and
            # later (JSON or UBJSON inside) come from users' scripts, whose serving used every tree.
            legacy_inside = not state.handle.startswith(b"{")
            return _as_served(forest.limited(state.best_ntree_limit) if legacy_inside else forest)
        return _as_served(build(_model_file(data, source, limits), limits))
    except ModelLoadError as exc:
        if str(exc).startswith(source):
            raise
        raise ModelLoadError(f"{source}: {exc}") from None


def _as_served(forest: Forest) -> Forest:
    # Summed as the XGBoost that wrote it summed, whichever XGBoost predicts from now on.
    leaves_first = forest.leaves_first
    forest = forest.weights_applied()
    return forest.base_added_last() if leaves_first else forest


def _unpickled(handle: bytes, source: str, limits: ModelLimits) -> Forest:
    if handle.startswith(SNAPSHOT):
        # XGBoost 1.0-1.2: header, int64 offset of the JSON config, the legacy binary model, the config.
        offset = int.from_bytes(handle[len(SNAPSHOT) : len(SNAPSHOT) + 8], "little", signed=True)
        body = handle[len(SNAPSHOT) + 8 :]
        if not 0 < offset <= len(body):
            raise ModelLoadError(f"{source} is a corrupt XGBoost 1.0-1.2 snapshot (config offset {offset})")
        return legacy.read(body[:offset], source)
    return _model_file(handle, source, limits)


def _model_file(data: bytes, source: str, limits: ModelLimits) -> Forest:
    if data[:1] == b"{":
        return document.forest_from_document(_document(data, source, limits), _kind(data))
    if data.startswith(SNAPSHOT):
        return _unpickled(data, source, limits)
    if not legacy.looks_legacy(data):
        raise ModelLoadError(
            f"{source} is not an XGBoost model in any format this server reads ({FORMATS_HELP}): "
            f"it starts with {data[:16]!r}"
        )
    return legacy.read(data, source)


def _kind(data: bytes) -> str:
    # JSON's first key opens with a quote (after any space); UBJSON's with a length marker.
    return "JSON" if data[1:].lstrip()[:1] in (b'"', b"}") else "UBJSON"


def _document(data: bytes, source: str, limits: ModelLimits) -> object:
    kind = _kind(data)
    # Counted before parsing: a document's trees cost far more as objects than as text.
    trees = data.count(b"split_conditions")
    if trees > limits.max_trees:
        raise ModelLoadError(f"{source} holds {trees} trees, more than {limits.max_trees} (--max-trees)")
    if kind == "UBJSON":
        return ubjson.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelLoadError(f"{source} is not a valid JSON model: {exc}") from None


def format_name(data: bytes) -> str:
    """A human name for an artifact's format, for messages."""
    if data[:1] == b"\x80":
        return "pickle"
    if data[:1] == b"{":
        return _kind(data)
    if data.startswith(SNAPSHOT):
        return "XGBoost 1.0-1.2 snapshot"
    return "legacy binary"
