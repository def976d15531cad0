"""A worker's side of the hub (serve/hub.py): its calls, and the thread that applies what is broadcast.

Every hub call blocks on a socket, so the event loop makes them on a pool of its own; none is on a
hit's path. The watcher thread long-polls the hub for events, runs each on the event loop (drop a
model, report numbers), and acknowledges it, passing on the names invoked since its last round so the
registry's LRU order follows the traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.hub import connect
from serve.source import ModelSource, SourceError, Version

log = logging.getLogger("mme")

# A watcher round: how late, at most, the registry hears which models were used.
WATCH_S = 0.5
# Hub calls in flight at once from one worker (a DELETE waits in one until every worker drained).
CALL_THREADS = 16
# Disk-cache folders a worker remembers for re-misses without the hub (~300 bytes each: ~5 MiB).
KNOWN_FOLDERS = 16384

OnEvent = Callable[[str, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Address:
    """Where a worker finds its hub, and which worker it is; passed to each worker process."""

    path: str
    authkey: bytes
    worker: int
    workers: int


class Peers:
    def __init__(self, address: Address) -> None:
        self.address = address
        self.worker = address.worker
        self.workers = address.workers
        self.hub = connect(address.path, address.authkey)
        self.touched: set[str] = set()  # models invoked since the watcher last told the hub
        self._pool = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="hub")

    async def call(self, method: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, getattr(self.hub, method), *args)

    async def gather(self, kind: str, *args: Any, timeout: float = 10.0) -> list[Any]:
        """Every worker's answer to a report of `kind` (see App.on_peer_event)."""
        seq = await self.call("broadcast", "report", (kind, *args))
        return await self.call("collect", seq, timeout)

    def start(self, loop: asyncio.AbstractEventLoop, on_event: OnEvent) -> None:
        since = self.hub.join(self.worker)
        threading.Thread(target=self._watch, args=(loop, on_event, since), daemon=True, name="peers").start()

    def _watch(self, loop: asyncio.AbstractEventLoop, on_event: OnEvent, since: int) -> None:
        try:
            while True:
                events = self.hub.wait_events(self.worker, since, WATCH_S)
                answers = {}
                for seq, kind, arg in events:
                    answers[seq] = asyncio.run_coroutine_threadsafe(on_event(kind, arg), loop).result()
                    since = seq
                if events:
                    self.hub.ack(self.worker, since, answers)
                if self.touched:
                    names, self.touched = self.touched, set()
                    self.hub.touch(sorted(names))
        except (EOFError, OSError) as exc:
            # The supervisor is gone: a worker on its own would answer as a different server. Drain.
            log.error("worker %d lost its supervisor (%s): stopping", self.worker, exc)
            os.kill(os.getpid(), signal.SIGTERM)
        except RuntimeError:
            pass  # the event loop stopped: the worker is exiting

    def compile(self, folder: Path, model_file: Path) -> None:
        """load_model's compiler: the hub's, so one folder is compiled once whichever worker asks."""
        self.hub.compile(str(folder), str(model_file))


class RemoteDisk:
    """The hub's disk cache, as LocalEndpoint and the metrics use a DiskCache.

    A re-miss is on the event loop: asking the hub there would stall every request behind a round trip
    to another process. So the worker remembers the folders it was handed (at most KNOWN_FOLDERS) and
    reads one again without the hub while its artifact's version is unchanged, unpinned: a compiled form,
    once mapped, stays valid whatever the hub evicts, and a folder evicted before that reads as absent (the
    load then goes to a thread and the hub). Folder names are never reused. Those reads reach the hub's
    disk LRU order as the watcher's touches, a fraction of a second late.
    """

    def __init__(self, peers: Peers, budget: int, source: ModelSource) -> None:
        self._peers = peers
        self._source = source
        self.budget = budget
        self._lock = threading.Lock()  # loads learn folders on their threads
        self._known: OrderedDict[str, tuple[str, Version]] = OrderedDict()  # least recently used first

    @contextmanager
    def use(self, name: str) -> Iterator[tuple[Path, Version]]:
        hub, worker = self._peers.hub, self._peers.worker
        folder, version = hub.materialize(worker, name)
        self._remember(name, folder, version)
        try:
            yield Path(folder), version
        finally:
            hub.unpin(worker, name)

    def _remember(self, name: str, folder: str, version: Version) -> None:
        with self._lock:
            self._known[name] = (folder, version)
            self._known.move_to_end(name)
            if len(self._known) > KNOWN_FOLDERS:
                self._known.popitem(last=False)

    def pin_if_current(self, name: str) -> tuple[Path, Version, tuple[str, ...] | None] | None:
        known = self._known.get(name)
        if known is None or not self._source.local:
            return None
        try:
            current = self._source.version(name)
        except SourceError:
            return None
        if current != known[1]:
            return None
        self._peers.touched.add(name)
        return Path(known[0]), known[1], None  # the hub's listing stays with the hub: the loader reads it

    def unpin(self, name: str) -> None:
        """Nothing to give back: pin_if_current's reads hold no pin (use() gives its own back)."""

    def used_bytes(self) -> int:
        return self._peers.hub.disk_used()
