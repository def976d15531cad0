"""`mme convert`: re-save a pickled XGBoost artifact in XGBoost's own format (UBJSON), so it loads without
--allow-pickle. Works on a model file, a model folder, or a model.tar.gz holding `xgboost-model`."""

from __future__ import annotations

import argparse
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from serve.errors import CommandError
from serve.files import atomic_write

HELP = (
    "Re-save a pickled XGBoost model (as SageMaker XGBoost 0.90/1.0 images wrote them) as UBJSON. "
    "This UNPICKLES SRC, which can run arbitrary code: convert only artifacts you trust."
)

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC", type=Path, help="a model file, a model folder or a model.tar.gz"
    )
    parser.add_argument(
        "dst",
        metavar="DST",
        type=Path,
        nargs="?",
        help="where to write: a .tar.gz for an archive, else the model file (default: replace SRC's model)",
    )


def run(args: argparse.Namespace) -> int:
    src: Path = args.src
    if not src.exists():
        raise CommandError(f"{src} does not exist")
    if src.is_dir():
        source, written = _convert_folder(src, args.dst)
    elif src.name.lower().endswith(_ARCHIVE_SUFFIXES):
        source, written = _convert_archive(src, args.dst or src)
    else:
        source, written = _convert_file(src, args.dst or src)
    print(f"converted {source} -> {written} (UBJSON, {written.stat().st_size} bytes)")
    return 0


def _to_ubjson(data: bytes, name: str) -> tuple[bytes, str]:
    """(UBJSON bytes, name of the original format) for an artifact in any format, pickles included."""
    from handler.errors import ModelLoadError
    from handler.xgboost import booster_from_bytes, format_name

    try:
        booster = booster_from_bytes(data, allow_pickle=True, source=name)
    except ModelLoadError as exc:
        raise CommandError(str(exc)) from None
    return bytes(booster.save_raw("ubj")), format_name(data)


def _convert_file(src: Path, dst: Path) -> tuple[str, Path]:
    ubjson, old_format = _to_ubjson(_read(src), src.name)
    _write_atomically(dst, ubjson)
    return f"{src} ({old_format})", dst


def _convert_folder(src: Path, dst: Path | None) -> tuple[str, Path]:
    name = _find_artifact([entry.name for entry in src.iterdir() if entry.is_file()], str(src))
    return _convert_file(src / name, dst or src / name)


def _convert_archive(src: Path, dst: Path) -> tuple[str, Path]:
    """Rewrites the archive with its model converted and every other member (code/ etc.) as it was."""
    try:
        with tarfile.open(src, "r:*") as archive:
            members = archive.getmembers()
            top_level = {_name(m): m for m in members if m.isfile() and "/" not in _name(m)}
            model = top_level[_find_artifact(top_level, str(src))]
            ubjson, old_format = _to_ubjson(_read_member(archive, model), model.name)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as converted:
                for member in members:
                    if member is model:
                        member.size = len(ubjson)
                        converted.addfile(member, io.BytesIO(ubjson))
                    else:
                        converted.addfile(member, archive.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CommandError(f"cannot read {src} as a tar.gz archive: {exc}") from None
    _write_atomically(dst, buffer.getvalue())
    return f"{src} ({old_format} {model.name})", dst


def _find_artifact(names: Iterable[str], where: str) -> str:
    from handler.errors import ModelLoadError
    from handler.xgboost import find_artifact

    try:
        return find_artifact(names, where)
    except ModelLoadError as exc:
        raise CommandError(str(exc)) from None


def _name(member: tarfile.TarInfo) -> str:
    return member.name.removeprefix("./")


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return handle.read() if handle else b""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one, even when SRC is replaced in place."""
    if path.is_dir():
        raise CommandError(f"{path} is a folder; DST must be a file path")
    try:
        with atomic_write(path) as out:
            out.write(data)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
