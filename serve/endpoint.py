"""The local endpoint: what SageMaker does in front of the container, done by the server itself.

A TargetModel that is not resident is fetched from the model source into the disk cache, unpacked,
and loaded through the model cache (one load in flight per name); a resident one is re-checked
against its artifact's version every `revalidate_after` seconds and reloaded when it changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from handler.model import load_compiled, load_model
from serve.cache import Entry, Loaded, ModelCache
from serve.compiler import Compiler
from serve.config import ServerConfig
from serve.diskcache import DiskCache
from serve.peers import Peers, RemoteDisk
from serve.source import ModelNotFound, ModelSource, SourceUnavailable, validate_name

log = logging.getLogger("mme")

# Estimate for a model never seen before, when nothing is resident to average over.
FIRST_ESTIMATE = 256 * 1024


class ModelNotReady(Exception):
    """A cold load outlasted the wait a client is given; it goes on, and a retry finds it ready."""


class LocalEndpoint:
    """`pool` runs version checks only: they must never wait behind loads, which run on the cache's own."""

    def __init__(
        self,
        config: ServerConfig,
        cache: ModelCache,
        pool: Executor,
        source: ModelSource,
        disk: DiskCache | RemoteDisk,
        compiler: Callable[[Path, Path], None],
    ) -> None:
        self.config = config
        self.cache = cache
        self.pool = pool
        self.source = source
        self.disk = disk
        self.compiler = compiler

    async def ensure(self, name: str) -> None:
        """Make `name` resident and current; raise ModelNotReady if that takes over the ready timeout."""
        validate_name(name)
        entry = self.cache.get(name)
        if entry is not None and not self._stale(entry):
            return
        if entry is not None:
            # Marked before anything awaits, so concurrent requests don't all ask the store.
            entry.checked_at = time.monotonic()
            work = self._refresh(entry)
        else:
            work = self._load(name, replace=False)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(work)), self.config.ready_timeout)
        except TimeoutError:
            raise ModelNotReady(
                f"model {name!r} is still loading after {self.config.ready_timeout:g} s; retry shortly"
            ) from None

    def _stale(self, entry: Entry) -> bool:
        after = self.config.revalidate_after
        return after is not None and time.monotonic() - entry.checked_at >= after

    async def _refresh(self, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(self.pool, self.source.version, entry.name)
        except SourceUnavailable as exc:
            log.warning("cannot revalidate %s, serving the resident copy: %s", entry.name, exc)
            return
        except ModelNotFound:
            # Gone from the store: stop serving it, as a fresh endpoint would.
            if self.cache.get(entry.name) is entry:
                await self.cache.unload(entry.name)
            raise
        if version != entry.version:
            log.info("artifact of %s changed (%s -> %s): reloading", entry.name, entry.version, version)
            await self._load(entry.name, replace=True)

    async def _load(self, name: str, *, replace: bool) -> Entry:
        config = self.config

        def loader() -> Loaded:
            started = time.monotonic()
            # The folder stays on disk while the model is read from it, whatever other loads need.
            with self.disk.use(name) as (folder, version):
                fetched = time.monotonic() - started
                model = load_model(
                    folder,
                    allow_pickle=config.allow_pickle,
                    allow_user_code=config.allow_user_code,
                    limits=config.model_limits,
                    ensemble=config.ensemble,
                    persist=True,  # the folder is this server's own, one per artifact version
                    compiler=self.compiler,
                )
            return Loaded(model, model.size_bytes, version, fetch_seconds=fetched)

        def quick() -> Loaded | None:
            # A re-miss: the artifact on disk is current and its compiled form is there, so the load is
            # a stat, a file read and a few array checks, cheaper on the loop than a thread's handoff.
            pinned = self.disk.pin_if_current(name)
            if pinned is None:
                return None
            folder, version, names = pinned
            try:
                model = load_compiled(folder, allow_pickle=config.allow_pickle, limits=config.model_limits,
                                      ensemble=config.ensemble, names=names)  # fmt: skip
            finally:
                self.disk.unpin(name)
            return None if model is None else Loaded(model, model.size_bytes, version, fetch_seconds=0.0)

        resident = len(self.cache)
        estimate = self.cache.used_bytes // resident if resident else FIRST_ESTIMATE
        url = self.source.url(name)
        return await self.cache.load(name, url, loader, estimate=estimate, replace=replace, quick=quick)

    async def preload(self, names: tuple[str, ...]) -> None:
        for name in names:
            await self._load(name, replace=False)
            log.info("preloaded %s", name)


def make_endpoint(
    config: ServerConfig, cache: ModelCache, pool: Executor, cache_dir: Path | None, peers: Peers | None
) -> LocalEndpoint:
    """The endpoint of a whole server (its own disk cache in `cache_dir`), or of one worker (the hub's)."""
    if peers is not None:
        source = _source(config)
        disk: DiskCache | RemoteDisk = RemoteDisk(peers, config.disk_budget, source)
        return LocalEndpoint(config, cache, pool, source, disk, peers.compile)
    assert cache_dir is not None
    source = _source(config)
    compiler = Compiler.of(config)
    disk = make_disk(config, cache_dir, compiler, source)
    return LocalEndpoint(config, cache, pool, source, disk, compiler)


def make_disk(
    config: ServerConfig, cache_dir: Path, compiler: Compiler, source: ModelSource | None = None
) -> DiskCache:
    """The disk cache of a server (or of the hub of its workers), unpacking in `compiler`'s processes."""
    return DiskCache(
        cache_dir,
        config.disk_budget,
        source or _source(config),
        max_unpacked_bytes=config.max_unpacked,
        max_members=config.max_members,
        unpack_timeout=config.load_timeout,
        unpacker=compiler.unpack,
    )


def _source(config: ServerConfig) -> ModelSource:
    from serve.source import open_source

    assert config.models is not None
    return open_source(config.models, s3_endpoint_url=config.s3_endpoint_url)
