"""application/x-recordio-protobuf: SageMaker's RecordIO framing of `Record` protobuf messages, both ways.

Framing (MXNet RecordIO, as SageMaker's SDK writes it): per record a little-endian uint32 magic
0xCED7230A, a uint32 length, the serialised Record, then zero padding to a multiple of 4 bytes.
A Record's `features["values"]` holds a row: dense (the values) or sparse (`keys` are column indices,
`shape` the row's width), as float32, float64 or int32; the label map is ignored in requests. Answers
put each row's outputs in `label[name]` as float32 tensors, as SageMaker's built-in algorithms do.

The messages are defined here from the published field numbers (aialgs.data, record.proto) in a private
descriptor pool, so the SDK's own generated module can coexist in one process.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from handler.errors import BadRequest

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")
# The upper 3 bits of the length word are MXNet's continuation flags (a record split in parts).
_LENGTH_MASK = (1 << 29) - 1
MAX_CELLS = 1 << 26  # the largest request matrix any format may describe (256 MiB of float32)


def _messages() -> tuple[type, type]:
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="mme_record.proto", package="aialgs.data", syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, int, str | None], oneof: str | None = None):
        proto = file.message_type.add(name=name)
        if oneof:
            proto.oneof_decl.add(name=oneof)
        for field_name, number, kind, label, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if label == F.LABEL_REPEATED and kind != F.TYPE_BYTES and kind != F.TYPE_MESSAGE:
                field.options.packed = True
            if oneof:
                field.oneof_index = 0
        return proto

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    for name, kind in (
        ("Float32Tensor", F.TYPE_FLOAT),
        ("Float64Tensor", F.TYPE_DOUBLE),
        ("Int32Tensor", F.TYPE_INT32),
    ):
        message(name, ("values", 1, kind, rep, None), ("keys", 2, F.TYPE_UINT64, rep, None),
                ("shape", 3, F.TYPE_UINT64, rep, None))  # fmt: skip
    message("Bytes", ("value", 1, F.TYPE_BYTES, rep, None), ("content_type", 2, F.TYPE_STRING, opt, None))
    message(
        "Value",
        ("float32_tensor", 2, F.TYPE_MESSAGE, opt, ".aialgs.data.Float32Tensor"),
        ("float64_tensor", 3, F.TYPE_MESSAGE, opt, ".aialgs.data.Float64Tensor"),
        ("int32_tensor", 7, F.TYPE_MESSAGE, opt, ".aialgs.data.Int32Tensor"),
        ("bytes", 9, F.TYPE_MESSAGE, opt, ".aialgs.data.Bytes"),
        oneof="value",
    )
    record = message(
        "Record",
        ("features", 1, F.TYPE_MESSAGE, rep, ".aialgs.data.Record.FeaturesEntry"),
        ("label", 2, F.TYPE_MESSAGE, rep, ".aialgs.data.Record.LabelEntry"),
        ("uid", 3, F.TYPE_STRING, opt, None),
        ("metadata", 4, F.TYPE_STRING, opt, None),
        ("configuration", 5, F.TYPE_STRING, opt, None),
    )
    for entry in ("FeaturesEntry", "LabelEntry"):
        nested = record.nested_type.add(name=entry)
        nested.options.map_entry = True
        nested.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
        nested.field.add(
            name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".aialgs.data.Value"
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("aialgs.data.Record")), get(
        pool.FindMessageTypeByName("aialgs.data.Value")
    )


Record, Value = _messages()


def frames(body: bytes) -> list[memoryview]:
    """The records' payloads; BadRequest naming the offset where the framing goes wrong."""
    view = memoryview(body)
    payloads = []
    offset = 0
    while offset < len(body):
        if offset + 8 > len(body):
            raise BadRequest(f"RecordIO record {len(payloads) + 1} at byte {offset}: truncated header")
        magic, word = _HEADER.unpack_from(body, offset)
        if magic != MAGIC:
            raise BadRequest(
                f"RecordIO record {len(payloads) + 1} at byte {offset}: magic {magic:#010x}, "
                f"expected {MAGIC:#010x} (is the body application/x-recordio-protobuf?)"
            )
        if word & ~_LENGTH_MASK:
            raise BadRequest(f"RecordIO record {len(payloads) + 1}: multi-part records are not supported")
        start = offset + 8
        end = start + word
        if end > len(body):
            raise BadRequest(
                f"RecordIO record {len(payloads) + 1} at byte {offset}: declares {word} bytes, "
                f"{len(body) - start} remain (truncated body)"
            )
        payloads.append(view[start:end])
        offset = start + (word + 3) // 4 * 4
    if not payloads:
        raise BadRequest("the request body holds no RecordIO records")
    return payloads


def read(body: bytes, n_features: int | None) -> np.ndarray:
    """Float32 rows (NaN = missing: a sparse row's absent columns) from a RecordIO-protobuf body."""
    rows: list[tuple[np.ndarray, np.ndarray | None]] = []  # (values, sparse column indices)
    widths: set[int] = set()
    record = Record()
    for number, payload in enumerate(frames(body), 1):
        try:
            record.ParseFromString(payload)
        except (DecodeError, RuntimeWarning) as exc:
            raise BadRequest(f"RecordIO record {number} is not a Record protobuf message: {exc}") from None
        if "values" not in record.features:
            keys = ", ".join(repr(key) for key in record.features) or "none"
            raise BadRequest(f'RecordIO record {number} has no features["values"] tensor (features: {keys})')
        values, keys, width = _tensor(record.features["values"], number)
        if keys is None:
            widths.add(len(values))
        elif width is not None:
            widths.add(width)
        rows.append((values, keys))
    return _matrix(rows, widths, n_features)


def _tensor(value, number: int) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    kind = value.WhichOneof("value")
    if kind not in ("float32_tensor", "float64_tensor", "int32_tensor"):
        raise BadRequest(
            f'RecordIO record {number}: features["values"] is {kind or "empty"}, not a numeric tensor'
        )
    tensor = getattr(value, kind)
    values = np.array(tensor.values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise BadRequest(f"RecordIO record {number}: infinite or NaN value in features")
    if len(tensor.shape) > 1:
        raise BadRequest(f"RecordIO record {number}: features shape {list(tensor.shape)}; expected one row")
    width = int(tensor.shape[0]) if tensor.shape else None
    if not tensor.keys:
        if width is not None and width != len(values):
            raise BadRequest(f"RecordIO record {number}: shape [{width}] but {len(values)} dense values")
        return values, None, width
    keys = np.array(tensor.keys, dtype=np.uint64)
    if len(keys) != len(values):
        raise BadRequest(f"RecordIO record {number}: {len(keys)} sparse keys for {len(values)} values")
    if len(np.unique(keys)) != len(keys):
        raise BadRequest(f"RecordIO record {number}: a sparse key appears twice")
    return values, keys, width


def _matrix(
    rows: list[tuple[np.ndarray, np.ndarray | None]], widths: set[int], n_features: int | None
) -> np.ndarray:
    if n_features is not None:
        width = n_features
    elif len(widths) > 1:
        raise BadRequest(f"RecordIO records have different widths: {sorted(widths)[:5]}")
    else:
        width = widths.pop() if widths else max(int(k.max()) + 1 for _, k in rows if k is not None and len(k))
    if len(rows) * max(width, 1) > MAX_CELLS:
        raise BadRequest(f"RecordIO body describes {len(rows)} x {width} values, over {MAX_CELLS}")
    matrix = np.full((len(rows), width), np.nan, dtype=np.float32)
    for number, (values, keys) in enumerate(rows, 1):
        if keys is None:
            if len(values) != width:
                raise BadRequest(f"RecordIO record {number} has {len(values)} features, expected {width}")
            matrix[number - 1] = values
        else:
            if len(keys) and int(keys.max()) >= width:
                raise BadRequest(
                    f"RecordIO record {number}: sparse key {int(keys.max())} is beyond {width} features"
                )
            matrix[number - 1, keys.astype(np.int64)] = values
    if not math.isfinite(float(matrix[~np.isnan(matrix)].sum(dtype=np.float64))) and np.isinf(matrix).any():
        raise BadRequest("RecordIO features hold a value beyond float32's range")
    return matrix


def write(rows: list[dict[str, object]]) -> bytes:
    """One Record per row, each output in `label[name]` as a float32 tensor (scalars as one value)."""
    out = bytearray()
    record = Record()
    for row in rows:
        record.Clear()
        for name, value in row.items():
            values = np.ravel(np.asarray(value, dtype=np.float32))
            record.label[name].float32_tensor.values.extend(values.tolist())
        payload = record.SerializeToString()
        out += _HEADER.pack(MAGIC, len(payload))
        out += payload
        out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def write_scores(prediction: np.ndarray) -> bytes:
    """A raw prediction as records with label["score"]: one value per row, or a multi-output row's values."""
    rows = prediction.reshape(len(prediction), -1) if prediction.ndim else prediction.reshape(1, 1)
    return write([{"score": row} for row in rows])
