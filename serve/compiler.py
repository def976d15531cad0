"""Models compiled in a process of their own, so that the serving process's interpreter stays free.

Compiling a model (reading its file in Python, checking its walker against XGBoost) holds the GIL for
milliseconds; done on a load thread, every hit waits behind it. A compiler process writes the compiled
form into the model's disk cache folder instead, and the server reads it back in a tenth of a
millisecond (handler/compiled.py). A model's own code/inference.py never runs there: compile_model
reads only the model file.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from handler.errors import HandlerError
from handler.forest import ModelLimits
from handler.model import compile_model

# The lowest CPU priority: where cores are few, the scheduler runs the serving process first and
# compiles in the time it leaves, so hits do not queue behind loads for the CPU either.
COMPILER_NICENESS = 19


class CompilerCrashed(HandlerError):
    status = 503  # the server's trouble (the process was killed, memory ran out): a retry may succeed


def default_processes() -> int:
    # Half the cores: the serving process and its clients need the rest.
    return max(1, (os.cpu_count() or 2) // 2)


class Compiler:
    def __init__(self, *, allow_pickle: bool, limits: ModelLimits, processes: int | None = None) -> None:
        self._options = {"allow_pickle": allow_pickle, "limits": limits}
        self._processes = processes or default_processes()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        # Started now, so the first cold load does not also wait for a process to import XGBoost.
        self._current_pool().submit(int)

    def __call__(self, folder: Path, model_file: Path) -> None:
        """Write the compiled form of folder/model_file (ModelLoadError if it is not a model)."""
        pool = self._current_pool()
        try:
            pool.submit(compile_model, folder, model_file, **self._options).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # a fresh one for the next load
            raise CompilerCrashed(f"the process compiling {model_file.name} died; retry") from None

    def _current_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn: forking a process that runs threads and an event loop is not safe.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self._processes, mp_context=context, initializer=_background)
            return self._pool

    def close(self) -> None:
        """Stop the compiler processes (they also stop with the server)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _background() -> None:
    os.nice(COMPILER_NICENESS)
