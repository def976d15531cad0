"""`--workers N`: N serving processes on one listening socket, kept alive by this supervisor.

The supervisor binds the socket and hands it to every worker (the kernel spreads connections over the
processes accepting on it), keeps the hub (serve/hub.py) they share, replaces a worker that dies, and
on SIGTERM or SIGINT has every worker drain, as one server would. It serves no request itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from serve import logs
from serve.config import ServerConfig
from serve.hub import Hub, serve
from serve.peers import Address

log = logging.getLogger("mme")

# A worker that dies this soon after its start, this many times in a row, is not worth restarting: the
# server exits 1 rather than spin (a configuration only a worker can reject, memory exhausted at start).
EARLY_DEATH_S = 5.0
EARLY_DEATHS = 5
RESTART_DELAY_S = 0.2
# After the drain timeout, how long workers still get before they are killed.
EXIT_GRACE_S = 5.0


def supervise(config: ServerConfig, sock: socket.socket) -> int:
    state = Path(tempfile.mkdtemp(prefix="mme-hub-"))
    try:
        # The workers' shared disk: the local endpoint's disk cache, or the contract's compiled forms.
        config = replace(config, cache_dir=config.cache_dir or state / "cache")
        hub = _make_hub(config)
        authkey = os.urandom(32)
        path = str(state / "hub.sock")
        stop_hub = serve(hub, path, authkey)
        try:
            return _Supervisor(config, sock, hub, path, authkey).run()
        finally:
            stop_hub()  # before the folder goes: it unlinks its socket, which at exit would be gone
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _make_hub(config: ServerConfig) -> Hub:
    import functools

    from handler import compiled
    from serve.compiler import Compiler
    from serve.endpoint import make_disk

    assert config.cache_dir is not None
    current = functools.partial(
        compiled.is_current, allow_pickle=config.allow_pickle, limits=config.model_limits
    )
    compiler = Compiler.of(config)
    return Hub(
        budget=config.memory_budget,
        max_models=config.max_models,
        eviction=config.eviction,
        disk=make_disk(config, config.cache_dir, compiler) if config.models else None,
        compiler=compiler,
        compiled=current,
    )


class _Supervisor:
    def __init__(
        self, config: ServerConfig, sock: socket.socket, hub: Hub, path: str, authkey: bytes
    ) -> None:
        self.config = config
        self.sock = sock
        self.hub = hub
        self.path = path
        self.authkey = authkey
        self.context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self.processes: dict[int, tuple[BaseProcess, float]] = {}  # worker -> (process, started at)
        self.stopping: str | None = None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for worker in range(self.config.workers):
            self._start(worker)
        early = 0
        while self.stopping is None:
            dead = self._wait(1.0)
            for worker in dead:
                process, started = self.processes.pop(worker)
                self.hub.leave(worker)
                if self.stopping is not None:
                    break
                early = early + 1 if time.monotonic() - started < EARLY_DEATH_S else 0
                logs.event(log, logging.ERROR, "worker_died", worker=worker, pid=process.pid,
                           exitcode=process.exitcode)  # fmt: skip
                if early >= EARLY_DEATHS:
                    log.error("workers keep dying at start: stopping the server")
                    self._stop_all(signal.SIGTERM)
                    self._join_all()
                    return 1
                time.sleep(RESTART_DELAY_S)
                self._start(worker)
        self._stop_all(signal.SIGTERM)
        self._join_all()
        return 0

    def _start(self, worker: int) -> None:
        address = Address(self.path, self.authkey, worker, self.config.workers)
        process = self.context.Process(
            target=_worker_main, args=(self.config, self.sock, address), name=f"mme-worker-{worker}"
        )
        process.start()
        self.processes[worker] = (process, time.monotonic())
        logs.event(log, logging.INFO, "worker_started", worker=worker, pid=process.pid)

    def _wait(self, timeout: float) -> list[int]:
        sentinels = {process.sentinel: worker for worker, (process, _) in self.processes.items()}
        ready = wait(list(sentinels), timeout)
        dead = [sentinels[s] for s in ready]  # type: ignore[index]
        for worker in dead:
            self.processes[worker][0].join()
        return dead

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name
            self._stop_all(signal.SIGTERM)
        elif signum == signal.SIGINT:  # a second Ctrl-C: stop now, as a single process does
            self._stop_all(signal.SIGKILL)

    def _stop_all(self, signum: int) -> None:
        for process, _ in self.processes.values():
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signum)

    def _join_all(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout + EXIT_GRACE_S
        for process, _ in list(self.processes.values()):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()


def _worker_main(config: ServerConfig, sock: socket.socket, address: Address) -> None:
    from serve.commands.serve import serve_socket

    # A group of its own: a terminal's Ctrl-C reaches the supervisor only, which stops each worker once.
    os.setpgrp()
    logs.setup(config.log_format, config.log_level)
    sys.exit(serve_socket(config, sock, address))
