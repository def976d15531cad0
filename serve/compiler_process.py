"""One compiler process (spawned, niced, a compile at a time) and the ones `mme serve` starts first.

This module imports nothing heavy, so `mme serve` can start its compiler processes before its own
imports (XGBoost and numpy, ~1 s): theirs then run beside the server's, on another core, instead of
after them, and the first load does not wait for a process to be ready. serve/compiler.py adopts them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The lowest CPU priority: where cores are few, the scheduler runs the serving process first and
# compiles in the time it leaves, so hits do not queue behind loads for the CPU either.
COMPILER_NICENESS = 19
READY = "ready"
_STARTED_EARLY: list[CompilerProcess] = []


def default_processes() -> int:
    # Half the cores kept warm: the serving process and its clients need the rest.
    return max(1, (os.cpu_count() or 2) // 2)


class CompilerProcess:
    """One compiler process and the pipe to it."""

    def __init__(self) -> None:
        # spawn: forking a process that runs threads and an event loop is not safe.
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="mme-compiler")
        self.process.start()
        child.close()
        self.idle_since = time.monotonic()
        self.started = False  # the process said it is ready: its imports are done

    def run(
        self, job: tuple[Any, ...], deadline: float, on_start: Callable[[], None]
    ) -> BaseException | None:
        """The job's error, or None; TimeoutError past the deadline, EOFError if the process died.
        `on_start` is called once the process is ready and has the job: its start-up is not the job's."""
        self.conn.send(job)
        if not self.started:
            if not self.conn.poll(deadline):
                raise TimeoutError
            self.conn.recv()  # READY
            self.started = True
        on_start()
        if not self.conn.poll(deadline):
            raise TimeoutError
        return self.conn.recv()

    def stop(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def start_early() -> None:
    """Start the processes a server keeps warm, now: what `mme serve` does before its imports."""
    _STARTED_EARLY.extend(CompilerProcess() for _ in range(default_processes() - len(_STARTED_EARLY)))


def take(count: int) -> list[CompilerProcess]:
    """`count` processes, those started early first; any started early beyond them are stopped."""
    taken = _STARTED_EARLY[:count]
    for extra in _STARTED_EARLY[count:]:
        extra.stop()
    _STARTED_EARLY.clear()
    return taken + [CompilerProcess() for _ in range(count - len(taken))]


def _serve(conn: Connection) -> None:
    os.nice(COMPILER_NICENESS)
    # Imported here, in the child: the parent may start this process before it has imported them.
    from handler.errors import HandlerError
    from handler.model import compile_model
    from serve.compiler import CompilerCrashed

    conn.send(READY)  # imported: what follows a job's arrival is that job's own time
    while True:
        try:
            folder, model_file, options = conn.recv()
        except EOFError:  # the server has gone
            return
        try:
            compile_model(folder, model_file, **options)
        except HandlerError as exc:
            conn.send(exc)
        except Exception as exc:  # a bug of ours: said as the server's trouble, the process lives on
            failure = f"compiling {Path(model_file).name} failed: {type(exc).__name__}: {exc}"
            conn.send(CompilerCrashed(failure))
        else:
            conn.send(None)
