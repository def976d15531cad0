"""Servers under test, each a subprocess in its own process group: start, wait for /ping, measure, kill.

MMS forks a Java frontend and a Python worker per model, so stopping means killing the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench import baseline

# MMS refuses ports above 32767 ("Invalid port number"), so every server gets one below that.
PORT_RANGE = (20000, 32000)


def free_port(skip: int = 0) -> int:
    """A free port; `skip` passes over that many free ones first (a server that needs two)."""
    for port in range(PORT_RANGE[0] + os.getpid() % 5000, PORT_RANGE[1]):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if skip == 0:
            return port
        skip -= 1
    raise RuntimeError("no free port below 32767")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    ready: str = "/ping"  # the path that answers 200 once the server serves

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def processes(self) -> list[psutil.Process]:
        """Every process of the server's session: MMS's Java frontend is reparented, not a child."""
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid:
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def pss_bytes(self) -> int:
        """Proportional set size of every process of the server: shared pages counted once in all."""
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def cpu_seconds(self) -> float:
        """User and system CPU time of every process of the server so far (its compiler processes too):
        per request, what an instance's cores are divided by."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
        return total

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}{self.ready}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        # Workers and the Java frontend may outlive the leader: the group goes regardless.
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def spawn(
    name: str, cmd: Sequence[str], log: Path, env: dict[str, str], cwd: Path, port: int, ready: str = "/ping"
) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    server = Server(name, proc, port, log, ready)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_ours(work: Path, args: Sequence[str], name: str = "ours") -> Server:
    port = free_port()
    mme = Path(sys.executable).parent / "mme"
    # One serving process unless `args` asks for more (the last --workers wins): the rows are per process.
    cmd = [str(mme), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
           "--workers", "1", *args]  # fmt: skip
    return spawn(name, cmd, work / "logs" / f"{name}.log", dict(os.environ), work, port)


def start_mms(work: Path, python: Path, name: str = "mms") -> Server:
    """MMS + sagemaker-inference as a BYOC multi-model container runs them, logs and config under `work`."""
    port = free_port()
    home = work / "mms"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    # A killed MMS leaves its pid file, and a reused or unreaped pid then reads as "already running".
    (home / "tmp" / ".model_server.pid").unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_BIND_TO_PORT=str(port),
        PATH=f"{python.parent}:{env.get('PATH', '')}",
        PYTHONPATH=str(baseline.HERE),
        LOG_LOCATION=str(home / "logs"),
        METRICS_LOCATION=str(home / "logs"),
        TMPDIR=str(home / "tmp"),  # MMS keeps its pid file there
    )
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(python), str(baseline.LAUNCHER), str(home)]
    return spawn(name, cmd, work / "logs" / f"{name}.log", env, home, port)
