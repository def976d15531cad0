"""`mme convert`: re-save any XGBoost artifact this server reads (legacy binary, pickles of every SageMaker
image, JSON) as UBJSON that current XGBoost loads on its own, with best_ntree_limit already applied.
Works on a model file, a model folder, or a model.tar.gz holding `xgboost-model`."""

from __future__ import annotations

import argparse
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from serve.errors import CommandError
from serve.files import atomic_write

HELP = (
    "Re-save an XGBoost model in any format the server reads as UBJSON, which XGBoost >= 1.6 loads on its "
    "own. Reads: legacy binary (XGBoost 0.x-2.x save_model, SageMaker images 1.3-1 to 1.7-1), pickled "
    "Boosters (images 0.90-1 to 1.2-2, and script-mode pickles of any version; unpickled without running "
    "code), JSON and UBJSON. A pickle's best_ntree_limit is applied, so the output serves what the image "
    "served. Errors: 'not an XGBoost model in any format' (the file is something else), 'ends inside' "
    "(truncated), 'invalid ... model' (a tree or field fails validation), 'references X' (a pickle of "
    "something other than a Booster)."
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="re-read the written model with plain XGBoost and compare its predictions on generated rows",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also read pickled scikit-learn wrappers (XGBRegressor & co.), still without running code",
    )


def run(args: argparse.Namespace) -> int:
    src: Path = args.src
    if not src.exists():
        raise CommandError(f"{src} does not exist")
    convert = _Converter(args.allow_pickle)
    if src.is_dir():
        source, written = _convert_folder(convert, src, args.dst)
    elif src.name.lower().endswith(_ARCHIVE_SUFFIXES):
        source, written = _convert_archive(convert, src, args.dst or src)
    else:
        source, written = _convert_file(convert, src, args.dst or src)
    print(f"converted {source} -> {written} (UBJSON, {written.stat().st_size} bytes)")
    if args.check:
        print(f"checked: {convert.check()}")
    return 0


class _Converter:
    """Reads each artifact into a Forest and writes its UBJSON; remembers the last for --check."""

    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.forest = None
        self.ubjson = b""

    def __call__(self, data: bytes, name: str) -> tuple[bytes, str]:
        """(UBJSON bytes, name of the original format) for an artifact in any format this server reads."""
        from handler import formats
        from handler.errors import ModelLoadError
        from handler.xgboost import DEFAULT_LIMITS, to_ubjson

        try:
            self.forest = formats.read(data, name, DEFAULT_LIMITS, allow_pickle=self.allow_pickle)
        except ModelLoadError as exc:
            raise CommandError(str(exc)) from None
        self.ubjson = to_ubjson(self.forest)
        return self.ubjson, formats.format_name(data)

    def check(self) -> str:
        """The written UBJSON, loaded by XGBoost alone, against the model as read, on generated rows."""
        from handler.xgboost import check_rows, verify_ubjson

        rows = check_rows(self.forest)
        try:
            verify_ubjson(self.forest, self.ubjson, rows)
        except ValueError as exc:
            raise CommandError(f"check failed: {exc}") from None
        return f"{len(rows)} generated rows predict the same, bit for bit"


def _convert_file(convert: _Converter, src: Path, dst: Path) -> tuple[str, Path]:
    ubjson, old_format = convert(_read(src), src.name)
    _write_atomically(dst, ubjson)
    return f"{src} ({old_format})", dst


def _convert_folder(convert: _Converter, src: Path, dst: Path | None) -> tuple[str, Path]:
    name = _find_artifact([entry.name for entry in src.iterdir() if entry.is_file()], str(src))
    return _convert_file(convert, src / name, dst or src / name)


def _convert_archive(convert: _Converter, src: Path, dst: Path) -> tuple[str, Path]:
    """Rewrites the archive with its model converted and every other member (code/ etc.) as it was."""
    try:
        with tarfile.open(src, "r:*") as archive:
            members = archive.getmembers()
            top_level = {_name(m): m for m in members if m.isfile() and "/" not in _name(m)}
            model = top_level[_find_artifact(top_level, str(src))]
            ubjson, old_format = convert(_read_member(archive, model), model.name)
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
