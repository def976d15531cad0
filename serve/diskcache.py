"""Local disk cache of unpacked artifacts, bounded by its own byte budget and evicted least recently used.

Bytes on disk (unpacked folders plus downloads in flight) never exceed the budget: space is reserved before
each download and each extraction, evicting idle entries to make room. A name is materialized by one thread
at a time; different names proceed in parallel.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serve.source import (
    BadArtifact,
    ModelNotFound,
    ModelSource,
    SourceError,
    SourceUnavailable,
    Version,
    validate_name,
)
from serve.unpack import LOAD_TIMEOUT_S, MAX_MEMBERS, MAX_UNPACKED_BYTES, Unpacker, UnpackLimits, unpack

MARKER = ".mme-disk-cache"
# How long a load waits for disk room that loads in flight hold, before a retryable 503.
ROOM_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class _Entry:
    """One per artifact on disk, resident model or not (thousands): a folder name, not a Path object,
    which would take several times the memory."""

    folder: str  # under the cache's root
    version: Version
    size: int
    # The folder's listing as unpacked (interned names: one string for thousands of "xgboost-model"s), so a
    # re-miss reads no directory: nothing but the model's compiled form is ever added to the folder.
    names: tuple[str, ...]


class DiskCache:
    def __init__(
        self,
        root: Path,
        budget_bytes: int,
        source: ModelSource,
        *,
        max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
        max_members: int = MAX_MEMBERS,
        unpack_timeout: float = LOAD_TIMEOUT_S,
        unpacker: Unpacker = unpack,
    ) -> None:
        """`unpacker` does the unpacking (serve.unpack.unpack, here, or a compiler process's)."""
        self.root = root
        self.budget = budget_bytes
        self.source = source
        self._limits = UnpackLimits(max_unpacked_bytes, max_members, unpack_timeout)
        self._unpack = unpacker
        self._lock = threading.Lock()  # guards everything below; taken after a name lock, never before
        self._room = threading.Condition(self._lock)  # notified whenever bytes or pins are given back
        self._pins: dict[str, int] = {}  # name -> loads reading its folder now: never evicted
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently materialized first
        self._bytes = 0  # entry sizes plus reservations of loads in flight
        self._name_locks: dict[str, tuple[threading.Lock, int]] = {}  # name -> (lock, threads using it)
        self._wipe_root()

    def _wipe_root(self) -> None:
        # The marker keeps a mistyped --cache-dir from wiping a folder that holds anything else.
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        children = [c for c in self.root.iterdir() if c != marker]
        if children and not marker.exists():
            raise SourceError(f"refusing to use {self.root} as the disk cache: it is not empty")
        for child in children:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        marker.touch()

    def used_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def touch(self, names: list[str]) -> None:
        """Mark these names' folders as just used, as a read of them would."""
        with self._lock:
            for name in names:
                if name in self._entries:
                    self._entries.move_to_end(name)

    def refresh_version(self, name: str) -> Version:
        return self.source.version(validate_name(name))

    def evict(self, name: str) -> None:
        with self._name_lock(name), self._lock:
            self._drop(name)

    @contextmanager
    def use(self, name: str) -> Iterator[tuple[Path, Version]]:
        """materialize(), with the folder kept on disk until the block ends (the model is read from it)."""
        folder, version = self.materialize(name, pin=True)
        try:
            yield folder, version
        finally:
            self.unpin(name)

    def pin_if_current(self, name: str) -> tuple[Path, Version, tuple[str, ...] | None] | None:
        """The folder of `name` (with its version and listing), pinned as use() pins it (unpin() when
        done), if it is on disk, current, and no thread is working on the name; None otherwise, or when
        that cannot be known at once.

        Never blocks, so the event loop may call it: a source whose version check is a request (S3)
        answers None, as does a lock some thread holds (use() on a thread then does the whole job)."""
        if not self.source.local:
            return None
        try:
            version = self.source.version(validate_name(name))
        except SourceError:
            return None  # use() meets the error again, and says it
        if not self._lock.acquire(blocking=False):
            return None
        try:
            entry = self._entries.get(name)
            if entry is None or entry.version != version or name in self._name_locks:
                return None
            self._entries.move_to_end(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            return self.root / entry.folder, entry.version, entry.names
        finally:
            self._lock.release()

    def unpin(self, name: str) -> None:
        with self._lock:
            if self._pins[name] == 1:
                del self._pins[name]
            else:
                self._pins[name] -= 1
            self._room.notify_all()

    def materialize(self, name: str, *, pin: bool = False) -> tuple[Path, Version]:
        """A folder holding the unpacked artifact, fetched unless the cached copy is still current."""
        validate_name(name)
        with self._name_lock(name):
            path, version = self._materialize(name)
            if pin:
                with self._lock:
                    self._pins[name] = self._pins.get(name, 0) + 1
            return path, version

    def _materialize(self, name: str) -> tuple[Path, Version]:
        try:
            version = self.source.version(name)
        except SourceUnavailable:
            with self._lock:
                entry = self._touch(name)
            if entry is None:
                raise
            return self.root / entry.folder, entry.version  # the store is down: the last copy beats an error
        except ModelNotFound:
            with self._lock:
                self._drop(name)  # removed from the store, so it must stop being served
            raise
        with self._lock:
            entry = self._touch(name)
        if entry is not None and entry.version == version:
            return self.root / entry.folder, entry.version
        return self._load(name, version)

    def _load(self, name: str, hint: Version) -> tuple[Path, Version]:
        download = self.root / f".download-{uuid.uuid4().hex}.tar.gz"
        held = 0
        try:
            held = self._reserve(name, hint.size, held)
            try:
                version = self.source.fetch(name, download)
            except OSError as exc:  # our disk (full, read-only): the server's trouble, not the artifact's
                raise SourceUnavailable(f"cannot store artifact '{name}' locally: {exc.strerror}") from None
            download_size = download.stat().st_size
            held = self._reserve(name, download_size, held)
            dest = self.root / _folder_name(name)
            unpacked = 0

            def reserve(size: int) -> None:
                nonlocal held, unpacked
                held = self._reserve(name, download_size + size, held)
                unpacked = size

            # OSError from here on is our disk's: unpacking maps the artifact's own errors to BadArtifact.
            self._unpack(download, dest, self._limits, reserve)
            download.unlink()
            names = tuple(sys.intern(member) for member in os.listdir(dest))
            with self._lock:
                self._drop(name)
                self._entries[name] = _Entry(dest.name, version, unpacked, names)
                # The entry's bytes move from the reservation into the entry; the download is gone.
                self._bytes += unpacked - held
                held = 0
            return dest, version
        except BadArtifact as exc:
            raise BadArtifact(f"artifact '{name}': {exc}") from None
        except OSError as exc:
            raise SourceUnavailable(f"cannot unpack artifact '{name}' locally: {exc.strerror}") from None
        finally:
            download.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= held
                self._room.notify_all()

    def _reserve(self, name: str, total: int, held: int) -> int:
        """Grow this load's reservation from `held` to `total` bytes, evicting idle entries; returns total."""
        if total > self.budget:
            raise BadArtifact(
                f"needs {total} bytes on disk, more than the disk cache budget of {self.budget} bytes"
            )
        deadline = time.monotonic() + ROOM_WAIT_S
        with self._lock:
            while self._bytes - held + total > self.budget:
                # Never evict a folder a load reads, or a name another thread is materializing; our own
                # old copy is fair game.
                victim = next(
                    (
                        n
                        for n in self._entries
                        if n not in self._pins and (n == name or n not in self._name_locks)
                    ),
                    None,
                )
                if victim is not None:
                    self._drop(victim)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SourceUnavailable(
                        f"disk cache is full: artifact '{name}' needs {total} bytes and models being loaded "
                        f"hold {self._bytes - held} of {self.budget} bytes"
                    )
                # What loads in flight hold comes back when they end. A waiting load holds nothing, so
                # no two loads can wait for each other.
                self._bytes -= held
                held = 0
                self._room.wait(left)
            self._bytes += total - held
        return total

    def _touch(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def _drop(self, name: str) -> None:
        # Deleting while holding the lock keeps the byte count honest about what is on disk.
        entry = self._entries.pop(name, None)
        if entry is not None:
            shutil.rmtree(self.root / entry.folder, ignore_errors=True)
            self._bytes -= entry.size
            self._room.notify_all()

    @contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        """Serialize work on one name; locks live only while some thread uses them."""
        with self._lock:
            lock, users = self._name_locks.get(name, (threading.Lock(), 0))
            self._name_locks[name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._name_locks.pop(name)
                if users > 1:
                    self._name_locks[name] = (lock, users - 1)


def _folder_name(name: str) -> str:
    """A unique, filesystem-safe folder name that still shows which model it holds."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name.removesuffix(".tar.gz"))[-60:]
    return f"{digest}-{uuid.uuid4().hex[:8]}-{readable}"
