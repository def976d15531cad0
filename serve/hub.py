"""What the serving processes of one server share, kept in the supervisor: they answer as one server.

Workers (serve/peers.py) call the hub over a Unix socket (multiprocessing.managers), never on a hit's
path. It holds:

- the contract's registry: which models are loaded, from which url, at what size, in LRU order; 409
  and 507 are decided here, once, whichever worker a request reached;
- events: numbered broadcasts (drop a model, report your numbers) that every live worker applies and
  acknowledges, so a DELETE returns once no process serves the model and a scrape sees every process;
- in local-endpoint mode, the disk cache and the compiler: an artifact is fetched, unpacked and compiled
  once for all workers, and the compiled form every worker reads is one file (one page-cache copy).

A worker that dies loses nothing here: its pins and its unfinished claims are released, and its
replacement starts empty and loads lazily what the registry says is loaded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

from serve.cache import AlreadyLoaded, DoesNotFit
from serve.diskcache import DiskCache
from serve.source import Version

# How long a claim on a model another worker is loading waits for that load, at most per round.
JOIN_WAIT_S = 5.0


@dataclass
class _Registration:
    url: str
    size: int
    loading: bool
    worker: int
    loaded_at: float


class Hub:
    def __init__(
        self,
        *,
        budget: int,
        max_models: int | None,
        eviction: str,
        disk: DiskCache | None = None,
        compiler: Callable[[Path, Path], None] | None = None,
        compiled: Callable[[Path, Path], bool] | None = None,
    ) -> None:
        self._budget = budget
        self._max_models = max_models
        self._eviction = eviction
        self._disk = disk
        self._compiler = compiler
        self._compiled = compiled  # whether a folder holds a current compiled form of a model file
        self._changed = threading.Condition()  # guards everything below
        self._seq = 0
        self._events: list[tuple[int, str, Any]] = []  # not yet applied by every live worker
        self._acked: dict[int, int] = {}  # live worker -> the last event it applied
        self._payloads: dict[int, dict[int, Any]] = {}  # event -> worker -> its answer
        self._models: OrderedDict[str, _Registration] = OrderedDict()  # least recently used first
        self._used = 0
        self._pins: dict[int, Counter[str]] = {}  # worker -> names whose folders it reads
        self._compiling: dict[str, tuple[threading.Lock, int]] = {}  # folder -> (lock, users)

    # --- workers -------------------------------------------------------------------------------
    def join(self, worker: int) -> int:
        """A worker starts (or restarts, empty): it needs none of the events so far."""
        with self._changed:
            self._acked[worker] = self._seq
            self._pins[worker] = Counter()
            return self._seq

    def leave(self, worker: int) -> None:
        """A worker died: what it held is given back, what it was loading is not loaded."""
        with self._changed:
            self._acked.pop(worker, None)
            pins = self._pins.pop(worker, Counter())
            for name, reg in list(self._models.items()):
                if reg.loading and reg.worker == worker:
                    self._unregister(name)
            self._trim()
            self._changed.notify_all()
        if self._disk is not None:
            for name, count in pins.items():
                for _ in range(count):
                    self._disk.unpin(name)

    def workers(self) -> int:
        with self._changed:
            return len(self._acked)

    # --- events --------------------------------------------------------------------------------
    def broadcast(self, kind: str, arg: Any) -> int:
        with self._changed:
            return self._broadcast(kind, arg)

    def _broadcast(self, kind: str, arg: Any) -> int:
        self._seq += 1
        self._events.append((self._seq, kind, arg))
        self._payloads[self._seq] = {}
        self._changed.notify_all()
        return self._seq

    def wait_events(self, worker: int, since: int, timeout: float) -> list[tuple[int, str, Any]]:
        """The events after `since`, waiting up to `timeout` for one."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > since or worker not in self._acked, timeout)
            return [event for event in self._events if event[0] > since]

    def ack(self, worker: int, upto: int, payloads: dict[int, Any]) -> None:
        with self._changed:
            if worker not in self._acked:
                return  # declared dead meanwhile: its answers no longer count
            self._acked[worker] = max(self._acked[worker], upto)
            for seq, payload in payloads.items():
                if seq in self._payloads:
                    self._payloads[seq][worker] = payload
            self._trim()
            self._changed.notify_all()

    def collect(self, seq: int, timeout: float) -> list[Any]:
        """Every live worker's answer to event `seq`, once all have applied it; TimeoutError if one
        has not within `timeout` (it is busy past any request's timeout, or stuck)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            try:
                while any(acked < seq for acked in self._acked.values()):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"a worker did not answer within {timeout:g} s")
                    self._changed.wait(left)
                return [self._payloads.get(seq, {}).get(w) for w in sorted(self._acked)]
            finally:
                self._payloads.pop(seq, None)

    def _trim(self) -> None:
        done = min(self._acked.values(), default=self._seq)
        self._events = [event for event in self._events if event[0] > done]

    # --- the contract's registry ---------------------------------------------------------------
    def claim(self, worker: int, name: str, url: str, estimate: int) -> bool:
        """True: the caller loads `name` and then commits or abandons it. False: another worker is
        loading it from this url; wait_loaded() says how that ends."""
        with self._changed:
            reg = self._models.get(name)
            if reg is not None:
                if reg.loading and reg.url == url:
                    return False
                if reg.loading:
                    raise AlreadyLoaded(f"model {name!r} is already being loaded from {reg.url}")
                raise AlreadyLoaded(f"model {name!r} is already loaded")
            self._make_room(max(estimate, 1))
            self._models[name] = _Registration(url, max(estimate, 1), True, worker, time.time())
            self._used += max(estimate, 1)
            return True

    def _make_room(self, need: int) -> None:
        if need > self._budget:
            raise DoesNotFit(f"the model needs about {need} bytes; the whole budget is {self._budget}")
        while True:
            full = self._used + need > self._budget
            too_many = self._max_models is not None and len(self._models) + 1 > self._max_models
            if not (full or too_many):
                return
            victim = next((n for n, r in self._models.items() if not r.loading), None)
            if self._eviction == "reject" or victim is None:
                raise DoesNotFit.full(self._used, self._budget, len(self._models), self._max_models, "loaded")
            self._unregister(victim)
            self._broadcast("drop", victim)

    def wait_loaded(self, name: str, url: str) -> int | None:
        """The size of `name` once the worker loading it from `url` is done; None if that load failed
        (or is taking longer than a round), when the caller claims again."""
        with self._changed:
            self._changed.wait_for(
                lambda: (reg := self._models.get(name)) is None or reg.url != url or not reg.loading,
                JOIN_WAIT_S,
            )
            reg = self._models.get(name)
            return reg.size if reg is not None and reg.url == url and not reg.loading else None

    def commit(self, name: str, size: int) -> None:
        with self._changed:
            reg = self._models[name]
            self._used += size - reg.size
            reg.size, reg.loading, reg.loaded_at = size, False, time.time()
            self._changed.notify_all()

    def abandon(self, name: str) -> None:
        with self._changed:
            if name in self._models and self._models[name].loading:
                self._unregister(name)
            self._changed.notify_all()

    def _unregister(self, name: str) -> None:
        self._used -= self._models.pop(name).size

    def drop(self, name: str) -> tuple[int, bool]:
        """Unregister `name` (if it is loaded) and tell every worker to drop its copy: (the event to
        collect, whether it was registered)."""
        with self._changed:
            reg = self._models.get(name)
            registered = reg is not None and not reg.loading
            if registered:
                self._unregister(name)
            return self._broadcast("drop", name), registered

    def lookup(self, name: str) -> str | None:
        """The url of a loaded model, None if it is not (or still loading)."""
        with self._changed:
            reg = self._models.get(name)
            return reg.url if reg is not None and not reg.loading else None

    def registered(self) -> list[tuple[str, str]]:
        with self._changed:
            return sorted((n, r.url) for n, r in self._models.items() if not r.loading)

    def describe(self, name: str) -> dict[str, Any] | None:
        with self._changed:
            reg = self._models.get(name)
            if reg is None or reg.loading:
                return None
            return {"modelName": name, "modelUrl": reg.url, "sizeBytes": reg.size, "loadedAt": reg.loaded_at}

    def totals(self) -> tuple[int, int]:
        """(loaded models, their bytes)."""
        with self._changed:
            return sum(not r.loading for r in self._models.values()), self._used

    def touch(self, names: list[str]) -> None:
        """Models invoked (contract mode) or read from the disk cache without the hub (local endpoint)
        since a worker last said: the registry's and the disk cache's LRU order, a fraction of a second
        late."""
        with self._changed:
            for name in names:
                if name in self._models:
                    self._models.move_to_end(name)
        if self._disk is not None:
            self._disk.touch(names)

    # --- the disk cache and the compiler (local-endpoint mode) ---------------------------------
    def materialize(self, worker: int, name: str) -> tuple[str, Version]:
        """The artifact's folder, pinned for `worker` until it unpins it (or dies)."""
        assert self._disk is not None
        folder, version = self._disk.materialize(name, pin=True)
        self._pinned(worker, name, 1)
        return str(folder), version

    def unpin(self, worker: int, name: str) -> None:
        assert self._disk is not None
        if self._pinned(worker, name, -1):
            self._disk.unpin(name)

    def _pinned(self, worker: int, name: str, change: int) -> bool:
        """Count a pin of a live worker; False if the worker is gone (leave() gave its pins back)."""
        with self._changed:
            pins = self._pins.get(worker)
            if pins is None:
                if change > 0:  # pinned for a worker declared dead meanwhile
                    assert self._disk is not None
                    self._disk.unpin(name)
                return False
            pins[name] += change
            if pins[name] <= 0:
                del pins[name]
            return True

    def disk_used(self) -> int:
        return self._disk.used_bytes() if self._disk is not None else 0

    def compile(self, folder: str, model_file: str) -> None:
        """Write the compiled form; workers asking for one folder at once wait for one compile."""
        assert self._compiler is not None and self._compiled is not None
        with self._changed:
            lock, users = self._compiling.get(folder, (threading.Lock(), 0))
            self._compiling[folder] = (lock, users + 1)
        try:
            with lock:
                if not self._compiled(Path(folder), Path(model_file)):
                    self._compiler(Path(folder), Path(model_file))
        finally:
            with self._changed:
                lock, users = self._compiling.pop(folder)
                if users > 1:
                    self._compiling[folder] = (lock, users - 1)


class _Manager(BaseManager):
    pass


def serve(hub: Hub, address: str, authkey: bytes) -> Callable[[], None]:
    """Answer workers' calls on `address`, from threads of this (the supervisor's) process; returns
    what stops listening (and removes the socket), once no worker is left to call."""
    _Manager.register("hub", callable=lambda: hub)
    server = _Manager(address=address, authkey=authkey).get_server()
    threading.Thread(target=server.serve_forever, daemon=True, name="hub").start()
    return server.listener.close


def connect(address: str, authkey: bytes) -> Any:
    """A proxy of the hub; each thread that calls it gets a connection of its own."""
    _Manager.register("hub")
    manager = _Manager(address=address, authkey=authkey)
    manager.connect()
    return manager.hub()  # type: ignore[attr-defined]
