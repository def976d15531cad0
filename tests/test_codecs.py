"""handler.codecs: request bodies -> float32 rows and predictions -> response bodies, for every media type."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from bodies import MALFORMED, ROWS, SAME_FULL_ROWS, SAME_ROWS, npy, npy_header

from handler import codecs
from handler.codecs import decode, encode
from handler.errors import BadRequest, NotAcceptable, UnsupportedMediaType

# numpy warns when 1e39 overflows float32; the codecs then refuse the resulting inf, which the tests check.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@pytest.mark.parametrize("content_type, body", SAME_ROWS.values(), ids=SAME_ROWS.keys())
def test_every_request_type_decodes_to_the_same_float32_rows(content_type: str | None, body: bytes) -> None:
    rows = decode(body, content_type, n_features=6)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, ROWS)  # NaN (missing) compares equal to NaN here


@pytest.mark.parametrize("content_type, body, expected", SAME_FULL_ROWS.values(), ids=SAME_FULL_ROWS.keys())
def test_dense_recordio_decodes_to_the_rows(content_type: str, body: bytes, expected: np.ndarray) -> None:
    rows = decode(body, content_type, n_features=6)
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, expected)


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


UNSUPPORTED = [
    ("image/png", b"\x89PNG", "'image/png'; supported: text/csv, text/libsvm"),
    ("application/xml", b"<a/>", "application/x-npy, application/x-recordio-protobuf"),
    ("application/vnd.sagemaker-triton.binary+json;json-header-size=2", b"{}", "cannot read content type"),
]
CASES = [(kind, *case) for kind, cases in MALFORMED.items() for case in cases]


def test_every_format_has_at_least_15_malformed_bodies() -> None:
    assert {kind: len(cases) >= 15 for kind, cases in MALFORMED.items()} == dict.fromkeys(MALFORMED, True)


@pytest.mark.parametrize(
    "kind, content_type, body, message", CASES, ids=[f"{c[0]}-{i}-{c[3][:30]}" for i, c in enumerate(CASES)]
)
def test_malformed_bodies_name_the_problem(kind: str, content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode(body, content_type, n_features=6)
    assert message in str(caught.value)


@pytest.mark.parametrize("content_type, body, message", UNSUPPORTED)
def test_unknown_content_types_list_the_supported_ones(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=message.replace("+", "\\+")):
        decode(body, content_type, n_features=6)


def test_a_pickled_npy_payload_is_never_unpickled(tmp_path) -> None:
    import pickle

    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return (marker.touch, ())

    body = npy(np.array([Hostile()], dtype=object), allow_pickle=True)
    assert pickle.dumps(Hostile())  # the payload would run marker.touch() if unpickled
    with pytest.raises(BadRequest, match="refused without unpickling"):
        decode(body, "application/x-npy", n_features=6)
    assert not marker.exists()


def test_a_huge_declared_npy_shape_is_refused_before_any_allocation() -> None:
    body = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }")  # 4 TiB
    with pytest.raises(BadRequest, match=r"declares shape \(1099511627776,\)"):
        decode(body, "application/x-npy", n_features=6)


def test_a_libsvm_index_of_5000_digits_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="is too large"):
        decode(b"0 " + b"1" * 5000 + b":1", "text/libsvm", n_features=None)


def test_an_unknown_width_libsvm_body_cannot_ask_for_a_huge_matrix() -> None:
    with pytest.raises(BadRequest, match="over 67108864 values"):
        decode(b"0 999999999:1", "text/libsvm", n_features=None)


def test_long_header_values_are_not_memoized() -> None:
    codecs._memo_decoder.cache_clear()
    codecs._memo_response_type.cache_clear()
    long_type = "text/csv;x=" + "y" * codecs.MEMO_MAX_CHARS
    for i in range(10):
        decode(b"1,2", f"{long_type}{i}", n_features=None)
        encode(SINGLE, f"application/json;{long_type}{i}")
    decode(b"1,2", "text/csv;x=short", n_features=None)
    encode(SINGLE, "text/csv")
    assert codecs._memo_decoder.cache_info().currsize == 1
    assert codecs._memo_response_type.cache_info().currsize == 1


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


@pytest.mark.parametrize(
    "accept, single, multi",
    [
        (
            "application/json",
            b'{"predictions":[{"score":395909.25},{"score":0.1},{"score":1e-7}]}',
            b'{"predictions":[{"score":[0.1,0.7,0.2]},{"score":[0.5,0.25,0.25]}]}',
        ),
        ("text/csv", b"395909.25\n0.1\n1e-7\n", b"0.1,0.7,0.2\n0.5,0.25,0.25\n"),
        ("text/csv;layout=line", b"395909.25,0.1,1e-7", b"0.1,0.7,0.2,0.5,0.25,0.25"),
        (
            "application/jsonlines",
            b'{"score":395909.25}\n{"score":0.1}\n{"score":1e-7}\n',
            b'{"score":[0.1,0.7,0.2]}\n{"score":[0.5,0.25,0.25]}\n',
        ),
    ],
)
def test_single_model_shapes_are_aws_single_model_endpoints(accept: str, single: bytes, multi: bytes) -> None:
    assert encode(SINGLE, accept, single_model=True)[0] == single
    assert encode(MULTI, accept, single_model=True)[0] == multi


@pytest.mark.parametrize("single_model", [False, True])
def test_npy_answers_are_float32_arrays_one_row_per_input_row(single_model: bool) -> None:
    for prediction in (SINGLE, MULTI):
        body, content_type = encode(prediction, "application/x-npy", single_model=single_model)
        answer = np.load(io.BytesIO(body), allow_pickle=False)
        assert content_type == "application/x-npy" and answer.dtype == np.float32
        np.testing.assert_array_equal(answer, prediction)


@pytest.mark.parametrize("single_model", [False, True])
def test_recordio_answers_hold_each_row_in_label_score(single_model: bool) -> None:
    from sagemaker.amazon.common import read_records

    for prediction in (SINGLE, MULTI):
        body, content_type = encode(prediction, "application/x-recordio-protobuf", single_model=single_model)
        records = read_records(io.BytesIO(body))
        assert content_type == "application/x-recordio-protobuf"
        got = [list(r.label["score"].float32_tensor.values) for r in records]
        assert got == prediction.reshape(len(prediction), -1).tolist()


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
        ("application/x-npy", "application/x-npy"),
        ("application/x-recordio-protobuf", "application/x-recordio-protobuf"),
        ("image/png, application/x-npy;q=0.5", "application/x-npy"),
    ],
)
def test_accept_negotiation(accept: str | None, content_type: str) -> None:
    assert encode(SINGLE, accept)[1] == content_type


@pytest.mark.parametrize("accept", [None, "", "*/*", "text/html, */*;q=0.5"])
def test_the_default_answers_a_missing_accept_and_any_type(accept: str | None) -> None:
    assert encode(SINGLE, accept, default="text/csv")[1] == "text/csv"
    assert encode(SINGLE, accept, default="application/x-npy")[1] == "application/x-npy"


@pytest.mark.parametrize(
    "accept", ["image/png", "text/csv;layout=column", "application/json;q=0", "text/html, */*;q=0"]
)
def test_unanswerable_accept_lists_the_supported_types(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="supported: application/json, text/csv, .*, application/x-npy"):
        encode(SINGLE, accept)


# The fast path of large JSON bodies (rectangular rows of plain numbers) must read what the general path
# reads, and leave everything else to it: the same values, the same 400s.
FAST_AND_GENERAL = [
    b'{"instances": [[1, 2.5, -3e2], [4, 5, 6.25]]}',
    b"[[1,2,3],[4,5,6]]",
    b'{ "instances" : [ [ 0.1 , 16777217 ] ,\n [ -0.0, 1E-3 ] ] }',
    b"[[1,2],[3]]",  # ragged
    b'[[1,"2"]]',  # a string
    b"[[1,true]]",  # a boolean
    b"[[1,null]]",  # missing
    b"[[[1],[2]]]",  # nested too deep
    b'[[{"a": 1}, 2]]',  # an object
    b"[[1e39, 2]]",  # beyond float32
    b"[[9007199254740993, 1]]",  # an integer past float64's exact ones
    b'{"instances": [[1, 2]], "other": 1}',
    b'{"instances": [{"features": [1, 2]}]}',
    b"[1, 2]",
    b"[[]]",
]


def _general(body: bytes):
    saved = codecs._rectangular_json
    codecs._rectangular_json = lambda document, body: None
    try:
        return _outcome(body)
    finally:
        codecs._rectangular_json = saved


def _outcome(body: bytes):
    try:
        rows = decode(body, "application/json", n_features=None)
    except BadRequest as exc:
        return (exc.status, str(exc))
    return (rows.dtype, rows.shape, rows.tobytes())


@pytest.mark.parametrize("body", FAST_AND_GENERAL)
def test_the_rectangular_json_fast_path_agrees_with_the_general_path(body: bytes) -> None:
    assert _outcome(body) == _general(body)


def test_the_fast_path_takes_numeric_rows_and_nothing_else() -> None:
    taken = [b for b in FAST_AND_GENERAL if codecs._rectangular_json(json.loads(b), b) is not None]
    assert taken == FAST_AND_GENERAL[:3]
    rows = decode(b'{"instances": [' + b",".join([b"[2006,2800,4,2.5,1.1,2]"] * 1000) + b"]}", JSON_TYPE, 6)
    assert rows.shape == (1000, 6) and rows.dtype == np.float32 and rows.flags.c_contiguous


JSON_TYPE = "application/json"
