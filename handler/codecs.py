"""Request bodies -> float32 rows, and predictions -> response bodies; a superset of AWS's XGBoost container.

Requests, by Content-Type (case-insensitive; parameters such as charset are ignored; none means text/csv):
  text/csv                     rows of numbers, no header; an empty field or `nan` is a missing value;
                               `text/csv;label_size=1` drops the first column (a label)
  text/libsvm, text/x-libsvm   `label idx:val idx:val ...` per line (the label is optional and ignored);
                               indices count from 1 if the payload's smallest index is >= 1, as in AWS's
  application/json             {"instances": [[...], ...]}, {"instances": [{"features": [...]}, ...]},
                               [[...], ...] or one flat row [...]; null is a missing value
  application/jsonlines        one row per line: [...] or {"features": [...]}
  application/x-npy            a numpy .npy array; 1-D is one row
Infinite values are refused everywhere: XGBoost would treat them as ordinary huge numbers.

Responses, by Accept (q-values honoured; none, */* and application/* mean application/json):
  application/json             [p1, p2, ...]; a list per row for multi-output models (multi:softprob)
  text/csv                     one row's prediction per line; a multi-output row's values comma separated
  text/csv;layout=line         all predictions comma separated on ONE line: the shape AWS's MME XGBoost gives
  application/jsonlines        one JSON value per row, one per line
No body ends with a newline. Numbers are float32 values written shortest, e.g. 395909.25.
"""

from __future__ import annotations

import array
import io
import math
from collections.abc import Callable
from functools import lru_cache, partial

import numpy as np
import orjson

from handler.errors import BadRequest, NotAcceptable, UnsupportedMediaType

Decoder = Callable[[bytes, "int | None"], np.ndarray]
Encoder = Callable[[np.ndarray], bytes]

REQUEST_TYPES = ("text/csv", "text/libsvm", "text/x-libsvm", "application/json", "application/jsonlines",
                 "application/x-npy")  # fmt: skip
RESPONSE_TYPES = ("application/json", "text/csv", "text/csv;layout=line", "application/jsonlines")

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode(body: bytes, content_type: str | None, n_features: int | None) -> np.ndarray:
    """The request as C-contiguous float32 rows (NaN = missing), checked against the model's feature count."""
    if not body:
        raise BadRequest("the request body is empty")
    rows = _decoder_for(content_type)(body, n_features)
    if n_features is not None and rows.shape[1] != n_features:
        raise BadRequest(f"expected {n_features} features, got {rows.shape[1]}")
    return rows


def csv_row(body: bytes, width: int) -> list[float] | None:
    """A one-line CSV body of `width` finite numbers, as the float32 values decode() would read; None for
    anything else, which is decode()'s to read or refuse.

    The real-time request's fast path: Python's float() is what numpy parses each field with (then rounded
    to float32, as array "f" rounds), without numpy's per-call cost.
    """
    if b"\n" in body.rstrip(b"\r\n"):
        return None
    try:
        row = array.array("f", map(float, body.split(b",")))
    except ValueError:  # an empty field (missing value) or junk
        return None
    values = row.tolist()
    # The sum is finite only if every value is: NaN (missing) and inf are decode()'s to handle.
    return values if len(values) == width and math.isfinite(sum(values)) else None


def encode(prediction: np.ndarray, accept: str | None) -> tuple[bytes, str]:
    """(response body, its content type) for the best type the Accept header allows."""
    encoder, content_type = _encoder_for(accept)
    return encoder(np.ascontiguousarray(prediction, dtype=np.float32)), content_type


def _parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    media_type, *params = text.split(";")
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), parsed


# --- requests -------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _decoder_for(content_type: str | None) -> Decoder:
    # Cached: a server sees few distinct Content-Type strings, so parsing each once keeps the hot path lean.
    media_type, params = _parse_media_type(content_type or "text/csv")
    if media_type == "text/csv":
        label_size = params.get("label_size", "0")
        if not label_size.isdigit():
            raise BadRequest(f"label_size must be a non-negative integer, got {label_size!r}")
        return partial(_csv, int(label_size))
    decoder = _DECODERS.get(media_type)
    if decoder is None:
        raise UnsupportedMediaType(
            f"cannot read content type {content_type!r}; supported: {', '.join(REQUEST_TYPES)}"
        )
    return decoder


def _csv(label_size: int, body: bytes, n_features: int | None) -> np.ndarray:
    text = body.rstrip(b"\r\n")
    n_lines = text.count(b"\n") + 1
    # Fast paths for well-formed bodies (measured: 1.5 us for one 6-field row; loadtxt's C parser is 4x faster
    # than per-line splitting at 10,000 rows). numpy strips spaces and \r, and warns once if a value overflows
    # float32 to inf, which _finite then refuses.
    try:
        if n_lines == 1:
            rows = np.array([text.split(b",")], dtype=np.float32)
        else:
            rows = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float32, ndmin=2, comments=None)
    except ValueError:
        rows = None
    # Empty fields, ragged rows, junk, or blank lines (loadtxt skips them; they must count as rows): go cell
    # by cell, to read empty fields as missing or to say exactly where the body is wrong.
    if rows is None or len(rows) != n_lines:
        rows = _csv_checked(text.split(b"\n"))
    if label_size:
        if label_size >= rows.shape[1]:
            raise BadRequest(f"label_size={label_size} leaves no feature columns in {rows.shape[1]}")
        rows = np.ascontiguousarray(rows[:, label_size:])
    return _finite(rows, "CSV", "line", first_column=label_size + 1)


def _csv_checked(lines: list[bytes]) -> np.ndarray:
    width = len(lines[0].split(b","))
    rows = []
    for number, line in enumerate(lines, 1):
        cells = line.split(b",")
        if len(cells) != width:
            what = "is blank" if not line.strip() else f"has {len(cells)} fields"
            raise BadRequest(f"CSV line {number} {what}, but line 1 has {width}")
        rows.append([_csv_number(cell, number, column) for column, cell in enumerate(cells, 1)])
    if not any(line.strip() for line in lines):
        raise BadRequest("the request body holds no CSV rows")
    return np.array(rows, dtype=np.float32)


def _csv_number(cell: bytes, line: int, column: int) -> float:
    cell = cell.strip()
    if not cell:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise BadRequest(f"CSV line {line}, column {column}: {_show(cell)} is not a number") from None


def _libsvm(body: bytes, n_features: int | None) -> np.ndarray:
    text = _text(body, "libsvm")
    entries: list[tuple[int, int, float, int]] = []  # (row, index, value, line number)
    n_rows = 0
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            tokens = tokens[1:]  # the label, which prediction ignores
        seen = set()
        for token in tokens:
            key, _, value = token.partition(":")
            if key == "qid":
                continue
            if not (key.isascii() and key.isdigit()) or not value:
                raise BadRequest(f"libsvm line {number}: {_show(token)} is not index:value")
            index = int(key)
            if index in seen:
                raise BadRequest(f"libsvm line {number}: feature index {index} appears twice")
            seen.add(index)
            try:
                entries.append((n_rows, index, float(value), number))
            except ValueError:
                raise BadRequest(f"libsvm line {number}: value {_show(value)} is not a number") from None
        n_rows += 1
    if not n_rows:
        raise BadRequest("the request body holds no libsvm rows")
    shift = 1 if entries and min(entry[1] for entry in entries) >= 1 else 0
    width = n_features if n_features is not None else max((e[1] for e in entries), default=-1) + 1 - shift
    rows = np.full((n_rows, width), np.nan, dtype=np.float32)
    for row, index, value, number in entries:
        if index - shift >= width:
            raise BadRequest(
                f"libsvm line {number}: feature index {index} is beyond the model's {width} features"
            )
        if math.isinf(value):
            raise BadRequest(f"libsvm line {number}: feature {index} is infinite")
        rows[row, index - shift] = value
    return rows


def _json(body: bytes, n_features: int | None) -> np.ndarray:
    document = _json_value(body, "JSON")
    if isinstance(document, dict):
        if not isinstance(document.get("instances"), list):
            raise BadRequest('a JSON object body needs an "instances" list')
        rows = [_json_row(instance, f"instance {i}") for i, instance in enumerate(document["instances"], 1)]
    elif isinstance(document, list):
        is_one_row = document and not isinstance(document[0], list | dict)
        rows = [document] if is_one_row else [_json_row(row, f"row {i}") for i, row in enumerate(document, 1)]
    else:
        raise BadRequest('JSON body must be {"instances": [...]}, a list of rows or one row of numbers')
    return _numeric_rows(rows, "JSON", "row")


def _jsonlines(body: bytes, n_features: int | None) -> np.ndarray:
    rows = [
        _json_row(_json_value(line, f"JSON on line {number}"), f"line {number}")
        for number, line in enumerate(body.splitlines(), 1)
        if line.strip()
    ]
    return _numeric_rows(rows, "JSON lines", "line")


def _json_value(text: bytes, what: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from None


def _json_row(value: object, where: str) -> list:
    if isinstance(value, dict):
        value = value.get("features")
    if not isinstance(value, list):
        raise BadRequest(f'{where}: expected a list of numbers or {{"features": [...]}}')
    return value


def _numeric_rows(rows: list[list], source: str, unit: str) -> np.ndarray:
    if not rows:
        raise BadRequest(f"the request body holds no {source} rows")
    try:
        array = np.array(rows)  # no dtype yet: numpy would silently parse strings such as "1.5"
    except ValueError:
        array = None  # ragged rows; the check below names the first
    if array is None or array.ndim != 2 or array.dtype.kind not in "biuf":
        _check_values(rows, source, unit)
        array = np.array(rows, dtype=np.float32)  # None becomes NaN, i.e. missing
    return _finite(np.ascontiguousarray(array, dtype=np.float32), source, unit)


def _check_values(rows: list[list], source: str, unit: str) -> None:
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise BadRequest(f"{source} {unit} {number} has {len(row)} values, {unit} 1 has {width}")
        for column, value in enumerate(row, 1):
            if not (value is None or isinstance(value, int | float)):
                raise BadRequest(f"{source} {unit} {number}, value {column}: {_show(value)} is not a number")


def _npy(body: bytes, n_features: int | None) -> np.ndarray:
    if not body.startswith(b"\x93NUMPY"):
        raise BadRequest("the body is not a .npy array (it lacks the \\x93NUMPY magic)")
    try:
        array = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequest(f"unreadable .npy array: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise BadRequest(f".npy array has dtype {array.dtype}; expected numbers")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] == 0:
        raise BadRequest(f".npy array has shape {array.shape}; expected rows of features (1-D or 2-D)")
    return _finite(np.ascontiguousarray(array, dtype=np.float32), ".npy", "row")


def _finite(rows: np.ndarray, source: str, unit: str, first_column: int = 1) -> np.ndarray:
    """rows unchanged, unless one holds inf (literal, or beyond float32's range): XGBoost would misread it."""
    # A real-time request is a row or two: summing them in Python beats numpy's per-call dispatch.
    # The sum is infinite (or NaN from inf - inf) exactly when a value is infinite, or when finite values
    # overflow; only then does numpy look cell by cell.
    total = sum(rows.ravel().tolist()) if rows.size <= 64 else float(rows.sum(dtype=np.float64))
    if not math.isfinite(total) and np.isinf(rows).any():
        row, column = np.argwhere(np.isinf(rows))[0]
        raise BadRequest(
            f"{source} {unit} {row + 1}, column {column + first_column}: infinite value "
            "(inf, or beyond float32's range); use an empty field, nan or null for a missing value"
        )
    return rows


def _text(body: bytes, source: str) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{source} body is not valid UTF-8: {exc}") from None


def _show(value: object) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= 30 else text[:30] + "...")


_DECODERS: dict[str, Decoder] = {
    "text/libsvm": _libsvm,
    "text/x-libsvm": _libsvm,
    "application/json": _json,
    "application/jsonlines": _jsonlines,
    "application/x-npy": _npy,
}


# --- responses ------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _encoder_for(accept: str | None) -> tuple[Encoder, str]:
    if not accept or not accept.strip():
        return _to_json, "application/json"
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media_type, params = _parse_media_type(item)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0  # RFC 9110 makes a malformed q-value invalid; ignore that choice
        if quality > 0:
            ranked.append((-quality, position, media_type, params.get("layout")))
    for _, _, media_type, layout in sorted(ranked):
        if media_type in ("*/*", "application/*", "application/json"):
            return _to_json, "application/json"
        if media_type == "application/jsonlines":
            return _to_jsonlines, "application/jsonlines"
        if media_type in ("text/*", "text/csv") and layout in (None, "line"):
            return (_to_csv_line if layout else _to_csv_rows), "text/csv"
    raise NotAcceptable(f"cannot answer in {accept!r}; supported: {', '.join(RESPONSE_TYPES)}")


def _to_json(prediction: np.ndarray) -> bytes:
    return orjson.dumps(prediction, option=_NUMPY)


def _to_csv_rows(prediction: np.ndarray) -> bytes:
    # orjson writes float32 shortest and fast; reshaping its JSON beats formatting numbers in Python.
    if prediction.ndim == 1:
        return orjson.dumps(prediction, option=_NUMPY)[1:-1].replace(b",", b"\n")
    flat_rows = prediction.reshape(len(prediction), -1)
    return orjson.dumps(flat_rows, option=_NUMPY)[2:-2].replace(b"],[", b"\n")


def _to_csv_line(prediction: np.ndarray) -> bytes:
    return orjson.dumps(prediction.ravel(), option=_NUMPY)[1:-1]


def _to_jsonlines(prediction: np.ndarray) -> bytes:
    if prediction.ndim == 1:
        return orjson.dumps(prediction, option=_NUMPY)[1:-1].replace(b",", b"\n")
    return b"\n".join(orjson.dumps(row, option=_NUMPY) for row in prediction)
