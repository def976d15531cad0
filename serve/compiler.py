"""Models compiled in processes of their own, so that the serving process's interpreter stays free.

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
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

from handler import compiled
from handler.errors import HandlerError, ModelLoadError
from handler.forest import ModelLimits
from serve import compiler_process
from serve.compiler_process import CompilerProcess, default_processes
from serve.config import ServerConfig

# A city model compiles in a few milliseconds: a process on one compile for this long is on slow work, and
# a compile waiting behind only such processes gets one of its own.
GROW_AFTER_S = 0.1
# Processes beyond the ones kept warm exit after this long without work.
RETIRE_AFTER_S = 30.0


class CompilerCrashed(HandlerError):
    status = 503  # the server's trouble (the process was killed, memory ran out): a retry may succeed


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
        self._idle: list[CompilerProcess] = []  # guarded by _ready; most recently used last
        # Guarded by _ready: when each busy process started its compile (inf: still starting up).
        self._busy: dict[CompilerProcess, float] = {}
        self._count = 0  # processes alive, busy or idle
        self._cores = os.cpu_count() or 1
        self._closed = False
        # Started now (or adopted from `mme serve`'s start), so the first cold load does not also wait for a
        # process to import XGBoost.
        with self._ready:
            self._idle = compiler_process.take(self._warm)
            self._count = len(self._idle)

    def __call__(self, folder: Path, model_file: Path) -> None:
        """Write the compiled form of folder/model_file (ModelLoadError if it is not a model)."""
        process = self._acquire()
        try:
            error = process.run(
                (folder, model_file, self._options), self._deadline, lambda: self._started(process)
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

    @classmethod
    def of(cls, config: ServerConfig) -> Compiler:
        """The server's compiler, with its configured options and bounds."""
        return cls(
            allow_pickle=config.allow_pickle,
            limits=config.model_limits,
            deadline=config.load_timeout,
            max_processes=config.max_loads,
        )

    def _acquire(self) -> CompilerProcess:
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
            process = CompilerProcess()
        except BaseException:
            self._forget()
            raise
        with self._ready:
            self._busy[process] = math.inf
        return process

    def _started(self, process: CompilerProcess) -> None:
        with self._ready:
            if process in self._busy:
                self._busy[process] = time.monotonic()

    def _release(self, process: CompilerProcess) -> None:
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

    def _discard(self, process: CompilerProcess) -> None:
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
