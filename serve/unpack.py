"""Unpack an untrusted SageMaker artifact (gzip tar) without letting it write anywhere but its own folder.

Every member is checked before anything is written: only plain files and folders, relative names that stay
inside the target, bounded count and size. Extraction goes to a temp folder beside the target and is renamed
into place only when complete, so a failure never leaves a half-unpacked model behind.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from serve.source import BadArtifact

# Defaults for artifacts we accept: generous for XGBoost models, small enough to stop a decompression bomb.
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBERS = 1000
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

# Python builds before 3.11.4 lack extraction filters; the explicit checks below stand on their own.
_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


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

    def __init__(self, tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> None:
        self._tar = tar
        self._members = members
        self.unpacked_bytes = sum(m.size for m in members if m.isfile())

    def extract_to(self, dest: Path) -> None:
        """Unpack into dest, which must not exist yet; on failure nothing is left behind."""
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
        try:
            try:
                self._tar.extractall(tmp, members=self._members, **_FILTER)
            except tarfile.FilterError as exc:
                raise BadArtifact(f"tar member refused: {exc}") from None
            except _READ_ERRORS as exc:
                raise _archive_error(exc) from None
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def open_archive(path: Path, *, max_bytes: int, max_members: int) -> Iterator[Archive]:
    """Open and check a gzip tar artifact; raises BadArtifact naming the first problem found."""
    try:
        tar = tarfile.open(path, "r:gz", tarinfo=_BoundedTarInfo)  # noqa: SIM115 - closed below
    except _READ_ERRORS:
        raise BadArtifact("not a gzip tar archive") from None
    with tar:
        yield Archive(tar, _checked_members(tar, max_bytes=max_bytes, max_members=max_members))


def _checked_members(tar: tarfile.TarFile, *, max_bytes: int, max_members: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        # Read headers one at a time so an archive with a million members is refused at the cap.
        while (member := tar.next()) is not None:
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
    return members


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
