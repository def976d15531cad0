"""handler.codecs: request bodies -> float32 rows and predictions -> response bodies, for every media type."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from handler.codecs import decode, encode
from handler.errors import BadRequest, HandlerError, NotAcceptable, UnsupportedMediaType

# numpy warns when 1e39 overflows float32; the codecs then refuse the resulting inf, which the tests check.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

ROWS = np.array([[3000, 3, 2.5, 1.0, 2, 1995], [1, np.nan, 0.25, -4, 5, 6]], dtype=np.float32)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# Each spelling of ROWS, one per request type and dialect.
SAME_ROWS = {
    "csv": ("text/csv", b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv crlf, spaces, trailing newline": ("text/csv", b"3000, 3 ,2.5,1.0,2,1995\r\n1, ,0.25,-4,5,6\r\n"),
    "csv nan literal": ("text/csv", b"3000,3,2.5,1.0,2,1995\n1,nan,0.25,-4,5,6\n"),
    "csv without content type": (None, b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv label_size=1": ("text/csv;label_size=1", b"7,3000,3,2.5,1.0,2,1995\n8,1,,0.25,-4,5,6"),
    "csv charset, any case": ("Text/CSV; charset=utf-8", b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "libsvm 1-based": ("text/libsvm", b"9 1:3000 2:3 3:2.5 4:1 5:2 6:1995\n0 1:1 3:0.25 4:-4 5:5 6:6\n"),
    "x-libsvm 0-based, no labels": (
        "text/x-libsvm",
        b"0:3000 1:3 2:2.5 3:1 4:2 5:1995\n0:1 2:0.25 3:-4 4:5 5:6",
    ),
    "json instances": ("application/json", b'{"instances": [[3000,3,2.5,1.0,2,1995], [1,null,0.25,-4,5,6]]}'),
    "json features": (
        "application/json; charset=UTF-8",
        b'{"instances": [{"features": [3000,3,2.5,1,2,1995]}, {"features": [1,null,0.25,-4,5,6]}]}',
    ),
    "json list of rows": ("application/json", b"[[3000,3,2.5,1.0,2,1995],[1,null,0.25,-4,5,6]]"),
    "jsonlines": ("application/jsonlines", b'[3000,3,2.5,1.0,2,1995]\n{"features": [1,null,0.25,-4,5,6]}\n'),
    "npy": ("application/x-npy", npy(ROWS)),
    "npy float64 ints": ("application/x-npy", npy(ROWS.astype(np.float64))),
}


@pytest.mark.parametrize("content_type, body", SAME_ROWS.values(), ids=SAME_ROWS.keys())
def test_every_request_type_decodes_to_the_same_float32_rows(content_type: str | None, body: bytes) -> None:
    rows = decode(body, content_type, n_features=6)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, ROWS)  # NaN (missing) compares equal to NaN here


ONE_ROW = {
    "csv": ("text/csv", b"3000,3,2.5,1.0,2,1995"),
    "json flat row": ("application/json", b"[3000,3,2.5,1.0,2,1995]"),
    "json one instance": ("application/json", b'{"instances": [{"features": [3000,3,2.5,1.0,2,1995]}]}'),
    "npy 1-D": ("application/x-npy", npy(ROWS[0])),
}


@pytest.mark.parametrize("content_type, body", ONE_ROW.values(), ids=ONE_ROW.keys())
def test_one_row(content_type: str, body: bytes) -> None:
    np.testing.assert_array_equal(decode(body, content_type, n_features=6), ROWS[:1])


def test_many_csv_rows_and_where_one_goes_wrong() -> None:
    rows = np.random.default_rng(0).random((300, 6), dtype=np.float32)
    lines = [",".join(repr(float(v)) for v in row).encode() for row in rows]
    np.testing.assert_array_equal(decode(b"\r\n".join(lines) + b"\r\n", "text/csv", n_features=6), rows)
    lines[249] = lines[249].replace(b",", b",oops,", 1)
    with pytest.raises(BadRequest, match="CSV line 250 has 7 fields, but line 1 has 6"):
        decode(b"\n".join(lines), "text/csv", n_features=6)
    lines[249] = b"1,2,3,4,5,#6"
    with pytest.raises(BadRequest, match="CSV line 250, column 6: '#6' is not a number"):
        decode(b"\n".join(lines), "text/csv", n_features=6)


def test_libsvm_rows_are_as_wide_as_the_model_with_absent_features_missing() -> None:
    rows = decode(b"1 2:5\n3:7", "text/libsvm", n_features=4)
    np.testing.assert_array_equal(rows, [[np.nan, 5, np.nan, np.nan], [np.nan, np.nan, 7, np.nan]])


def test_libsvm_keeps_indices_0_based_when_the_payload_uses_index_0() -> None:
    rows = decode(b"0:1 3:4", "text/libsvm", n_features=4)
    np.testing.assert_array_equal(rows, [[1, np.nan, np.nan, 4]])


def test_an_unknown_model_width_takes_the_payload_width() -> None:
    assert decode(b"1,2,3", "text/csv", n_features=None).shape == (1, 3)
    assert decode(b"1:1 5:2", "text/libsvm", n_features=None).shape == (1, 5)


MALFORMED = [
    # (content type, body, error, words the message must hold)
    ("text/csv", b"", BadRequest, "empty"),
    ("text/csv", b"1,2,3,4,5,6\n1,2,3", BadRequest, "line 2 has 3 fields, but line 1 has 6"),
    ("text/csv", b"1,2,abc,4,5,6", BadRequest, "line 1, column 3: 'abc' is not a number"),
    ("text/csv", b"1,2,3,4,5,6\n1,2,3,4,x,6", BadRequest, "line 2, column 5: 'x'"),
    ("text/csv", b"price,a,b,c,d,e\n1,2,3,4,5,6", BadRequest, "line 1, column 1: 'price'"),
    ("text/csv", b"1,2,\xff\xfe,4,5,6", BadRequest, "line 1, column 3"),
    ("text/csv", b"1,2,inf,4,5,6", BadRequest, "line 1, column 3: infinite"),
    ("text/csv", b"1,2,3,4,5,6\n1,2,3,4,5,-Infinity", BadRequest, "line 2, column 6: infinite"),
    ("text/csv", b"1,2,3,4,5,1e39", BadRequest, "beyond float32"),
    ("text/csv;label_size=1", b"0,1,2,3,4,inf,6", BadRequest, "line 1, column 6: infinite"),
    ("text/csv", b"1,2,3,4,5,6\n\n1,2,3,4,5,6", BadRequest, "line 2 is blank"),
    ("text/csv", b"\r\n", BadRequest, "no CSV rows"),
    ("text/csv", b"1,2,3", BadRequest, "expected 6 features, got 3"),
    ("text/csv;label_size=1", b"1,2,3,4,5,6", BadRequest, "expected 6 features, got 5"),
    ("text/csv;label_size=x", b"1,2,3,4,5,6", BadRequest, "label_size must be a non-negative integer"),
    ("text/csv;label_size=6", b"1,2,3,4,5,6", BadRequest, "label_size=6 leaves no feature columns"),
    ("text/libsvm", b"0 1:2 x", BadRequest, "line 1: 'x' is not index:value"),
    ("text/libsvm", b"0 1:2\n0 -1:2", BadRequest, "line 2: '-1:2' is not index:value"),
    ("text/libsvm", b"0 1:abc", BadRequest, "value 'abc' is not a number"),
    ("text/libsvm", b"0 1:1\n0 9:1", BadRequest, "line 2: feature index 9 is beyond the model's 6 features"),
    ("text/libsvm", b"0 1:1 1:2", BadRequest, "feature index 1 appears twice"),
    ("text/libsvm", b"0 2:inf", BadRequest, "feature 2 is infinite"),
    ("text/libsvm", b"0 1:\xff", BadRequest, "not valid UTF-8"),
    ("text/libsvm", b"\n\n", BadRequest, "no libsvm rows"),
    ("application/json", b"{", BadRequest, "invalid JSON"),
    ("application/json", b"[NaN,1,2,3,4,5]", BadRequest, "invalid JSON"),
    ("application/json", b'[1,"2",3,4,5,6]', BadRequest, "row 1, value 2: '2' is not a number"),
    ("application/json", b"[[1,2,3,4,5,6],[1,2]]", BadRequest, "row 2 has 2 values, row 1 has 6"),
    (
        "application/json",
        b"[[[1,2,3,4,5,6]]]",
        BadRequest,
        "row 1, value 1: '[1, 2, 3, 4, 5, 6]' is not a number",
    ),
    ("application/json", b'{"rows": [[1,2,3,4,5,6]]}', BadRequest, '"instances" list'),
    ("application/json", b'{"instances": []}', BadRequest, "no JSON rows"),
    ("application/json", b"[]", BadRequest, "no JSON rows"),
    (
        "application/json",
        b'{"instances": [{"feats": [1]}]}',
        BadRequest,
        "instance 1: expected a list of numbers",
    ),
    ("application/json", b"42", BadRequest, "JSON body must be"),
    ("application/json", b"[1,2,3,4,5,1e39]", BadRequest, "infinite"),
    ("application/json", b"[1,2]", BadRequest, "expected 6 features, got 2"),
    ("application/json", b'\xff{"instances": []}', BadRequest, "invalid JSON"),
    ("application/jsonlines", b"[1,2,3,4,5,6]\n{oops", BadRequest, "invalid JSON on line 2"),
    ("application/jsonlines", b"[1,2,3,4,5,6]\n7", BadRequest, "line 2: expected a list of numbers"),
    ("application/x-npy", b"not numpy", BadRequest, "not a .npy array"),
    ("application/x-npy", npy(ROWS)[:-5], BadRequest, "unreadable .npy array"),
    ("application/x-npy", npy(np.array(["a", "b"])), BadRequest, "dtype <U1; expected numbers"),
    ("application/x-npy", npy(np.zeros((1, 2, 6))), BadRequest, "shape (1, 2, 6)"),
    ("application/x-npy", npy(np.zeros((0, 6))), BadRequest, "shape (0, 6)"),
    ("application/x-npy", npy(np.array([1, np.inf, 3, 4, 5, 6])), BadRequest, "column 2: infinite"),
    ("image/png", b"\x89PNG", UnsupportedMediaType, "'image/png'; supported: text/csv, text/libsvm"),
    ("application/xml", b"<a/>", UnsupportedMediaType, "application/x-npy"),
]


@pytest.mark.parametrize(
    "content_type, body, error, message",
    MALFORMED,
    ids=[f"{i}-{case[3][:30]}" for i, case in enumerate(MALFORMED)],
)
def test_malformed_bodies_name_the_problem(
    content_type: str, body: bytes, error: type[HandlerError], message: str
) -> None:
    with pytest.raises(error) as caught:
        decode(body, content_type, n_features=6)
    assert message in str(caught.value)
    assert type(caught.value) is error


def test_npy_object_arrays_are_refused_without_unpickling() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="unreadable .npy array: Object arrays cannot be loaded"):
        decode(buffer.getvalue(), "application/x-npy", n_features=6)


SINGLE = np.array([395909.25, 0.1, 1e-7], dtype=np.float32)
MULTI = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)


@pytest.mark.parametrize(
    "accept, single, multi, content_type",
    [
        ("application/json", b"[395909.25,0.1,1e-7]", b"[[0.1,0.7,0.2],[0.5,0.25,0.25]]", "application/json"),
        ("text/csv", b"395909.25\n0.1\n1e-7", b"0.1,0.7,0.2\n0.5,0.25,0.25", "text/csv"),
        ("text/csv;layout=line", b"395909.25,0.1,1e-7", b"0.1,0.7,0.2,0.5,0.25,0.25", "text/csv"),
        (
            "application/jsonlines",
            b"395909.25\n0.1\n1e-7",
            b"[0.1,0.7,0.2]\n[0.5,0.25,0.25]",
            "application/jsonlines",
        ),
    ],
)
def test_every_response_type(accept: str, single: bytes, multi: bytes, content_type: str) -> None:
    assert encode(SINGLE, accept) == (single, content_type)
    assert encode(MULTI, accept) == (multi, content_type)


def test_json_numbers_read_back_as_the_float32_values() -> None:
    body, _ = encode(SINGLE, "application/json")
    assert np.array(json.loads(body), dtype=np.float32).tolist() == SINGLE.tolist()
    assert json.loads(body)[0] == 395909.25


@pytest.mark.parametrize(
    "accept, content_type",
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("text/*", "text/csv"),
        ("TEXT/CSV; charset=utf-8", "text/csv"),
        ("text/csv, application/json;q=0.9", "text/csv"),
        ("text/csv;q=0.5, application/jsonlines", "application/jsonlines"),
        ("application/json;q=0.2, text/csv;q=0.8", "text/csv"),
        ("image/png, text/csv;q=0.1", "text/csv"),
        ("text/csv;q=0, */*;q=0.1", "application/json"),
        ("text/csv;q=bad, application/jsonlines;q=0.1", "application/jsonlines"),
    ],
)
def test_accept_negotiation(accept: str | None, content_type: str) -> None:
    assert encode(SINGLE, accept)[1] == content_type


@pytest.mark.parametrize(
    "accept", ["image/png", "text/csv;layout=column", "application/json;q=0", "text/html, */*;q=0"]
)
def test_unanswerable_accept_lists_the_supported_types(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="supported: application/json, text/csv, text/csv;layout=line"):
        encode(SINGLE, accept)
