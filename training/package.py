"""model.tar.gz exactly as SageMaker's XGBoost container packs it, and all-or-nothing file writes."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from serve.errors import CommandError

MODEL_MEMBER = "xgboost-model"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp name in the same folder, then rename: readers never see a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o644)  # mkstemp makes 0600 files; artifacts are meant to be read by a server
        os.replace(temp, path)
    except BaseException as exc:
        os.unlink(temp)
        if isinstance(exc, OSError):
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def tar_gz(model: bytes) -> bytes:
    """A gzip tarball holding one member, `xgboost-model`, at its root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(MODEL_MEMBER)
        info.size = len(model)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(model))
    return buffer.getvalue()


def write_artifact(path: Path, model: bytes) -> None:
    """Write `model` (XGBoost's own UBJSON or JSON bytes) as the artifact `path`, e.g. NewYork_NY.tar.gz."""
    write_atomic(path, tar_gz(model))
