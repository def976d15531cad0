"""Unpack an untrusted SageMaker artifact (gzip tar) without letting it write anywhere but its own folder.

Every member is checked before anything is written: only plain files and folders, relative names that stay
inside the target, bounded count and size. Extraction goes to a temp folder beside the target and is renamed
into place only when complete, so a failure never leaves a half-unpacked model behind. Reading and writing
stop at a deadline: a thread cannot be stopped from outside, so the work checks its own clock.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from serve.source import BadArtifact

# Defaults for artifacts we accept: generous for XGBoost models, small enough to stop a decompression bomb.
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBERS = 1000
# Seconds one artifact may take to unpack (and, in the compiler, to compile): generous for a 1 GiB model on
# a busy disk, short of the minutes a hostile one could hold a load thread.
LOAD_TIMEOUT_S = 120.0
# tarfile reads a pax extended header or a GNU long name whole into memory (and parses a pax one with
# regular expressions, holding the GIL): a 3 GiB one cost 3 GiB and half a minute. Real ones are a few
# hundred bytes.
MAX_HEADER_BYTES = 64 * 1024
_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)

_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)
# Bytes copied between two looks at the clock.
_CHUNK = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extended headers are refused over MAX_HEADER_BYTES before tarfile reads them."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS:
            if self.size > MAX_HEADER_BYTES:
                raise BadArtifact(
                    f"tar member has a {self.size}-byte extended header; at most {MAX_HEADER_BYTES} are read"
                )
            tar.header_bytes = getattr(tar, "header_bytes", 0) + self.size  # type: ignore[attr-defined]
        return super()._proc_member(tar)  # type: ignore[misc]


def _archive_error(exc: Exception) -> Exception:
    """The artifact's fault (BadArtifact), or, for an OSError with an errno (disk full, I/O error), the
    server's own, passed on for the caller to answer as retryable."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    return BadArtifact(f"truncated or corrupt archive: {exc}")


class Archive:
    """An open gzip tar whose members all passed the checks."""

    def __init__(self, tar: tarfile.TarFile, members: list[tarfile.TarInfo], deadline: _Deadline) -> None:
        self._tar = tar
        self._members = members
        self._deadline = deadline
        self.unpacked_bytes = sum(m.size for m in members if m.isfile())

    def extract_to(self, dest: Path, staging: Path | None = None) -> None:
        """Unpack into dest, which must not exist yet, through `staging` (a new folder beside it, made here
        if not named); on failure nothing is left behind."""
        if staging is None:
            tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest.parent))
        else:
            tmp = staging
            tmp.mkdir()
        try:
            for member in self._members:
                self._extract(member, tmp.joinpath(*PurePosixPath(member.name).parts))
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _extract(self, member: tarfile.TarInfo, target: Path) -> None:
        # The members were checked (plain files and folders, relative, no ".."), so target is inside tmp.
        try:
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            source = self._tar.extractfile(member)
            assert source is not None  # a plain file
            with source, target.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    self._deadline.check()
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise BadArtifact(f"tar member '{member.name}' clashes with another member's path") from None
        except _READ_ERRORS as exc:
            raise _archive_error(exc) from None


STAGING_PREFIX = ".unpack-"


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = MAX_UNPACKED_BYTES
    max_members: int = MAX_MEMBERS
    timeout: float = LOAD_TIMEOUT_S


# unpacker(archive, dest, limits, reserve): unpack `archive` into `dest` (which must not exist yet), calling
# reserve(unpacked bytes) once its members are checked and before anything is written; whatever reserve
# raises stops the unpack and is raised. `unpack` does it in this process; serve.compiler in another.
Unpacker = Callable[[Path, Path, UnpackLimits, Callable[[int], None]], None]


def unpack(
    archive: Path,
    dest: Path,
    limits: UnpackLimits,
    reserve: Callable[[int], None],
    staging: Path | None = None,
) -> None:
    with open_archive(
        archive, max_bytes=limits.max_bytes, max_members=limits.max_members, timeout=limits.timeout
    ) as opened:
        reserve(opened.unpacked_bytes)
        opened.extract_to(dest, staging)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise too_slow(self.seconds)


def too_slow(seconds: float) -> BadArtifact:
    """What an unpack that outlasted its deadline says, wherever it ran."""
    return BadArtifact(f"unpacking took longer than the {seconds:g} s a load may take (--load-timeout)")


@contextmanager
def open_archive(
    path: Path, *, max_bytes: int, max_members: int, timeout: float = LOAD_TIMEOUT_S
) -> Iterator[Archive]:
    """Open and check a gzip tar artifact; raises BadArtifact naming the first problem found, or saying
    it took longer than `timeout` seconds, checks and extraction together."""
    deadline = _Deadline(timeout)
    try:
        tar = tarfile.open(path, "r:gz", tarinfo=_BoundedTarInfo)  # noqa: SIM115 - closed below
    except _READ_ERRORS:
        raise BadArtifact("not a gzip tar archive") from None
    with tar:
        members = _checked_members(tar, max_bytes=max_bytes, max_members=max_members, deadline=deadline)
        yield Archive(tar, members, deadline)


def _checked_members(
    tar: tarfile.TarFile, *, max_bytes: int, max_members: int, deadline: _Deadline
) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        # Read headers one at a time so an archive with a million members is refused at the cap.
        while (member := tar.next()) is not None:
            deadline.check()
            if len(members) == max_members:
                raise BadArtifact(f"archive has more than {max_members} members")
            _check_member(member)
            total += member.size if member.isfile() else 0
            # Headers count too: each is a 512-byte block, plus the extended ones tarfile read.
            if total + 512 * len(members) + getattr(tar, "header_bytes", 0) > max_bytes:
                raise BadArtifact(f"archive unpacks to more than {max_bytes} bytes, headers included")
            members.append(member)
    except _READ_ERRORS as exc:
        raise _archive_error(exc) from None
    if not any(m.isfile() for m in members):
        raise BadArtifact("archive is empty: it holds no files")
    _check_layout(members)
    return members


def _check_layout(members: list[tarfile.TarInfo]) -> None:
    """Refuse a model packed inside one folder: SageMaker's XGBoost container only looks at the root."""
    paths = [PurePosixPath(m.name).parts for m in members]
    if any(len(parts) == 1 for parts, m in zip(paths, members, strict=True) if m.isfile()):
        return
    folders = sorted({parts[0] for parts in paths if parts})
    if len(folders) == 1 and folders[0] != "code":  # code/ alone may be a model_fn that builds its model
        raise BadArtifact(
            f"archive holds only folder '{folders[0]}/': SageMaker needs the model files at the archive root "
            f"(pack them with: tar -czf model.tar.gz -C {folders[0]} .)"
        )


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if member.issym():
        raise BadArtifact(f"tar member '{name}' is a symlink")
    if member.islnk():
        raise BadArtifact(f"tar member '{name}' is a hardlink")
    if member.ischr() or member.isblk():
        raise BadArtifact(f"tar member '{name}' is a device")
    if member.isfifo():
        raise BadArtifact(f"tar member '{name}' is a fifo")
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise BadArtifact(f"tar member '{name}' has an unsupported type")
    if not name or "\0" in name:
        raise BadArtifact(f"tar member {name!r} has an invalid name")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise BadArtifact(f"tar member '{name}' has an absolute path")
    # With links refused, a relative name without ".." can only land inside the target folder.
    if ".." in path.parts:
        raise BadArtifact(f"tar member '{name}' escapes the artifact folder")
