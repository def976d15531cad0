"""Request bodies -> float32 rows, and predictions -> response bodies; a superset of AWS's XGBoost container.

Requests, by Content-Type (case-insensitive; parameters such as charset are ignored):
  text/csv                     rows of numbers, no header; an empty field or `nan` is a missing value;
                               `text/csv;label_size=1` drops the first column (a label). A first line
                               without a comma is split at the first tab, semicolon, pipe or space it
                               holds (AWS's container sniffs the first line's delimiter too)
  text/libsvm, text/x-libsvm   `[label] idx:val idx:val ...` per line (the label is ignored); indices
                               count from 1 if the payload's smallest index is >= 1, as in AWS's
  application/json             {"instances": [[...], ...]}, {"instances": [{"features": [...]}, ...]},
                               [[...], ...] or one flat row [...]; null is a missing value
  application/jsonlines        one row per line: [...] or {"features": [...]}
  application/x-npy            a numpy .npy array of numbers; 1-D is one row
  application/x-recordio-protobuf  SageMaker's RecordIO-protobuf records (handler/recordio.py)
  none (or curl's default application/x-www-form-urlencoded)  libsvm if the first line has an
                               `idx:val` token (AWS's container reads a typeless body as libsvm), else CSV
Infinite values are refused everywhere: XGBoost would treat them as ordinary huge numbers. A body that
does not parse as its type is a BadRequest naming where; nothing is ever predicted from a default.

Responses, by Accept (q-values honoured; none and */* mean the default type):
  application/json             [p1, p2, ...]; a list per row for multi-output models (multi:softprob)
  text/csv                     one row's prediction per line; a multi-output row's values comma separated
  text/csv;layout=line         all predictions comma separated on ONE line: the shape AWS's MME XGBoost gives
  application/jsonlines        one JSON value per row, one per line
  application/x-npy            a float32 .npy array, one row per input row
  application/x-recordio-protobuf  one Record per row, its prediction in label["score"] (float32)
With single_model=True, JSON, CSV and JSON lines take the shapes AWS's single-model endpoint answers:
{"predictions": [{"score": p}, ...]}, CSV lines each ending in a newline, {"score": p} lines.
Numbers are float32 values written shortest, e.g. 395909.25.
"""

from __future__ import annotations

import array
import io
import itertools
import math
from collections.abc import Callable
from functools import lru_cache, partial

import numpy as np
import orjson

from handler import recordio
from handler.errors import BadRequest, NotAcceptable, UnsupportedMediaType

Decoder = Callable[[bytes, "int | None"], np.ndarray]
Encoder = Callable[[np.ndarray], bytes]

JSON = "application/json"
CSV = "text/csv"
CSV_LINE = "text/csv;layout=line"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"
REQUEST_TYPES = (CSV, "text/libsvm", "text/x-libsvm", JSON, JSONLINES, NPY, RECORDIO)
RESPONSE_TYPES = (JSON, CSV, CSV_LINE, JSONLINES, NPY, RECORDIO)
# Header values longer than this are parsed on every request instead of memoized: a memo keyed by raw
# headers would otherwise keep whatever a client sends (256 entries x 8 MB headers = 2 GiB each).
MEMO_MAX_CHARS = 256
MAX_CELLS = recordio.MAX_CELLS
_LIBSVM_MAX_INDEX_DIGITS = 9  # indices up to 999,999,999; longer ones are not feature numbers
_CSV_DELIMITERS = (b"\t", b";", b"|", b" ")
_TYPELESS = (None, "application/x-www-form-urlencoded")

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def decode(body: bytes, content_type: str | None, n_features: int | None) -> np.ndarray:
    """The request as C-contiguous float32 rows (NaN = missing), checked against the model's feature count."""
    if not body:
        raise BadRequest("the request body is empty")
    if content_type in _TYPELESS:
        rows = (_libsvm if _looks_like_libsvm(body) else _PLAIN_CSV)(body, n_features)
    else:
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


def encode(
    prediction: np.ndarray, accept: str | None, *, default: str = JSON, single_model: bool = False
) -> tuple[bytes, str]:
    """(response body, its content type) for the best type the Accept header allows; `default` answers
    a missing Accept or */*."""
    if accept is None or len(accept) <= MEMO_MAX_CHARS:  # response_type(), inlined: this is every response
        kind = _memo_response_type(accept, default)
    else:
        kind = _response_type(accept, default)
    encoder, content_type = (_SINGLE_MODEL if single_model else _MULTI_MODEL)[kind]
    return encoder(np.ascontiguousarray(prediction, dtype=np.float32)), content_type


def response_type(accept: str | None, default: str = JSON) -> str:
    """Which of RESPONSE_TYPES the Accept header asks for; NotAcceptable if none."""
    if accept is None or len(accept) <= MEMO_MAX_CHARS:
        return _memo_response_type(accept, default)
    return _response_type(accept, default)


def _parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    media_type, *params = text.split(";")
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), parsed


# --- requests -------------------------------------------------------------------------------------------


def _decoder_for(content_type: str) -> Decoder:
    if len(content_type) <= MEMO_MAX_CHARS:
        return _memo_decoder(content_type)
    return _make_decoder(content_type)


def _make_decoder(content_type: str) -> Decoder:
    media_type, params = _parse_media_type(content_type)
    if media_type == CSV:
        label_size = params.get("label_size", "0")
        if label_size not in ("0", "1"):
            raise BadRequest(f"label_size must be 0 or 1 (as in AWS's container), got {_show(label_size)}")
        return partial(_csv, int(label_size))
    decoder = _DECODERS.get(media_type)
    if decoder is None:
        raise UnsupportedMediaType(
            f"cannot read content type {_show(content_type, 80)}; supported: {', '.join(REQUEST_TYPES)}"
        )
    return decoder


# Cached: a server sees few distinct Content-Type strings, so parsing each once keeps the hot path lean.
_memo_decoder = lru_cache(maxsize=256)(_make_decoder)


def _looks_like_libsvm(body: bytes) -> bool:
    first = body.lstrip()[:4096].split(b"\n", 1)[0]
    return any(b":" in token for token in first.split()[:2])


def _csv_delimiter(text: bytes) -> bytes:
    end = text.find(b"\n")
    first = (text if end < 0 else text[:end]).strip()
    if b"," in first:
        return b","
    return next((d for d in _CSV_DELIMITERS if d in first), b",")


def _csv(label_size: int, body: bytes, n_features: int | None) -> np.ndarray:
    text = body.rstrip(b"\r\n")
    n_lines = text.count(b"\n") + 1
    delimiter = _csv_delimiter(text)
    # Fast paths for well-formed bodies (measured: 1.5 us for one 6-field row; loadtxt's C parser is 4x faster
    # than per-line splitting at 10,000 rows). numpy strips spaces and \r, and warns once if a value overflows
    # float32 to inf, which _finite then refuses.
    try:
        if n_lines == 1:
            rows = np.array([text.split(delimiter)], dtype=np.float32)
        else:
            rows = np.loadtxt(
                io.BytesIO(text), delimiter=delimiter.decode(), dtype=np.float32, ndmin=2, comments=None
            )
    except ValueError:
        rows = None
    # Empty fields, ragged rows, junk, or blank lines (loadtxt skips them; they must count as rows): go cell
    # by cell, to read empty fields as missing or to say exactly where the body is wrong.
    if rows is None or len(rows) != n_lines:
        rows = _csv_checked(text.split(b"\n"), delimiter)
    if label_size:
        if label_size >= rows.shape[1]:
            raise BadRequest(f"label_size={label_size} leaves no feature columns in {rows.shape[1]}")
        rows = np.ascontiguousarray(rows[:, label_size:])
    return _finite(rows, "CSV", "line", first_column=label_size + 1)


_PLAIN_CSV = partial(_csv, 0)


def _csv_checked(lines: list[bytes], delimiter: bytes) -> np.ndarray:
    width = len(lines[0].split(delimiter))
    rows = []
    for number, line in enumerate(lines, 1):
        cells = line.split(delimiter)
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
            if not _is_number(tokens[0]):
                raise BadRequest(
                    f"libsvm line {number}: the first token {_show(tokens[0])} is neither a label (a number) "
                    "nor index:value"
                )
            tokens = tokens[1:]  # the label, which prediction ignores
        seen = set()
        for token in tokens:
            key, colon, value = token.partition(":")
            if not colon:
                raise BadRequest(
                    f"libsvm line {number}: {_show(token)} is not index:value (only a label may stand alone)"
                )
            if key == "qid":
                continue
            if not (key.isascii() and key.isdigit()) or not value:
                raise BadRequest(
                    f"libsvm line {number}: {_show(token)} is not index:value with an index >= 0"
                )
            if len(key) > _LIBSVM_MAX_INDEX_DIGITS:
                raise BadRequest(f"libsvm line {number}: feature index {_show(key)} is too large")
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
    if n_rows * width > MAX_CELLS:
        raise BadRequest(f"libsvm body describes {n_rows} rows x {width} features, over {MAX_CELLS} values")
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


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _json(body: bytes, n_features: int | None) -> np.ndarray:
    document = _json_value(body, "JSON")
    rows = _rectangular_json(document, body)
    if rows is not None:
        return rows
    if isinstance(document, dict):
        if not isinstance(document.get("instances"), list):
            raise BadRequest('a JSON object body needs an "instances" list')
        rows = [_json_row(instance, f"instance {i}") for i, instance in enumerate(document["instances"], 1)]
    elif isinstance(document, list):
        is_one_row = document and not isinstance(document[0], list | dict)
        rows = [document] if is_one_row else [_json_row(row, f"row {i}") for i, row in enumerate(document, 1)]
    else:
        raise BadRequest('JSON body must be {"instances": [...]}, a list of rows or one row of numbers')
    return _numeric_rows(rows, "JSON", "row", _may_hold_booleans(body))


# What a number of a JSON body may be spelt with, plus whitespace: deleting these from a body of numeric rows
# leaves its skeleton of brackets and commas (and the letters of any key, less their e's).
_JSON_NUMBER_AND_SPACE = b"0123456789.eE+- \t\r\n"
_INSTANCES_SKELETON = (b'{"instancs":[', b"]}")  # {"instances": [...]}, e's deleted
_LIST_SKELETON = (b"[", b"]")
_EXACT_INTEGERS = 2.0**53  # below this, an int reaches float32 through float64 as numpy casts it: alike


def _rectangular_json(document: object, body: bytes) -> np.ndarray | None:
    """The fast path of a large JSON body: {"instances": [[...], ...]} or [[...], ...] whose rows are all
    lists of the same number of plain numbers, read straight into float32; None for anything else, which
    the general path reads or refuses (it reads the same rows to the same values).

    The body's skeleton proves the shape without looking at each value: with its number characters and
    whitespace deleted it must be exactly the brackets and commas of n rows of `width` values, so no value
    is a string, a boolean, null, an object or a nested list (their quotes, letters or brackets would be
    left). orjson has already checked that each remaining token is a valid JSON number.
    """
    if type(document) is dict:
        rows, (prefix, suffix) = document.get("instances"), _INSTANCES_SKELETON
        if len(document) != 1:
            return None
    else:
        rows, (prefix, suffix) = document, _LIST_SKELETON
    if type(rows) is not list or not rows or type(rows[0]) is not list or not rows[0]:
        return None
    n, width = len(rows), len(rows[0])
    if n * width > MAX_CELLS:
        return None
    row = b"[" + b"," * (width - 1) + b"]"
    if body.translate(None, _JSON_NUMBER_AND_SPACE) != prefix + row + (b"," + row) * (n - 1) + suffix:
        return None
    with np.errstate(over="ignore"):  # the general path warns, once
        values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float32, count=n * width)
    # Huge integers would round twice on the way (numpy casts an all-integer array in one step), and a
    # value beyond float32's range is inf: the general path reads the first and names the second.
    if not float(np.abs(values).max()) < _EXACT_INTEGERS:
        return None
    return values.reshape(n, width)


def _jsonlines(body: bytes, n_features: int | None) -> np.ndarray:
    rows = [
        _json_row(_json_value(line, f"JSON on line {number}"), f"line {number}")
        for number, line in enumerate(body.splitlines(), 1)
        if line.strip()
    ]
    return _numeric_rows(rows, "JSON lines", "line", _may_hold_booleans(body))


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


def _may_hold_booleans(body: bytes) -> bool:
    # numpy reads true as 1: only a body that spells a boolean needs the value-by-value check.
    return b"true" in body or b"false" in body


def _numeric_rows(rows: list[list], source: str, unit: str, check: bool = False) -> np.ndarray:
    if not rows:
        raise BadRequest(f"the request body holds no {source} rows")
    try:
        array = np.array(rows)  # no dtype yet: numpy would silently parse strings such as "1.5"
    except ValueError:
        array = None  # ragged rows; the check below names the first
    if check or array is None or array.ndim != 2 or array.dtype.kind not in "biuf":
        _check_values(rows, source, unit)
        array = np.array(rows, dtype=np.float32)  # None becomes NaN, i.e. missing
    return _finite(np.ascontiguousarray(array, dtype=np.float32), source, unit)


def _check_values(rows: list[list], source: str, unit: str) -> None:
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise BadRequest(f"{source} {unit} {number} has {len(row)} values, {unit} 1 has {width}")
        for column, value in enumerate(row, 1):
            if not (value is None or isinstance(value, int | float)) or isinstance(value, bool):
                raise BadRequest(f"{source} {unit} {number}, value {column}: {_show(value)} is not a number")


def _npy(body: bytes, n_features: int | None) -> np.ndarray:
    # The header is checked against the body before any array exists: a declared shape is never allocated,
    # and an object (pickled) payload is refused unread.
    if not body.startswith(b"\x93NUMPY"):
        raise BadRequest("the body is not a .npy array (it lacks the \\x93NUMPY magic)")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in read_header:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
        shape, fortran_order, dtype = read_header[version](stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise BadRequest(f"unreadable .npy header: {exc}") from None
    if any(dimension < 0 for dimension in shape):
        raise BadRequest(f"unreadable .npy header: shape {shape} has a negative dimension")
    if dtype.hasobject:
        raise BadRequest(f".npy array has dtype {dtype} (a pickled payload); refused without unpickling")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise BadRequest(f".npy array has dtype {dtype}; expected numbers")
    count = math.prod(shape)
    data = memoryview(body)[stream.tell() :]
    if count * dtype.itemsize != len(data):
        raise BadRequest(
            f".npy header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes), "
            f"the body holds {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran_order else "C")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] == 0:
        raise BadRequest(f".npy array has shape {shape}; expected rows of features (1-D or 2-D)")
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


def _show(value: object, limit: int = 30) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


_DECODERS: dict[str, Decoder] = {
    "text/libsvm": _libsvm,
    "text/x-libsvm": _libsvm,
    JSON: _json,
    JSONLINES: _jsonlines,
    NPY: _npy,
    RECORDIO: recordio.read,
}


# --- responses ------------------------------------------------------------------------------------------


def _response_type(accept: str | None, default: str) -> str:
    if not accept or not accept.strip():
        return default
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
        if media_type == "*/*":
            return default
        if media_type in ("application/*", JSON, JSONLINES, NPY, RECORDIO):
            return JSON if media_type == "application/*" else media_type
        if media_type in ("text/*", CSV) and layout in (None, "line"):
            return CSV_LINE if layout else CSV
    raise NotAcceptable(f"cannot answer in {_show(accept, 80)}; supported: {', '.join(RESPONSE_TYPES)}")


_memo_response_type = lru_cache(maxsize=256)(_response_type)


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


def _to_npy(prediction: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, prediction, allow_pickle=False)
    return buffer.getvalue()


def _scores(prediction: np.ndarray) -> list[dict[str, object]]:
    return [{"score": value} for value in prediction]


def _to_single_json(prediction: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": _scores(prediction)}, option=_NUMPY)


def _to_single_jsonlines(prediction: np.ndarray) -> bytes:
    return b"".join(orjson.dumps(entry, option=_NUMPY) + b"\n" for entry in _scores(prediction))


# (encoder, response content type) for each of RESPONSE_TYPES
_MULTI_MODEL: dict[str, tuple[Encoder, str]] = {
    JSON: (_to_json, JSON),
    CSV: (_to_csv_rows, CSV),
    CSV_LINE: (_to_csv_line, CSV),
    JSONLINES: (_to_jsonlines, JSONLINES),
    NPY: (_to_npy, NPY),
    RECORDIO: (recordio.write_scores, RECORDIO),
}
# AWS's single-model XGBoost endpoint: JSON {"predictions": [{"score": p}]}, and CSV lines ending in "\n".
_SINGLE_MODEL: dict[str, tuple[Encoder, str]] = {
    **_MULTI_MODEL,
    JSON: (_to_single_json, JSON),
    CSV: (lambda prediction: _to_csv_rows(prediction) + b"\n", CSV),
    JSONLINES: (_to_single_jsonlines, JSONLINES),
}
