"""model.tar.gz exactly as SageMaker's XGBoost container packs it, and all-or-nothing file writes."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

from serve.errors import CommandError
from serve.files import atomic_write

MODEL_MEMBER = "xgboost-model"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` all or nothing; a failure is one CommandError line naming the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as out:
            out.write(data)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


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
