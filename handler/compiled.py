"""A model's compiled form: what serving it needs, in one versioned, checksummed file beside the artifact.

Compiling a model (reading its file, checking the tree walker against XGBoost, generating its code)
costs milliseconds of the GIL; reading the result back costs mapping a file and a few array checks. So a
model is compiled once per artifact version and a later load of the same file (a model evicted and
wanted again) reads `.mme-compiled` instead.

The file is never trusted blindly: its key must be that of the model file as it is now (name, size,
mtime, inode), of the loading options and of this XGBoost and Python; its payload must match its
SHA-256; and the walker's arrays are checked as forest.build checks a model. Anything else reads as
absent, and the model is compiled again. The digest is what lets a re-read skip the array checks: a
payload whose digest this process has checked before is those very bytes, so they pass again.

Layout (little-endian): header `MMEC`, format version, 32-byte key, payload length, SHA-256 of the
payload; payload: width, classes, base, UBJSON size, the sections' lengths, then the objective, roots,
feature, threshold, left, right, missing (int32/float32), the generated code (marshal), the model's
UBJSON (only for models the walker does not serve, which XGBoost then loads without the model file
being read again).
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import struct
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import xgboost as xgb

from handler.forest import ModelLimits
from handler.treewalk import TreeWalker

FILE_NAME = ".mme-compiled"
MAGIC = b"MMEC"
FORMAT = 2
_HEADER = struct.Struct("<4sI32sQ32s")
# width, classes, base, UBJSON size, roots, nodes, objective, code and UBJSON bytes
_META = struct.Struct("<iidQQQQQQ")
_TYPECODES = ("i", "i", "f", "i", "i", "i")  # roots, feature, threshold, left, right, missing
# Digests of payloads whose arrays passed TreeWalker.from_arrays' checks in this process, least recently
# read first: a re-miss then costs a hash instead of those checks (~85 µs for a city model). ~100 bytes
# an entry, so at most ~6.5 MiB; a digest that falls out is only checked again.
_CHECKED: OrderedDict[bytes, bool] = OrderedDict()
_CHECKED_LOCK = threading.Lock()
CHECKED_MAX = 1 << 16


@dataclass(frozen=True, slots=True)
class Compiled:
    width: int  # the model's feature count
    objective: str  # for the responses (handler/outputs.py)
    num_class: int
    ubjson_size: int  # of the validated model XGBoost loads: what its Booster's memory is estimated from
    walker: TreeWalker | None  # None: the walker cannot reproduce this model, XGBoost serves it
    code: bytes | memoryview = b""  # TreeCode.to_marshal() of the walker, once a hot model had it generated
    ubjson: bytes = b""  # the validated model for XGBoost, kept only when there is no walker

    def with_code(self, code: bytes) -> Compiled:
        return replace(self, code=code)


def key(model_file: Path, *, allow_pickle: bool, limits: ModelLimits) -> bytes:
    """What the compiled form of `model_file`, loaded with these options, is valid for."""
    stat = model_file.stat()
    parts = (model_file.name, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return hashlib.sha256(_key_prefix(allow_pickle, limits) + repr(parts).encode()).digest()


@functools.lru_cache(maxsize=8)
def _key_prefix(allow_pickle: bool, limits: ModelLimits) -> bytes:
    # What every key of a server shares, made once: the repr of the limits alone costs ~15 µs.
    parts = (FORMAT, xgb.__version__, sys.implementation.cache_tag, sys.byteorder, allow_pickle, limits)
    return repr(parts).encode()


def read(folder: Path, wanted: bytes) -> Compiled | None:
    """The compiled form in `folder` if it is intact and keyed `wanted`; None otherwise.

    The walker's arrays are views of the file mapped read-only, not copies: every process serving the
    model shares one physical copy of them, the page cache's. That is safe because the file is never
    changed in place (write replaces it whole; a removed file stays mapped until its model goes).
    """
    try:
        with (folder / FILE_NAME).open("rb") as file:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file, which cannot be mapped
        return None
    try:
        return _parse(data, wanted)
    except (ValueError, struct.error, EOFError, TypeError):  # UnicodeDecodeError is a ValueError
        return None  # damaged, truncated or of another build: compiled again, never served


def is_current(folder: Path, model_file: Path, *, allow_pickle: bool, limits: ModelLimits) -> bool:
    """Whether `folder` holds an intact compiled form of `model_file` as it is now, for these options."""
    try:
        wanted = key(model_file, allow_pickle=allow_pickle, limits=limits)
    except OSError:
        return False
    return read(folder, wanted) is not None


def write(folder: Path, wanted: bytes, compiled: Compiled) -> bool:
    """Store `compiled` in `folder` under key `wanted`, whole or not at all; False if the folder refuses."""
    payload = _payload(compiled)
    header = _HEADER.pack(MAGIC, FORMAT, wanted, len(payload), hashlib.sha256(payload).digest())
    temporary = folder / f"{FILE_NAME}.{uuid.uuid4().hex}"
    try:
        with temporary.open("wb") as file:
            file.write(header)
            file.write(payload)
        os.replace(temporary, folder / FILE_NAME)
    except OSError:
        temporary.unlink(missing_ok=True)
        return False
    return True


def _payload(compiled: Compiled) -> bytes:
    walker = compiled.walker
    arrays = walker.arrays() if walker is not None else ()
    roots = len(arrays[0]) if arrays else 0
    nodes = len(arrays[1]) if arrays else 0
    base = walker.base if walker is not None else 0.0
    objective = compiled.objective.encode()
    meta = _META.pack(compiled.width, compiled.num_class, base, compiled.ubjson_size, roots, nodes,
                      len(objective), len(compiled.code), len(compiled.ubjson))  # fmt: skip
    return b"".join([meta, objective, *(a.tobytes() for a in arrays), compiled.code, compiled.ubjson])


def _parse(data: mmap.mmap, wanted: bytes) -> Compiled:
    magic, version, found, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT or found != wanted:
        raise ValueError("another model's or format's compiled form")
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise ValueError("truncated or damaged")
    width, num_class, base, ubjson_size, roots, nodes, objective_len, code_size, ubjson_len = (
        _META.unpack_from(payload)
    )
    at = _META.size + objective_len
    objective = bytes(payload[_META.size : at]).decode()
    walker = None
    if nodes:
        arrays = []
        for typecode, count in zip(_TYPECODES, (roots, *[nodes] * 5), strict=True):
            section = payload[at : at + 4 * count]
            if len(section) != 4 * count:
                raise ValueError("sections do not add up")
            arrays.append(section.cast(typecode))
            at += 4 * count
        with _CHECKED_LOCK:  # loads read forms on threads and on the event loop
            checked = _CHECKED.pop(digest, False)
        if checked:
            walker = TreeWalker(base, width, *arrays)
        else:
            walker = TreeWalker.from_arrays(base, width, tuple(arrays))
        with _CHECKED_LOCK:
            _CHECKED[digest] = True  # (re)inserted last: the most recently read
            if len(_CHECKED) > CHECKED_MAX:
                _CHECKED.popitem(last=False)
    code = payload[at : at + code_size]  # a view too: only a load that wants the code reads it
    at += code_size
    ubjson = bytes(payload[at : at + ubjson_len])
    if at + ubjson_len != len(payload) or (walker is None and not ubjson) or (code and walker is None):
        raise ValueError("sections do not add up")
    return Compiled(width, objective, num_class, ubjson_size, walker, code, ubjson)
