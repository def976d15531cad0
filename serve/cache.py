"""Resident models: a byte budget, LRU order, one load in flight per model, and leases for in-flight calls.

Everything here runs on the event loop thread, so the bookkeeping needs no locks; only the loader
itself runs in a thread pool. Knows nothing of HTTP, of artifacts or of XGBoost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import time
import traceback
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor
from dataclasses import dataclass, field
from typing import Any

# Per-model latency percentiles come from this many most recent invocations: a fixed ring, so the
# cost per call is one store and the memory per model is 1 KiB.
LATENCY_RING = 128


class CacheError(Exception):
    status = 500


class NotLoaded(CacheError):
    status = 404


class AlreadyLoaded(CacheError):
    status = 409


class DoesNotFit(CacheError):
    status = 507

    @classmethod
    def full(cls, used: int, budget: int, models: int, max_models: int | None, state: str) -> DoesNotFit:
        return cls(
            f"no room for another model: {used} of {budget} bytes and {models} models {state}"
            + (f" (at most {max_models})" if max_models else "")
        )


class Lease:
    """A context manager of its own rather than @contextmanager: it is on every invocation's path,
    where a generator-based one cost several microseconds."""

    __slots__ = ("_entry", "_started")

    def __init__(self, entry: Entry) -> None:
        self._entry = entry
        self._started = 0.0

    def __enter__(self) -> Entry:
        entry = self._entry
        self._started = time.perf_counter()
        entry.last_used = time.time()
        entry.inflight += 1
        return entry

    def __exit__(self, *_: object) -> None:
        entry = self._entry
        entry.record(time.perf_counter() - self._started)
        entry.inflight -= 1
        entry.invocations += 1
        if entry.inflight == 0 and entry.drained is not None:
            entry.drained.set()


@dataclass(eq=False)
class Entry:
    name: str
    url: str
    model: Any
    size: int
    version: Any = None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    checked_at: float = field(default_factory=time.monotonic)
    invocations: int = 0
    misses: int = 0  # invocations that waited for this copy's load
    inflight: int = 0
    drained: asyncio.Event | None = None
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def record(self, seconds: float) -> None:
        if len(self.latencies) < LATENCY_RING:
            self.latencies.append(seconds)
        else:
            self.latencies[self.invocations % LATENCY_RING] = seconds

    def p50(self) -> float | None:
        if not self.latencies:
            return None
        return sorted(self.latencies)[len(self.latencies) // 2]

    def describe(self) -> dict[str, Any]:
        p50 = self.p50()
        return {
            "modelName": self.name,
            "modelUrl": self.url,
            "sizeBytes": self.size,
            "loadedAt": self.loaded_at,
            "lastUsed": self.last_used,
            "invocations": self.invocations,
            "misses": self.misses,
            "hitRatio": 1 - self.misses / self.invocations if self.invocations else None,
            "p50Ms": None if p50 is None else p50 * 1000,
            "inFlight": self.inflight,
        }


@dataclass(frozen=True)
class Loaded:
    """What a loader hands back: the model, its measured size, and the artifact version it came from."""

    model: Any
    size: int
    version: Any = None
    fetch_seconds: float | None = None  # of the load, the time spent getting the artifact onto disk


Loader = Callable[[], Loaded]
# A load done on the event loop when it needs no I/O wait and a fraction of a millisecond; None if not.
QuickLoader = Callable[[], Loaded | None]
# name, event ("load", "unload", "evict", "reload", "load_failed"), details
Listener = Callable[[str, str, dict[str, Any]], None]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


# Trimming walks the whole heap; under constant eviction once a second is enough to keep RSS honest.
TRIM_EVERY_S = 1.0


def _run_releasing(loader: Loader) -> Loaded:
    """Run a loader; a failure leaves no frame of the load behind.

    A failing load's traceback holds the frames that read the artifact (hundreds of MiB for a large
    file), and the awaiting coroutine's frame joins it in a reference cycle through its task, so the
    bytes stay until the cyclic collector happens to run. Clearing the frames frees them at once.
    """
    try:
        return loader()
    except BaseException as exc:
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            traceback.clear_frames(link.__traceback__)
            link.__traceback__ = None
            link = link.__cause__ or link.__context__
        raise


def _release_free_memory() -> None:
    # glibc keeps freed model memory in its arenas; without trimming, RSS never goes down after unloads.
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class ModelCache:
    def __init__(
        self,
        budget: int,
        executor: Executor,
        *,
        max_models: int | None = None,
        eviction: str = "lru",
    ) -> None:
        if eviction not in {"lru", "reject"}:
            raise ValueError(f"unknown eviction policy {eviction!r}")
        self.budget = budget
        self.max_models = max_models
        self.eviction = eviction
        self.listeners: list[Listener] = []
        self._executor = executor
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Future[Entry]] = {}
        self._loading_urls: dict[str, str] = {}
        self._running: set[str] = set()  # loads whose loader runs (and holds a reservation)
        self._room = asyncio.Event()  # set (and replaced) whenever room may have been made
        self._reserved = 0
        self._used = 0
        self._trim_scheduled = False

    # --- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def entries(self) -> list[Entry]:
        """Most recently used first."""
        return list(reversed(self._entries.values()))

    def sorted_names(self) -> list[str]:
        return sorted(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._used

    def is_loading(self, name: str) -> bool:
        return name in self._loading

    # --- using ---------------------------------------------------------------------------------
    def lease(self, name: str, *, miss: bool = False) -> Lease:
        """Hold a model for one invocation (`with cache.lease(name) as entry:`); an unload waits until
        every lease is returned.

        `miss` says the invocation had to wait for this load; the lease's duration is recorded as the
        invocation's latency on the model.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise NotLoaded(f"model {name!r} is not loaded")
        self._entries.move_to_end(name)
        if miss:
            entry.misses += 1
        return Lease(entry)

    # --- loading -------------------------------------------------------------------------------
    async def load(
        self,
        name: str,
        url: str,
        loader: Loader,
        *,
        estimate: int,
        replace: bool = False,
        quick: QuickLoader | None = None,
    ) -> Entry:
        """Load `name` once, however many callers ask at the same time; they all get the one outcome.

        With replace=True a resident model is swapped for the new load (its in-flight calls finish
        on the old one); otherwise a resident model is AlreadyLoaded. `quick` is tried first, on the
        event loop; `loader` runs on a thread only when it answers None.
        """
        task = self._loading.get(name)
        if task is not None and self._loading_urls[name] != url:
            # Callers asking for one url share its load; another url for the name is another model.
            raise AlreadyLoaded(f"model {name!r} is already being loaded from {self._loading_urls[name]}")
        if task is None:
            if name in self._entries and not replace:
                raise AlreadyLoaded(f"model {name!r} is already loaded")
            # A task of its own: a caller that gives up waiting (a timeout, a disconnect) never
            # cancels the load that other callers, or its own retry, are waiting for.
            task = asyncio.ensure_future(self._load(name, url, loader, estimate, quick))
            self._loading[name] = task
            self._loading_urls[name] = url
            task.add_done_callback(lambda done: self._load_done(name, done))
        return await asyncio.shield(task)

    async def settle(self, name: str) -> None:
        """Wait for a load of `name` in flight to end, however it ends."""
        task = self._loading.get(name)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    def _load_done(self, name: str, task: asyncio.Future[Entry]) -> None:
        if self._loading.get(name) is task:
            del self._loading[name]
            del self._loading_urls[name]
        self._room_made()
        if not task.cancelled():
            task.exception()  # retrieved here: a load may end with nobody left waiting

    async def _load(
        self, name: str, url: str, loader: Loader, estimate: int, quick: QuickLoader | None
    ) -> Entry:
        estimate = max(estimate, 1)
        previous = self._entries.get(name)
        if estimate > self.budget:
            raise DoesNotFit(
                f"model {name!r} needs about {estimate} bytes; the whole budget is {self.budget}"
            )
        if self.eviction == "reject":
            # SageMaker wants its 507 before any work, to pick what to unload and retry.
            self._make_room(estimate, keep=name)
        # Under LRU nothing is evicted until the new model has loaded: a load that fails (a corrupt
        # artifact, a name that does not exist) must cost no other model its place.
        self._reserved += estimate
        self._running.add(name)
        started = time.monotonic()
        try:
            loaded = quick() if quick is not None else None
            if loaded is None:
                loaded = await asyncio.get_running_loop().run_in_executor(
                    self._executor, _run_releasing, loader
                )
        except BaseException as exc:
            self._emit(name, "load_failed", {"error": str(exc)})
            raise
        finally:
            self._reserved -= estimate
            self._running.discard(name)
            self._room_made()
        if loaded.size > self.budget:
            error = f"model {name!r} takes {loaded.size} bytes; the whole budget is {self.budget}"
            self._emit(name, "load_failed", {"error": error})
            raise DoesNotFit(error)
        await self._wait_for_room(loaded.size, keep=name)
        if previous is not None and self._entries.get(name) is previous:
            self._remove(name)
        entry = Entry(name=name, url=url, model=loaded.model, size=loaded.size, version=loaded.version)
        # A model that may later want more memory than it was loaded with asks first, through on_growth.
        # (getattr, not a runtime-checkable Protocol: isinstance against one costs ~20 µs per load.)
        on_growth = getattr(loaded.model, "on_growth", None)
        if on_growth is not None:
            # A weak reference: the model keeps this callback, which must not keep the model alive.
            reserve = functools.partial(
                self.grow_from_thread, asyncio.get_running_loop(), name, weakref.ref(loaded.model)
            )
            on_growth(reserve)
        self._entries[name] = entry
        self._used += entry.size
        event = "reload" if previous is not None else "load"
        fetch = loaded.fetch_seconds
        seconds = time.monotonic() - started - (fetch or 0.0)
        self._emit(name, event, {"bytes": entry.size, "seconds": seconds, "fetch_seconds": fetch, "url": url})
        return entry

    # --- growing -------------------------------------------------------------------------------
    def grow(self, name: str, model: Any, nbytes: int) -> bool:
        """Count `nbytes` more for the resident `model` if there is room, making it as a load would."""
        entry = self._entries.get(name)
        if entry is None or model is None or entry.model is not model:
            return False  # unloaded, evicted or replaced meanwhile: nothing to grow
        try:
            self._make_room(nbytes, keep=name)
        except DoesNotFit:
            return False
        entry.size += nbytes
        self._used += nbytes
        return True

    def grow_from_thread(
        self, loop: asyncio.AbstractEventLoop, name: str, model: weakref.ref[Any], nbytes: int
    ) -> bool:
        """grow() for a model's own background thread: the bookkeeping lives on the event loop. Called on
        the loop itself (a request that needs more of its model), it is grow() at once."""
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                return self.grow(name, model(), nbytes)

        async def ask() -> bool:
            return self.grow(name, model(), nbytes)

        try:
            return asyncio.run_coroutine_threadsafe(ask(), loop).result(timeout=10)
        except (RuntimeError, TimeoutError, CancelledError):  # the loop has stopped or is stuck: go without
            return False

    async def _wait_for_room(self, need: int, keep: str) -> None:
        """Under LRU, what the budget holds for other loads in flight comes back when they end (as a
        model to evict, or freed): a load that fits the budget on its own waits for that, never fails."""
        while True:
            room = self._room
            try:
                self._make_room(need, keep)
                return
            except DoesNotFit:
                if self.eviction == "reject" or not self._running:
                    raise
            await room.wait()

    def _room_made(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    def _make_room(self, need: int, keep: str) -> None:
        def full() -> str | None:
            """Why there is no room, or None."""
            if self._used + self._reserved + need > self.budget:
                return "memory_budget"
            # This model, the resident ones, and the loads in flight that will want a place too.
            count = len(self._entries) - (keep in self._entries) + 1 + len(self._running - {keep})
            if self.max_models is not None and count > self.max_models:
                return "max_models"
            return None

        while reason := full():
            victim = next((n for n in self._entries if n != keep), None)
            if self.eviction == "reject" or victim is None:
                used = self._used + self._reserved
                raise DoesNotFit.full(used, self.budget, len(self._entries), self.max_models, "resident")
            self._remove(victim)
            self._emit(victim, "evict", {"reason": reason})
            self._trim_soon()

    def _trim_soon(self) -> None:
        """Give evicted models' memory back to the system, at most once a second under churn."""
        if not self._trim_scheduled:
            self._trim_scheduled = True
            asyncio.get_running_loop().call_later(TRIM_EVERY_S, self._trim)

    def _trim(self) -> None:
        self._trim_scheduled = False
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the server is stopping anyway
            asyncio.get_running_loop().run_in_executor(self._executor, _release_free_memory)

    # --- unloading -----------------------------------------------------------------------------
    def _remove(self, name: str) -> Entry:
        entry = self._entries.pop(name)
        self._used -= entry.size
        self._room_made()
        return entry

    async def unload(self, name: str) -> Entry:
        """Forget `name` at once (no new leases), then wait for its in-flight calls before returning."""
        if name not in self._entries:
            raise NotLoaded(f"model {name!r} is not loaded")
        started = time.monotonic()
        entry = self._remove(name)
        if entry.inflight:
            entry.drained = asyncio.Event()
            await entry.drained.wait()
        entry.model = None
        await asyncio.get_running_loop().run_in_executor(self._executor, _release_free_memory)
        self._emit(name, "unload", {"bytes": entry.size, "seconds": time.monotonic() - started})
        return entry

    def _emit(self, name: str, event: str, details: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(name, event, details)
