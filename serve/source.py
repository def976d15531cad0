"""Where model artifacts live: a local folder or an S3 prefix of SageMaker `*.tar.gz` files.

A model's name is SageMaker's TargetModel: the artifact's key relative to the prefix, `.tar.gz` included.
Every name is validated before any I/O, so a request can never reach outside the configured source.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from serve.files import atomic_write
from serve.s3 import parse_s3_url, s3_client

MAX_NAME_BYTES = 1024  # S3's own key limit
# Checked on every request's TargetModel: one regex scan, not a Python loop over its characters.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
SUFFIX = ".tar.gz"


class SourceError(Exception):
    """A model could not be served from the source; `status` is the HTTP status the endpoint answers."""

    status = 500


class ModelNotFound(SourceError):
    """The name is invalid or names no artifact (SageMaker answers ValidationError)."""

    status = 400


class BadArtifact(SourceError):
    """The artifact exists but cannot be used (SageMaker answers ModelError)."""

    status = 424


class SourceUnavailable(SourceError):
    """The store cannot be reached or refuses us; worth retrying once it is back."""

    status = 503


class ModelExists(SourceError):
    """An upload would overwrite an existing artifact."""

    status = 409


@dataclass(frozen=True, slots=True)
class Version:
    """Identifies the bytes of one artifact: the S3 ETag, or `{mtime_ns}-{size}` for a folder."""

    tag: str
    # Only a hint for reserving disk space before downloading; the tag alone says whether bytes changed.
    size: int = field(default=0, compare=False)


class ModelSource(Protocol):
    # True when version() is a local stat, cheap enough for the event loop; False when it is a request.
    local: bool

    def describe(self) -> str: ...

    def url(self, name: str) -> str: ...

    def check(self) -> None: ...

    def list(self) -> Iterator[tuple[str, int]]: ...

    def version(self, name: str) -> Version: ...

    def fetch(self, name: str, dest: Path) -> Version: ...

    def put(self, name: str, artifact: Path, *, overwrite: bool) -> None: ...


def _folder_error(name: str, action: str, exc: OSError) -> SourceError:
    """A name no file can have (a part longer than the filesystem allows, a file used as a folder) is the
    caller's mistake, a 4xx; any other failure to reach the folder is the server's, retryable."""
    if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
        return ModelNotFound(f"model '{name[:200]}' cannot exist here: {exc.strerror}")
    return SourceUnavailable(f"cannot {action} model '{name}': {exc.strerror}")


def validate_name(name: str) -> str:
    """Return `name` if it is a safe TargetModel, else raise ModelNotFound saying why."""
    if not isinstance(name, str) or not name:
        raise ModelNotFound("model name is empty")
    shown = name if len(name) <= 200 else name[:200] + "..."
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ModelNotFound(f"model name '{shown}' is longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise ModelNotFound(f"model name {shown!r} contains control characters")
    if "\\" in name:
        raise ModelNotFound(f"model name '{shown}' contains a backslash")
    if name.startswith("/"):
        raise ModelNotFound(f"model name '{shown}' is an absolute path")
    segments = name.split("/")
    if "" in segments:
        raise ModelNotFound(f"model name '{shown}' has an empty path segment")
    if "." in segments or ".." in segments:
        raise ModelNotFound(f"model name '{shown}' has a '.' or '..' path segment")
    if not name.endswith(SUFFIX) or segments[-1] == SUFFIX:
        raise ModelNotFound(f"model name '{shown}' must name a {SUFFIX} artifact")
    return name


def _is_valid(name: str) -> bool:
    try:
        validate_name(name)
    except ModelNotFound:
        return False
    return True


class FolderSource:
    """Artifacts in a local folder, nested folders allowed; symlinks leading outside it are refused."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def describe(self) -> str:
        return f"folder {self.root}"

    def url(self, name: str) -> str:
        return str(self.root / name)

    def check(self) -> None:
        """Raise SourceUnavailable unless the folder exists, so a typo fails at startup, not per call."""
        if self.root.exists() and not self.root.is_dir():
            raise SourceUnavailable(f"{self.root} is not a folder")
        self._require_root()

    def _path(self, name: str) -> Path:
        return self._locate(name)[0]

    def _locate(self, name: str) -> tuple[Path, os.stat_result | None]:
        """The path of `name` and, when no link leads to it, its own lstat (which is then its stat)."""
        path = self.root / validate_name(name)
        # The root is resolved and names hold no '.' or '..': without a link below the root the path is
        # its own, which one lstat per segment shows (resolve() walks every folder from / in Python).
        below = str(self.root)
        for segment in name.split("/"):
            below = f"{below}/{segment}"
            try:
                info = os.lstat(below)
            except OSError:
                return path, None  # nothing there: the caller's own stat or open says so
            if stat.S_ISLNK(info.st_mode):
                break
        else:
            return path, info
        path = path.resolve()
        if not path.is_relative_to(self.root):
            raise ModelNotFound(f"model '{name}' resolves outside {self.describe()}")
        return path, None

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(f"{self.describe()} does not exist")

    def list(self) -> Iterator[tuple[str, int]]:
        self._require_root()
        found = []
        for folder, _, files in os.walk(self.root):
            for file in files:
                name = Path(folder, file).relative_to(self.root).as_posix()
                if not _is_valid(name):
                    continue
                try:
                    found.append((name, self._path(name).stat().st_size))
                except (ModelNotFound, OSError):
                    continue  # escaping symlink, dangling link, or removed while listing
        yield from sorted(found)

    def version(self, name: str) -> Version:
        path, st = self._locate(name)
        try:
            st = st or path.stat()
        except FileNotFoundError:
            raise ModelNotFound(f"model '{name}' not found in {self.describe()}") from None
        except OSError as exc:
            raise _folder_error(name, "stat", exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ModelNotFound(f"model '{name}' in {self.describe()} is not a file")
        return _folder_version(st)

    def fetch(self, name: str, dest: Path) -> Version:
        path = self._path(name)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below; only opening maps to ModelNotFound
        except (FileNotFoundError, IsADirectoryError):
            raise ModelNotFound(f"model '{name}' not found in {self.describe()}") from None
        except OSError as exc:
            raise _folder_error(name, "read", exc) from exc
        with src:
            # The open file's own stat describes exactly the bytes fetched, even if the path is replaced now.
            st = os.fstat(src.fileno())
            try:
                # A hard link is the bytes without copying them (replacing an artifact makes a new file;
                # the linked inode stays what was fetched). The path may have been replaced since it was
                # opened; another filesystem, or a file the kernel will not link for us, is copied.
                os.link(path, dest, follow_symlinks=False)
                linked = os.stat(dest)
                if (linked.st_ino, linked.st_dev) == (st.st_ino, st.st_dev):
                    return _folder_version(st)
                dest.unlink()
            except OSError:
                pass
            with atomic_write(dest) as out:
                shutil.copyfileobj(src, out, 1 << 20)
        return _folder_version(st)

    def put(self, name: str, artifact: Path, *, overwrite: bool) -> None:
        self._path(name)  # refuses a name whose parent folder is a symlink leading out, before creating it
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            shutil.copyfile(artifact, part)
            if overwrite:
                os.replace(part, target)
            else:
                # A hard link never replaces an existing file, so two concurrent adds cannot both win.
                try:
                    os.link(part, target)
                except FileExistsError:
                    raise ModelExists(f"model '{name}' already exists in {self.describe()}") from None
        finally:
            part.unlink(missing_ok=True)


def _folder_version(st: os.stat_result) -> Version:
    return Version(f"{st.st_mtime_ns}-{st.st_size}", st.st_size)


class S3Source:
    """Artifacts under an S3 prefix, read with a single shared client."""

    local = False

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def check(self) -> None:
        """One listing of at most one key: the bucket exists and these credentials may list it."""
        with self._errors():
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def _key(self, name: str) -> str:
        return self.prefix + validate_name(name)

    @contextmanager
    def _errors(self, name: str | None = None) -> Iterator[None]:
        """Map boto's failures to ours: missing -> ModelNotFound, anything else -> SourceUnavailable."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if name is not None and code in ("404", "NoSuchKey", "NotFound"):
                raise ModelNotFound(f"model '{name}' not found in {self.describe()}") from None
            raise SourceUnavailable(f"{self.describe()} answered {code or 'an error'}: {exc}") from exc
        except S3UploadFailedError as exc:
            raise SourceUnavailable(f"upload to {self.describe()} failed: {exc}") from exc
        except NoCredentialsError:
            raise SourceUnavailable(
                f"no AWS credentials to read {self.describe()} (environment, profile or instance role)"
            ) from None
        except (BotoCoreError, HTTPError) as exc:
            raise SourceUnavailable(f"{self.describe()} is unreachable: {exc}") from exc

    def list(self) -> Iterator[tuple[str, int]]:
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            found = [
                (obj["Key"][len(self.prefix) :], obj["Size"])
                for page in pages
                for obj in page.get("Contents", [])
            ]
        yield from sorted((name, size) for name, size in found if _is_valid(name))

    def version(self, name: str) -> Version:
        key = self._key(name)
        with self._errors(name):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        return Version(head["ETag"].strip('"'), head["ContentLength"])

    def fetch(self, name: str, dest: Path) -> Version:
        key = self._key(name)
        with self._errors(name):
            # get_object's own ETag describes exactly the bytes streamed, even if the key is overwritten now.
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                with atomic_write(dest) as out:
                    shutil.copyfileobj(body, out, 1 << 20)
            finally:
                body.close()
        return Version(response["ETag"].strip('"'), response["ContentLength"])

    def put(self, name: str, artifact: Path, *, overwrite: bool) -> None:
        key = self._key(name)
        if not overwrite:
            try:
                self.version(name)
            except ModelNotFound:
                pass
            else:
                raise ModelExists(f"model '{name}' already exists in {self.describe()}")
        with self._errors():
            self.client.upload_file(str(artifact), self.bucket, key)


def open_source(spec: str, *, s3_endpoint_url: str | None = None) -> ModelSource:
    """A folder path or `s3://bucket/prefix/`; the S3 endpoint defaults to AWS_ENDPOINT_URL or AWS."""
    if spec.startswith("s3://"):
        try:
            bucket, prefix = parse_s3_url(spec)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        return S3Source(bucket, prefix, _source_client(s3_endpoint_url))
    return FolderSource(Path(spec))


def _source_client(endpoint_url: str | None) -> Any:
    # Short timeouts make a dead store answer 503 within seconds rather than hang requests; the pool
    # covers ~16 concurrent fetches plus HEADs for revalidation.
    return s3_client(endpoint_url, connect_timeout=2, read_timeout=10, pool=32)
