"""Request bodies shared by the codec and server tests: one set of rows in every format, and malformed
bodies of every format, each with the words its 400 must say.

RecordIO bodies come from the SageMaker SDK's own writer and Record message, not from handler.recordio.
"""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from sagemaker.amazon.common import write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor  # noqa: E402
from sagemaker.amazon.record_pb2 import Record  # noqa: E402

ROWS = np.array([[3000, 3, 2.5, 1.0, 2, 1995], [1, np.nan, 0.25, -4, 5, 6]], dtype=np.float32)
RECORDIO = "application/x-recordio-protobuf"
NPY = "application/x-npy"


def npy(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npy_header(header: str, payload: bytes = b"") -> bytes:
    """A .npy body with a hand-written header (version 1.0)."""
    text = header.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def dense(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    write_numpy_to_dense_tensor(buffer, array)
    return buffer.getvalue()


def sparse(array: np.ndarray) -> bytes:
    import scipy.sparse

    buffer = io.BytesIO()
    write_spmatrix_to_sparse_tensor(buffer, scipy.sparse.csr_matrix(np.nan_to_num(array)))
    return buffer.getvalue()


def frame(payload: bytes, magic: int = 0xCED7230A, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("<II", magic, size) + payload + b"\0" * (-len(payload) % 4)


def record(**tensors) -> bytes:
    """One framed Record whose features map holds the given {key: (kind, values, keys, shape)}."""
    message = Record()
    for key, (kind, values, keys, shape) in tensors.items():
        tensor = getattr(message.features[key], kind)
        tensor.values.extend(values)
        tensor.keys.extend(keys)
        tensor.shape.extend(shape)
    return frame(message.SerializeToString())


def _bytes_feature() -> bytes:
    message = Record()
    message.features["values"].bytes.value.append(b"\x89PNG")
    return frame(message.SerializeToString())


F32 = "float32_tensor"
SIX = [1.0, 2, 3, 4, 5, 6]

# Each spelling of ROWS (the sparse ones' absent cells are missing; ROWS has no zero, so none is lost).
SAME_ROWS = {
    "csv": ("text/csv", b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv crlf, spaces, trailing newline": ("text/csv", b"3000, 3 ,2.5,1.0,2,1995\r\n1, ,0.25,-4,5,6\r\n"),
    "csv nan literal": ("text/csv", b"3000,3,2.5,1.0,2,1995\n1,nan,0.25,-4,5,6\n"),
    "csv without content type": (None, b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv as curl's default type": (
        "application/x-www-form-urlencoded",
        b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6",
    ),
    "csv label_size=1": ("text/csv;label_size=1", b"7,3000,3,2.5,1.0,2,1995\n8,1,,0.25,-4,5,6"),
    "csv label_size=0": ("text/csv;label_size=0", b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv charset, any case": ("Text/CSV; charset=utf-8", b"3000,3,2.5,1.0,2,1995\n1,,0.25,-4,5,6"),
    "csv tabs": ("text/csv", b"3000\t3\t2.5\t1.0\t2\t1995\n1\t\t0.25\t-4\t5\t6"),
    "csv semicolons": ("text/csv", b"3000;3;2.5;1.0;2;1995\n1;;0.25;-4;5;6"),
    "csv pipes": ("text/csv", b"3000|3|2.5|1.0|2|1995\n1||0.25|-4|5|6\n"),
    "libsvm 1-based": ("text/libsvm", b"9 1:3000 2:3 3:2.5 4:1 5:2 6:1995\n0 1:1 3:0.25 4:-4 5:5 6:6\n"),
    "libsvm without content type": (None, b"9 1:3000 2:3 3:2.5 4:1 5:2 6:1995\n0 1:1 3:0.25 4:-4 5:5 6:6\n"),
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
    "npy": (NPY, npy(ROWS)),
    "npy float64": (NPY, npy(ROWS.astype(np.float64))),
    "npy fortran order, big-endian": (NPY, npy(np.asfortranarray(ROWS.astype(">f8")))),
    "recordio sparse float32": (RECORDIO, sparse(ROWS)),
    "recordio sparse float64": (RECORDIO, sparse(ROWS.astype(np.float64))),
}

# Dense RecordIO cannot spell a missing value: these rows have none.
FULL_ROWS = np.nan_to_num(ROWS, nan=7.0)
INT_ROWS = np.array([[3000, 3, 2, 1, 2, 1995], [1, 7, 0, -4, 5, 6]])
# (content type, body, the rows it holds)
SAME_FULL_ROWS = {
    "recordio dense float32": (RECORDIO, dense(FULL_ROWS), FULL_ROWS),
    "recordio dense float64": (RECORDIO, dense(FULL_ROWS.astype(np.float64)), FULL_ROWS),
    "recordio dense int": (RECORDIO, dense(INT_ROWS), INT_ROWS.astype(np.float32)),
}

ONE_DENSE = dense(FULL_ROWS[:1])

# (content type, body, words the 400 must say); at least 15 a format.
MALFORMED = {
    "csv": [
        ("text/csv", b"1,2,3,4,5,6\n1,2,3", "line 2 has 3 fields, but line 1 has 6"),
        ("text/csv", b"1,2,abc,4,5,6", "line 1, column 3: 'abc' is not a number"),
        ("text/csv", b"1,2,3,4,5,6\n1,2,3,4,x,6", "line 2, column 5: 'x'"),
        ("text/csv", b"price,a,b,c,d,e\n1,2,3,4,5,6", "line 1, column 1: 'price'"),
        ("text/csv", b"1,2,\xff\xfe,4,5,6", "line 1, column 3"),
        ("text/csv", b"1,2,inf,4,5,6", "line 1, column 3: infinite"),
        ("text/csv", b"1,2,3,4,5,6\n1,2,3,4,5,-Infinity", "line 2, column 6: infinite"),
        ("text/csv", b"1,2,3,4,5,1e39", "beyond float32"),
        ("text/csv;label_size=1", b"0,1,2,3,4,inf,6", "line 1, column 6: infinite"),
        ("text/csv", b"1,2,3,4,5,6\n\n1,2,3,4,5,6", "line 2 is blank"),
        ("text/csv", b"\r\n", "no CSV rows"),
        ("text/csv", b"1,2,3", "expected 6 features, got 3"),
        ("text/csv;label_size=1", b"1,2,3,4,5,6", "expected 6 features, got 5"),
        ("text/csv;label_size=x", b"1,2,3,4,5,6", "label_size must be 0 or 1"),
        ("text/csv;label_size=2", b"1,2,3,4,5,6,7,8", "label_size must be 0 or 1"),
        ("text/csv", b"1\t2\t3\t4\t5\t6\n1\t2\t3", "line 2 has 3 fields, but line 1 has 6"),
        ("text/csv", b"1;2;3;4;5;x", "line 1, column 6: 'x' is not a number"),
        ("text/csv", b"", "empty"),
        ("text/csv", b"1:1 2:2 3:3 4:4 5:5 6:6", "is not a number"),
        (None, b"garbage", "'garbage' is not a number"),
    ],
    "libsvm": [
        ("text/libsvm", b"garbage", "line 1: the first token 'garbage' is neither a label"),
        ("text/libsvm", b"2006,2800,4,2.5,1.1,2", "the first token '2006,2800,4,2.5,1.1,2' is neither"),
        ("text/libsvm", b"1 2 3:4", "line 1: '2' is not index:value"),
        ("text/libsvm", b"0 1:2 x", "line 1: 'x' is not index:value"),
        ("text/libsvm", b"0 1:2\n0 -1:2", "line 2: '-1:2' is not index:value"),
        ("text/libsvm", b"0 1.5:2", "'1.5:2' is not index:value"),
        ("text/libsvm", b"0 a:2", "'a:2' is not index:value"),
        ("text/libsvm", b"0 1:", "'1:' is not index:value"),
        ("text/libsvm", b"0 1:abc", "value 'abc' is not a number"),
        ("text/libsvm", b"0 1:1\n0 9:1", "line 2: feature index 9 is beyond the model's 6 features"),
        ("text/libsvm", b"0 1:1 1:2", "feature index 1 appears twice"),
        ("text/libsvm", b"0 2:inf", "feature 2 is infinite"),
        ("text/libsvm", b"0 1:\xff", "not valid UTF-8"),
        ("text/libsvm", b"\n\n", "no libsvm rows"),
        ("text/libsvm", b"0 " + b"9" * 5000 + b":1", "is too large"),
        ("text/libsvm", b"0 1:1\nlabel 1:2", "line 2: the first token 'label'"),
        ("text/libsvm", b"0 \xd9\xa3:1", "is not index:value"),  # an Arabic-Indic digit
        (None, b"1 2:3 x", "line 1: 'x' is not index:value"),
    ],
    "json": [
        ("application/json", b"{", "invalid JSON"),
        ("application/json", b"[NaN,1,2,3,4,5]", "invalid JSON"),
        ("application/json", b'[1,"2",3,4,5,6]', "row 1, value 2: '2' is not a number"),
        ("application/json", b"[[1,2,3,4,5,6],[1,2]]", "row 2 has 2 values, row 1 has 6"),
        ("application/json", b"[[[1,2,3,4,5,6]]]", "row 1, value 1: '[1, 2, 3, 4, 5, 6]' is not a number"),
        ("application/json", b'{"rows": [[1,2,3,4,5,6]]}', '"instances" list'),
        ("application/json", b'{"instances": []}', "no JSON rows"),
        ("application/json", b"[]", "no JSON rows"),
        ("application/json", b'{"instances": [{"feats": [1]}]}', "instance 1: expected a list of numbers"),
        ("application/json", b"42", "JSON body must be"),
        ("application/json", b"[1,2,3,4,5,1e39]", "infinite"),
        ("application/json", b"[1,2]", "expected 6 features, got 2"),
        ("application/json", b'\xff{"instances": []}', "invalid JSON"),
        ("application/json", b"[true,1,2,3,4,5]", "row 1, value 1: 'True' is not a number"),
        ("application/json", b'{"instances": "1,2,3"}', '"instances" list'),
        ("application/json", b'{"inputs": "x"}', '"instances" list'),
    ],
    "jsonlines": [
        ("application/jsonlines", b"[1,2,3,4,5,6]\n{oops", "invalid JSON on line 2"),
        ("application/jsonlines", b"[1,2,3,4,5,6]\n7", "line 2: expected a list of numbers"),
        ("application/jsonlines", b'{"feats": [1,2,3,4,5,6]}', "line 1: expected a list of numbers"),
        ("application/jsonlines", b"[1,2,3,4,5,6]\n[1,2]", "line 2 has 2 values, line 1 has 6"),
        ("application/jsonlines", b'[1,2,3,"x",5,6]', "line 1, value 4: 'x' is not a number"),
        ("application/jsonlines", b"\n\n", "no JSON lines rows"),
        ("application/jsonlines", b"[1,2,3,4,5,1e39]", "infinite"),
        ("application/jsonlines", b"[1,2,3]", "expected 6 features, got 3"),
        ("application/jsonlines", b"[[1,2,3,4,5,6]]", "is not a number"),
        ("application/jsonlines", b"[NaN,2,3,4,5,6]", "invalid JSON on line 1"),
        ("application/jsonlines", b"\xff\xfe", "invalid JSON on line 1"),
        ("application/jsonlines", b"null", "line 1: expected a list of numbers"),
        ("application/jsonlines", b'"1,2,3,4,5,6"', "line 1: expected a list of numbers"),
        ("application/jsonlines", b"[1,2,3,4,5,6] [1,2,3,4,5,6]", "invalid JSON on line 1"),
        ("application/jsonlines", b'{"features": {"a": 1}}', "line 1: expected a list of numbers"),
    ],
    "npy": [
        (NPY, b"not numpy", "not a .npy array"),
        (NPY, npy(ROWS)[:-5], "the body holds 43 bytes"),
        (NPY, npy(ROWS) + b"\0" * 4, "the body holds 52 bytes"),
        (NPY, npy(np.array(["a", "b"])), "dtype <U1; expected numbers"),
        (NPY, npy(np.zeros((1, 2, 6))), "shape (1, 2, 6)"),
        (NPY, npy(np.zeros((0, 6))), "shape (0, 6)"),
        (NPY, npy(np.array([1, np.inf, 3, 4, 5, 6])), "column 2: infinite"),
        (NPY, npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), "refused without unpickling"),
        (
            NPY,
            npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", pickle.dumps(print)),
            "pickled",
        ),
        (
            NPY,
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"),
            "shape (1099511627776,)",
        ),
        (
            NPY,
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }"),
            "the body holds 0 bytes",
        ),
        (
            NPY,
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 6), }"),
            "unreadable .npy header",
        ),
        (NPY, npy_header("{'descr': '<f4', 'shape': (1, 6), }"), "unreadable .npy header"),
        (
            NPY,
            npy_header("{'descr': 'xyz', 'fortran_order': False, 'shape': (1, 6), }"),
            "unreadable .npy header",
        ),
        (NPY, npy_header("__import__('os').system('true')"), "unreadable .npy header"),
        (NPY, b"\x93NUMPY\x09\x00", "unreadable .npy header"),
        (NPY, b"\x93NUMPY\x01\x00\xff\xff{", "unreadable .npy header"),
        (NPY, npy(np.zeros((1, 6), dtype=np.complex64)), "expected numbers"),
        (NPY, npy(np.zeros(1, dtype=[("a", "<f4"), ("b", "<f4")])), "expected numbers"),
        (NPY, npy(np.zeros((1, 3))), "expected 6 features, got 3"),
    ],
    "recordio": [
        (RECORDIO, b"garbage!", "magic 0x62726167"),
        (RECORDIO, ONE_DENSE[:6], "truncated header"),
        (RECORDIO, ONE_DENSE[:-12], "truncated body"),
        (RECORDIO, ONE_DENSE + ONE_DENSE[:12], "record 2"),
        (RECORDIO, frame(b"\xff\xff\xff\xff\xff"), "record 1 is not a Record protobuf message"),
        (RECORDIO, frame(b"\x0a\x09\x0a\x03abc"), "record 1 is not a Record protobuf message"),
        (RECORDIO, frame(ONE_DENSE[8:40], length=1 << 30), "multi-part records"),
        (RECORDIO, frame(b""), 'has no features["values"] tensor'),
        (RECORDIO, record(other=(F32, SIX, [], [])), "features: 'other'"),
        (RECORDIO, _bytes_feature(), 'features["values"] is bytes'),
        (RECORDIO, record(values=(F32, [1.0, 2.0], [0, 1, 2], [6])), "3 sparse keys for 2 values"),
        (RECORDIO, record(values=(F32, [1.0, 2.0], [0, 0], [6])), "a sparse key appears twice"),
        (RECORDIO, record(values=(F32, [1.0], [9], [6])), "sparse key 9 is beyond 6 features"),
        (RECORDIO, record(values=(F32, SIX, [], [2, 3])), "shape [2, 3]; expected one row"),
        (RECORDIO, record(values=(F32, SIX, [], [5])), "shape [5] but 6 dense values"),
        (RECORDIO, record(values=(F32, [1.0, 2, 3], [], [])), "3 features, expected 6"),
        (RECORDIO, record(values=(F32, [1.0, 2, float("inf"), 4, 5, 6], [], [])), "infinite or NaN"),
        (RECORDIO, record(values=("float64_tensor", [1.0, 2, 1e39, 4, 5, 6], [], [])), "beyond float32"),
        (RECORDIO, b"", "empty"),
        (RECORDIO, record(values=(F32, SIX, [], [])) + b"\0" * 8, "magic 0x00000000"),
    ],
}
