"""UBJSON as XGBoost writes it, both ways, with bounds: untrusted bytes never nest or allocate without end.

Typed arrays (`[$d#L<n>` and the like: every per-node list of a tree) become numpy arrays straight
from the buffer, so reading a model costs a few Python objects per tree, not one per number.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from handler.errors import ModelLoadError

MAX_DEPTH = 64  # XGBoost's own documents nest 8 deep
# Marker byte -> (struct of the value, numpy dtype of a typed array of it)
_NUMBERS = {ord(marker): (struct.Struct(">" + code), np.dtype(">" + dtype))
            for marker, code, dtype in zip("iUIlLdD", "bBhiqfd", ("i1", "u1", "i2", "i4", "i8", "f4", "f8"),
                                           strict=True)}  # fmt: skip
_INTS = {marker: _NUMBERS[marker][0] for marker in b"iUIlL"}
_ARRAY_CODES = {np.dtype(np.float32): b"d", np.dtype(np.int32): b"l", np.dtype(np.int64): b"L",
                np.dtype(np.uint8): b"U", np.dtype(np.float64): b"D", np.dtype(np.int8): b"i"}  # fmt: skip
# dtype -> (a typed array's opening up to its count, the big-endian dtype its values are written in)
_ARRAYS = {dtype: (b"[$" + code + b"#L", dtype.newbyteorder(">")) for dtype, code in _ARRAY_CODES.items()}
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = b"{}[]"
_TYPE, _COUNT, _NOOP, _LENGTH_64 = b"$#NL"
_INT64 = struct.Struct(">q")


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def fail(self, problem: str) -> ModelLoadError:
        return ModelLoadError(f"corrupt UBJSON model at byte {self.pos}: {problem}")

    def marker(self) -> int:
        data, pos = self.data, self.pos
        while pos < self.end and data[pos] == _NOOP:
            pos += 1
        if pos >= self.end:
            raise self.fail("it ends early")
        self.pos = pos + 1
        return data[pos]

    def number(self, marker: int, kinds: dict = _NUMBERS) -> int | float:
        kind = kinds.get(marker)
        if kind is None:
            raise self.fail(f"{chr(marker)!r} is not {'an integer' if kinds is _INTS else 'a number'} type")
        scalar = kind if kinds is _INTS else kind[0]
        if self.pos + scalar.size > self.end:
            raise self.fail("it ends inside a number")
        value = scalar.unpack_from(self.data, self.pos)[0]
        self.pos += scalar.size
        return value

    def count(self, marker: int | None = None) -> int:
        n = self.number(self.marker() if marker is None else marker, _INTS)
        if n < 0 or n > self.end - self.pos:
            raise self.fail(f"length {n} is more than the bytes left")
        return n

    def text(self, marker: int | None = None) -> str:
        n = self.count(marker)
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def value(self, marker: int, depth: int) -> Any:
        if marker == _OPEN_OBJECT:
            return self.obj(depth + 1)
        if marker == _OPEN_ARRAY:
            return self.array(depth + 1)
        if marker in _NUMBERS:
            return self.number(marker)
        if marker in b"SH":
            return self.text()
        if marker in b"TFZ":
            return {84: True, 70: False, 90: None}[marker]
        if marker == 67 and self.pos < self.end:  # C: one character
            self.pos += 1
            return chr(self.data[self.pos - 1])
        raise self.fail(f"unknown marker {chr(marker)!r}")

    def container(self, depth: int) -> tuple[int | None, int | None]:
        """The optional `$type` and `#count` after an opening bracket."""
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH}")
        data, kind, count = self.data, None, None
        if self.pos + 1 < self.end and data[self.pos] == _TYPE:
            kind = data[self.pos + 1]
            self.pos += 2
            if self.pos >= self.end or data[self.pos] != _COUNT:
                raise self.fail("a typed container without a count")
        if self.pos < self.end and data[self.pos] == _COUNT:
            self.pos += 1
            count = self.count()
        return kind, count

    def array(self, depth: int) -> Any:
        kind, count = self.container(depth)
        if kind is not None and count is not None:
            if kind not in _NUMBERS:
                if kind in b"TFZ":
                    return [self.value(kind, depth)] * count
                raise self.fail(f"typed array of {chr(kind)!r}")
            dtype = _NUMBERS[kind][1]
            size = count * dtype.itemsize
            if size > self.end - self.pos:
                raise self.fail(f"an array of {count} numbers is longer than the bytes left")
            # Left big-endian: whoever reads it converts once, to the dtype it needs.
            values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
            self.pos += size
            return values
        if count is not None:
            return [self.value(self.marker(), depth) for _ in range(count)]
        items = []
        while (marker := self.marker()) != _CLOSE_ARRAY:
            items.append(self.value(marker, depth))
        return items

    def obj(self, depth: int) -> dict[str, Any]:
        kind, count = self.container(depth)
        out: dict[str, Any] = {}
        if count is not None:
            for _ in range(count):
                key = self.text()
                out[key] = self.value(self.marker() if kind is None else kind, depth)
            return out
        data, end = self.data, self.end
        while True:
            pos = self.pos
            if pos < end and data[pos] == _LENGTH_64 and pos + 9 <= end:
                # XGBoost writes every key as L + 8-byte length: read it here, without the general path.
                n = _INT64.unpack_from(data, pos + 1)[0]
                start = pos + 9
                if n < 0 or start + n > end:
                    raise self.fail(f"a key of {n} bytes is longer than the bytes left")
                try:
                    key = data[start : start + n].decode()
                except UnicodeDecodeError:
                    raise self.fail("a key is not UTF-8") from None
                self.pos = pos = start + n
                if data[pos : pos + 2] == b"[$" and data[pos + 3 : pos + 5] == b"#L" and pos + 13 <= end:
                    # A typed array with a 64-bit count, as XGBoost writes every per-node list.
                    kind = _NUMBERS.get(data[pos + 2])
                    count = _INT64.unpack_from(data, pos + 5)[0]
                    if kind is not None and count >= 0 and pos + 13 + count * kind[1].itemsize <= end:
                        out[key] = np.frombuffer(data, dtype=kind[1], count=count, offset=pos + 13)
                        self.pos = pos + 13 + count * kind[1].itemsize
                        continue
            else:
                marker = self.marker()
                if marker == _CLOSE_OBJECT:
                    return out
                key = self.text(marker)
            out[key] = self.value(self.marker(), depth)


def loads(data: bytes) -> Any:
    """The document in `data`; ModelLoadError saying where it stops making sense."""
    reader = _Reader(bytes(data))
    document = reader.value(reader.marker(), 0)
    return document


def dumps(value: Any) -> bytes:
    """UBJSON of dicts, lists, str, int, float, bool, None and 1-D numpy arrays (typed arrays)."""
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


def _length(n: int) -> bytes:
    return b"L" + _INT64.pack(n)


# A key's length-prefixed bytes, by key: a model repeats the same dozen keys in every tree. Bounded, since
# a model's attribute names are its author's.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 256


def _key(key: str) -> bytes:
    raw = _KEYS.get(key)
    if raw is None:
        encoded = key.encode()
        raw = _length(len(encoded)) + encoded
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[key] = raw
    return raw


def _write(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is dict:
        out.append(b"{")
        for key, item in value.items():
            out.append(_key(key))
            if type(item) is np.ndarray:  # inline: most of a model's values are typed arrays
                opening, big = _ARRAYS[item.dtype]
                out.append(opening + _INT64.pack(len(item)) + item.astype(big).tobytes())
            else:
                _write(item, out)
        out.append(b"}")
    elif kind is np.ndarray:
        opening, big = _ARRAYS[value.dtype]
        out.append(opening + _INT64.pack(len(value)) + value.astype(big).tobytes())
    elif kind is list or kind is tuple:
        out.append(b"[#" + _length(len(value)))
        for item in value:
            _write(item, out)
    elif kind is str:
        raw = value.encode()
        out.append(b"S" + _length(len(raw)) + raw)
    elif kind is bool:
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        out.append(b"L" + _INT64.pack(value))
    elif isinstance(value, float):
        out.append(b"D" + struct.pack(">d", value))
    elif value is None:
        out.append(b"Z")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as UBJSON")
