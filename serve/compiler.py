"""Models compiled, and artifacts unpacked, in processes of their own, so that the serving process's
interpreter stays free.

Compiling a model (reading its file in Python, checking its walker against XGBoost) holds the GIL for
milliseconds; done on a load thread, every hit waits behind it. A compiler process writes the compiled
form into the model's disk cache folder instead, and the server reads it back in a tenth of a
millisecond (handler/compiled.py). A model's own code/inference.py never runs there: compile_model
reads only the model file.

A process compiles one model at a time. A compile that finds every process busy waits its turn while
the queue is of fast compiles; once every busy process has been on its compile for longer than a fast one
takes, it starts one more (up to a cap), so a good model never queues behind slow hostile ones. A burst
of fast compiles gets at most a process per core: more would not compile faster, and each takes ~40 MiB.
A compile that outlasts the load deadline has its process killed: the only way to stop work in progress.

Unpacking an untrusted archive (tarfile's Python, checking every member, and decompressing) is the same
kind of work, so the disk cache hands it to these processes too (Compiler.unpack); the books stay with
the server: the process asks for room before it writes, as an unpack there would.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from handler import compiled
from handler.errors import HandlerError, ModelLoadError
from handler.forest import ModelLimits
from handler.model import compile_model
from serve.config import ServerConfig
from serve.source import SourceError, SourceUnavailable
from serve.unpack import STAGING_PREFIX, UnpackLimits, too_slow, unpack

# The lowest CPU priority: where cores are few, the scheduler runs the serving process first and
# compiles in the time it leaves, so hits do not queue behind loads for the CPU either.
COMPILER_NICENESS = 19
# A city model compiles in a few milliseconds: a process on one compile for this long is on slow work, and
# a compile waiting behind only such processes gets one of its own.
GROW_AFTER_S = 0.1
# Processes beyond the ones kept warm exit after this long without work.
RETIRE_AFTER_S = 30.0
READY = "ready"
# How long past an unpack's own deadline (which its process keeps, and says) the server waits before
# killing the process.
UNPACK_GRACE_S = 5.0


class CompilerCrashed(HandlerError):
    status = 503  # the server's trouble (the process was killed, memory ran out): a retry may succeed


def default_processes() -> int:
    # Half the cores kept warm: the serving process and its clients need the rest.
    return max(1, (os.cpu_count() or 2) // 2)


class _Process:
    """One compiler process and the pipe to it."""

    def __init__(self, fork: bool = False) -> None:
        # A fork imports nothing and shares its parent's pages until either writes them, but is only safe
        # from a process that runs no other thread (nor has run XGBoost's OpenMP team): else, spawn.
        context = multiprocessing.get_context("fork" if fork else "spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="mme-compiler")
        self.process.start()
        child.close()
        self.idle_since = time.monotonic()
        self.started = False  # the process said it is ready: its imports are done

    def run(
        self,
        job: tuple[Any, ...],
        deadline: float,
        on_start: Callable[[], None],
        on_size: Callable[[int], None] | None = None,
    ) -> BaseException | None:
        """The job's error, or None; TimeoutError past the deadline, EOFError if the process died.
        `on_start` is called once the process is ready and has the job: its start-up is not the job's.
        An unpack asks on_size(unpacked bytes) before it writes: whatever that raises stops the unpack,
        and is raised once the process has said it stopped."""
        self.conn.send(job)
        if not self.started:
            if not self.conn.poll(deadline):
                raise TimeoutError
            self.conn.recv()  # READY
            self.started = True
        on_start()
        refused: BaseException | None = None
        while True:
            if not self.conn.poll(deadline):
                raise TimeoutError
            message = self.conn.recv()
            if not isinstance(message, _Sized):
                return refused or message
            assert on_size is not None
            try:
                on_size(message.unpacked_bytes)
            except BaseException as exc:
                refused = exc
            self.conn.send(refused is None)

    def stop(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class Compiler:
    def __init__(
        self,
        *,
        allow_pickle: bool,
        limits: ModelLimits,
        deadline: float,
        max_processes: int,
        warm: int | None = None,
    ) -> None:
        self._options = {"allow_pickle": allow_pickle, "limits": limits}
        self._deadline = deadline
        self._max = max(1, max_processes)
        self._warm = min(self._max, warm or default_processes())
        self._ready = threading.Condition()
        self._idle: list[_Process] = []  # guarded by _ready; most recently used last
        # Guarded by _ready: when each busy process started its compile (inf: still starting up).
        self._busy: dict[_Process, float] = {}
        self._count = 0  # processes alive, busy or idle
        self._cores = os.cpu_count() or 1
        self._closed = False
        # Started now, so the first cold load does not also wait for a process to import XGBoost. A server
        # makes its compiler as it starts, before any thread or model: those it forks (see _Process).
        fork = threading.active_count() == 1
        with self._ready:
            for _ in range(self._warm):
                self._idle.append(_Process(fork))
                self._count += 1

    def __call__(self, folder: Path, model_file: Path) -> None:
        """Write the compiled form of folder/model_file (ModelLoadError if it is not a model)."""
        process = self._acquire()
        try:
            error = process.run(
                ("compile", folder, model_file, self._options), self._deadline, lambda: self._started(process)
            )
        except TimeoutError:
            self._discard(process)
            # Killed mid-write, it may have left a temporary file of the compiled form.
            for leftover in folder.glob(f"{compiled.FILE_NAME}.*"):
                leftover.unlink(missing_ok=True)
            raise ModelLoadError(
                f"compiling {model_file.name} took longer than the {self._deadline:g} s a load may take "
                "(--load-timeout)"
            ) from None
        except (EOFError, OSError):
            self._discard(process)
            raise CompilerCrashed(f"the process compiling {model_file.name} died; retry") from None
        self._release(process)
        if error is not None:
            raise error

    def unpack(self, archive: Path, dest: Path, limits: UnpackLimits, reserve: Callable[[int], None]) -> None:
        """serve.unpack.unpack in a compiler process: an untrusted archive's checks and decompression hold
        that process's interpreter, not the server's (an Unpacker, for the disk cache)."""
        staging = dest.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        process = self._acquire()
        try:
            # Past the unpack's own deadline, which the process keeps and says as the artifact's fault.
            error = process.run(
                ("unpack", archive, dest, limits, staging),
                limits.timeout + UNPACK_GRACE_S,
                lambda: self._started(process),
                reserve,
            )
        except TimeoutError:
            self._discard(process)
            _remove_folders(staging, dest)
            raise too_slow(limits.timeout) from None
        except (EOFError, OSError):
            self._discard(process)
            _remove_folders(staging, dest)
            raise SourceUnavailable(f"the process unpacking {archive.name} died; retry") from None
        self._release(process)
        if error is not None:
            raise error

    @classmethod
    def of(cls, config: ServerConfig) -> Compiler:
        """The server's compiler, with its configured options and bounds."""
        return cls(
            allow_pickle=config.allow_pickle,
            limits=config.model_limits,
            deadline=config.load_timeout,
            max_processes=config.max_loads,
        )

    def _acquire(self) -> _Process:
        grow_at = time.monotonic() + GROW_AFTER_S
        with self._ready:
            while True:
                if self._closed:
                    raise CompilerCrashed("the server is stopping; retry")
                if self._idle:
                    process = self._idle.pop()
                    self._busy[process] = math.inf
                    return process
                now = time.monotonic()
                # Until every busy process has been on its compile for GROW_AFTER_S (then they are on slow
                # work), or, below a process per core, until this compile has waited that long. One still
                # starting up is looked at again after GROW_AFTER_S.
                slow_in = max(
                    (min(started + GROW_AFTER_S - now, GROW_AFTER_S) for started in self._busy.values()),
                    default=0.0,
                )
                wait = min(slow_in, grow_at - now) if self._count < self._cores else slow_in
                if wait <= 0 and self._count < self._max:
                    self._count += 1
                    break
                self._ready.wait(wait if wait > 0 else None)
        try:
            process = _Process()
        except BaseException:
            self._forget()
            raise
        with self._ready:
            self._busy[process] = math.inf
        return process

    def _started(self, process: _Process) -> None:
        with self._ready:
            if process in self._busy:
                self._busy[process] = time.monotonic()

    def _release(self, process: _Process) -> None:
        now = time.monotonic()
        with self._ready:
            self._busy.pop(process, None)
            if self._closed:
                retired = [process]
            else:
                process.idle_since = now
                self._idle.append(process)
                extra = self._idle[: max(0, len(self._idle) - self._warm)]
                retired = [p for p in extra if now - p.idle_since > RETIRE_AFTER_S]
                self._idle = [p for p in self._idle if p not in retired]
                self._ready.notify()
            self._count -= len(retired)
        for old in retired:
            old.stop()

    def _discard(self, process: _Process) -> None:
        with self._ready:
            self._busy.pop(process, None)
        process.stop()
        self._forget()

    def _forget(self) -> None:
        with self._ready:
            self._count -= 1
            self._ready.notify()  # a waiting compile may start a process in its place

    def close(self) -> None:
        """Stop the compiler processes (they also stop with the server)."""
        with self._ready:
            self._closed = True
            idle, self._idle = self._idle, []
            self._ready.notify_all()
        for process in idle:
            process.stop()


def _serve(conn: Connection) -> None:
    os.nice(COMPILER_NICENESS)
    # A forked process holds every descriptor of its parent: the listening socket among them, which
    # would keep the port accepting after the server closed it. Only the pipe is this process's (a
    # spawned one has only that already).
    os.closerange(3, conn.fileno())
    os.closerange(conn.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
    conn.send(READY)  # imported: what follows a job's arrival is that job's own time
    while True:
        try:
            kind, *job = conn.recv()
        except EOFError:  # the server has gone
            return
        try:
            if kind == "compile":
                folder, model_file, options = job
                compile_model(folder, model_file, **options)
            else:
                _unpack(conn, *job)
        except (HandlerError, SourceError) as exc:
            conn.send(exc)
        except OSError as exc:  # our disk's (unpack maps the artifact's own errors): the server's trouble
            conn.send(OSError(exc.errno, exc.strerror))
        except Exception as exc:  # a bug of ours: said as the server's trouble, the process lives on
            failure = f"{kind} of {Path(job[0]).name} failed: {type(exc).__name__}: {exc}"
            conn.send(CompilerCrashed(failure))
        else:
            conn.send(None)


class _Sized:
    """An unpack's question to the server: room for this many unpacked bytes? (answered True or False)"""

    def __init__(self, unpacked_bytes: int) -> None:
        self.unpacked_bytes = unpacked_bytes


class _Refused(Exception):
    """The server had no room for the unpack: it raises its own error, this only stops the work here."""


def _unpack(conn: Connection, archive: Path, dest: Path, limits: UnpackLimits, staging: Path) -> None:
    def ask(unpacked_bytes: int) -> None:
        conn.send(_Sized(unpacked_bytes))
        if not conn.recv():
            raise _Refused

    with contextlib.suppress(_Refused):  # the server raises its own reason, having said no
        unpack(archive, dest, limits, ask, staging)


def _remove_folders(*folders: Path) -> None:
    """What a killed unpack may have left: its staging folder, or its finished folder not yet handed over."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
