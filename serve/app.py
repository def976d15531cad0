"""Routes: SageMaker's multi-model container contract and single-model /invocations, over raw ASGI.

No model logic lives here: a route parses the request, asks the cache for a model and hands the
body to the model's handler. Errors from either come back as JSON bodies that name the problem.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from prometheus_client import generate_latest

from handler import outputs
from handler.errors import HandlerError
from handler.model import Context, LoadedModel, ModelFilesGone, load_model
from serve import logs, v2, whole
from serve.cache import CacheError, Entry, Loaded, Loader, ModelCache, NotLoaded
from serve.compiler import Compiler
from serve.config import ServerConfig
from serve.endpoint import LocalEndpoint, ModelNotReady, make_endpoint
from serve.http import HTTPError, Receive, Request, Response, Scope, Send, error_response, json_response
from serve.metrics import CONTENT_TYPE, Collector, Stats, make_registry
from serve.peers import Address, Peers
from serve.runtime import runtime_error
from serve.source import SourceError

log = logging.getLogger("mme")

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
TARGET_MODEL = "x-amzn-sagemaker-target-model"
# Bodies up to this size are predicted on the event loop: a thread hop costs more than the work.
INLINE_BODY_LIMIT = 64 * 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Loaded Boosters take about this much more memory than their files (see handler.model).
ESTIMATE_FACTOR = 1.5
SINGLE_MODEL_NAME = "model"
INVOKE_SUFFIXES = ("/invoke", "/invocations", "/infer")
DEFAULT_STATUS_LIMIT = 100
MAX_URL_BYTES = 4096  # Linux's PATH_MAX
# With several workers: rounds a POST waits for another worker's load of the same model (see serve/hub.py),
# how long a report of every worker may take, and how much longer than a request's timeout an unload
# waits for every worker to drain the model.
JOIN_ROUNDS = 12
GATHER_TIMEOUT_S = 10.0
DROP_GRACE_S = 5.0
SUMMED_TOTALS = ("memoryUsedBytes", "invocations", "cacheHits", "cacheMisses", "inFlight")


def _folder_bytes(folder: Path, root: Path, max_files: int) -> int:
    """Bytes of the files in a model folder, which must all stay inside `root`: a link leading out of it
    (to /etc/passwd, /proc/...), a device or a fifo is refused before anything is read, at any depth."""
    total = files = 0
    for parent, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            path = Path(parent, name)
            shown = path.relative_to(folder)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = Path(os.path.realpath(path))
                if not target.is_relative_to(root):
                    raise HTTPError(400, f"{shown} in the model folder links outside the model root {root}")
                info = target.stat()
                if stat.S_ISDIR(info.st_mode):
                    raise HTTPError(400, f"{shown} in the model folder is a link to a folder")
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise HTTPError(400, f"{shown} in the model folder is not a regular file")
            files += 1
            if files > max_files:
                raise HTTPError(400, f"the model folder holds more than {max_files} files")
            total += info.st_size
    return total


def _page_token(after: str) -> str:
    return base64.urlsafe_b64encode(b"mme1:" + after.encode()).decode()


def _page_after(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except ValueError:
        raw = b""
    if not raw.startswith(b"mme1:"):
        raise HTTPError(400, f"next_page_token {token!r} is not a token this server issued")
    return raw[5:].decode(errors="replace")


def _check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise HTTPError(400, "model_name must be a non-empty string")
    if len(name) > 1024 or "/" in name or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise HTTPError(
            400, f"model_name {name[:80]!r} must be at most 1024 characters, without '/' or controls"
        )
    return name


class App:
    """The ASGI application; one instance per server process."""

    def __init__(self, config: ServerConfig, address: Address | None = None) -> None:
        self.config = config
        # Three pools, so slow work never queues in front of fast work: loads (which an artifact can make
        # slow, so each has a thread of its own up to --max-loads), version checks and folder scans (a stat
        # or a HEAD), and large predictions.
        threads = os.cpu_count() or 1
        self.load_pool = ThreadPoolExecutor(config.max_loads, thread_name_prefix="load")
        self.stat_pool = ThreadPoolExecutor(threads, thread_name_prefix="stat")
        self.predict_pool = ThreadPoolExecutor(threads, thread_name_prefix="predict")
        # One of several workers (serve/workers.py): the hub keeps what they share.
        self.peers = Peers(address) if address is not None else None
        budget, eviction = config.memory_budget, config.eviction
        if self.peers is not None and config.models:
            budget //= self.peers.workers  # each worker's own LRU, their sum the one budget
        elif self.peers is not None:
            eviction = "lru"  # the hub decides 507s; a worker's copies are all of registered models
        self.cache = ModelCache(budget, self.load_pool, max_models=config.max_models, eviction=eviction)
        self.model_root = Path(os.path.realpath(config.model_root))
        self.ready = False
        self.draining = False
        self.single_model = False
        self._startup: asyncio.Task[None] | None = None
        self._cache_dir: Path | None = None
        self.endpoint: LocalEndpoint | None = None
        if self.peers is None:
            self._cache_dir = config.cache_dir or Path(tempfile.mkdtemp(prefix="mme-cache-"))
        # The contract's models are compiled in compiler processes (the hub's, with several workers), so a
        # load does not hold this interpreter, into the server's own folder: every worker serving a model
        # maps the one file, one physical copy of its arrays whatever the worker count.
        self._compiled_root: Path | None = None
        self._compiler: Compiler | None = None
        if config.models:
            self.endpoint = make_endpoint(config, self.cache, self.stat_pool, self._cache_dir, self.peers)
        else:
            self._compiled_root = (config.cache_dir or self._cache_dir) / "compiled"  # type: ignore[operator]
            self._compiler = Compiler.of(config) if self.peers is None else self.peers.compile
        self.stats = Stats()
        self.cache.listeners += [self.stats.on_model_event, logs.model_event]
        disk = self.endpoint.disk if self.endpoint is not None else None
        self.collector = Collector(self.stats, self.cache, disk, config.metrics_top_models)
        self.registry = make_registry(self.collector)

    # --- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            started = time.perf_counter()
            stats = self.stats
            request = Request.from_scope(scope, receive)
            stats.in_flight += 1
            try:
                response = await self.handle(request)
                await response(send)
            finally:
                stats.in_flight -= 1
            seconds = time.perf_counter() - started
            status = response.status
            if status >= 400:
                stats.errors[status] = stats.errors.get(status, 0) + 1
            if request.method == "POST" and request.path.endswith(INVOKE_SUFFIXES):
                stats.invocations += 1
                stats.invoke_latency.observe(seconds)
            logs.access(request, _target(request), status, seconds, len(response.body))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def drain(self, signal_name: str) -> None:
        """Turn /ping red before the server stops accepting, so health checks see it leave."""
        if not self.draining:
            self.draining = True
            logs.event(
                log,
                logging.INFO,
                "draining",
                signal=signal_name,
                in_flight=self.stats.in_flight,
                timeout_s=self.config.timeout_s,
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Listen at once: SageMaker polls /ping and GET /models while models still load.
                self._startup = asyncio.create_task(self._start())
                if self.peers is not None:
                    self.peers.start(asyncio.get_running_loop(), self.on_peer_event)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.draining = True
                if self._startup is not None:
                    self._startup.cancel()
                for pool in (self.load_pool, self.stat_pool, self.predict_pool):
                    pool.shutdown(wait=False, cancel_futures=True)
                if self._cache_dir is not None and self.config.cache_dir is None:
                    shutil.rmtree(self._cache_dir, ignore_errors=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        config = self.config
        try:
            if not config.multi_model and not config.models and _has_files(config.model_dir):
                self.single_model = True
                await self._load_folder(SINGLE_MODEL_NAME, config.model_dir)
            if self.endpoint is not None and config.preload:
                await self.endpoint.preload(config.preload)
        except Exception as exc:
            # /ping stays 503, so the platform sees an unhealthy container instead of a broken one.
            log.error("startup failed, /ping stays 503: %s: %s", type(exc).__name__, exc)
            return
        self.ready = True
        # What exists now (imports, the framework, preloaded models) lives as long as the process: frozen
        # out of the cyclic collector's way, a full collection walks only what came since (on this box
        # ~1 µs an object, ~50 ms for the import-time ones alone, all of it a stall of the event loop).
        gc.freeze()
        log.info("ready on %s:%s", config.host, config.port)

    # --- routing -------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except HTTPError as exc:
            return error_response(exc)
        except (HandlerError, CacheError) as exc:
            return error_response(HTTPError(exc.status, str(exc)))
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(HTTPError(500, f"internal error: {type(exc).__name__}: {exc}"))

    async def _route(self, request: Request) -> Response:
        method = request.method
        raw_path = request.scope.get("raw_path", request.path.encode()).decode()
        # Split before unquoting, so a model name may hold an encoded '/'.
        parts = raw_path.split("/")[1:]
        if "%" in raw_path:
            parts = [unquote(part) for part in parts]
        match parts:
            case ["ping"]:
                return self._allow(method, "GET", "HEAD") or self.ping()
            case ["metrics"]:
                return self._allow(method, "GET") or await self.metrics()
            case ["status"]:
                return self._allow(method, "GET") or await self.status(request)
            case ["models"]:
                if method == "POST":
                    return await self.load_model(request)
                return self._allow(method, "GET") or await self.list_models(request)
            # A local endpoint's names may be nested (`v2/Chicago_IL.tar.gz`), with or without %2F.
            case ["models", *names, "invoke"] if names:
                return self._allow(method, "POST") or await self.invoke(request, "/".join(names))
            case ["models", *names] if names:
                if method == "DELETE":
                    return await self.unload_model("/".join(names))
                return self._allow(method, "GET") or await self.describe_model("/".join(names))
            case ["invocations"]:
                return self._allow(method, "POST") or await self.invocations(request)
            case ["endpoints", _, "invocations"]:
                return self._allow(method, "POST") or await self.invoke_endpoint(request)
            case ["v2", *rest]:
                return await v2.route(self, request, rest)
        raise HTTPError(404, f"no route for {method} {request.path}")

    @staticmethod
    def _allow(method: str, *allowed: str) -> Response | None:
        if method not in allowed:
            raise HTTPError(405, f"method {method} not allowed here; use {' or '.join(allowed)}")
        return None

    # --- routes --------------------------------------------------------------------------------
    def ping(self) -> Response:
        if self.draining:
            return json_response({"status": "draining"}, 503)
        if not self.ready:
            return json_response({"status": "starting"}, 503)
        return json_response({"status": "healthy"})

    async def metrics(self) -> Response:
        if self.peers is None:
            return Response(200, generate_latest(self.registry), CONTENT_TYPE)
        answers = await self._gather("metrics")
        replaced = {
            "mme_loaded_models": await self._distinct_models([names for _, names in answers]),
            "mme_model_memory_budget_bytes": self.config.memory_budget,
        }
        families = whole.merge_metrics([families for families, _ in answers], replaced)
        return Response(200, generate_latest(make_registry(whole.Fixed(families))), CONTENT_TYPE)

    async def _gather(self, kind: str, *args: Any) -> list[Any]:
        """Every worker's answer to a report (see on_peer_event), this one's included."""
        assert self.peers is not None
        try:
            answers = await self.peers.gather(kind, *args, timeout=GATHER_TIMEOUT_S)
        except TimeoutError as exc:
            raise HTTPError(503, f"cannot report the whole server: {exc}; retry") from None
        return [answer for answer in answers if answer is not None]

    async def _distinct_models(self, names: list[list[str]]) -> int:
        """Models the whole server has loaded: the registry's, or (local endpoint) any worker's."""
        assert self.peers is not None
        if self.endpoint is None:
            count, _ = await self.peers.call("totals")
            return int(count)
        return len(set().union(*names))

    async def on_peer_event(self, kind: str, arg: Any) -> Any:
        """What another worker broadcast through the hub, run on this worker's event loop."""
        if kind == "drop":
            await self.cache.settle(arg)
            if arg not in self.cache:
                return False
            await self.cache.unload(arg)
            return True
        report, *args = arg
        if report == "metrics":
            return list(self.collector.collect()), self.cache.sorted_names()
        if report == "status":
            return self._status_of(*args), self.cache.sorted_names()
        if report == "describe":
            entry = self.cache.get(args[0])
            return None if entry is None else self._describe(entry)
        if report == "names":
            return [(entry.name, entry.url) for entry in self.cache.entries()]
        raise ValueError(f"unknown report {report!r}")

    async def list_models(self, request: Request) -> Response:
        query = request.query
        size_raw = query.get("page_size", query.get("limit", str(DEFAULT_PAGE_SIZE)))
        if not size_raw.isdigit() or not 1 <= int(size_raw) <= MAX_PAGE_SIZE:
            raise HTTPError(400, f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {size_raw!r}")
        size = int(size_raw)
        urls = await self._urls()
        names = sorted(urls)
        token = query.get("next_page_token")
        if token:
            after = _page_after(token)
            names = [n for n in names if n > after]
        page = names[:size]
        next_token = _page_token(page[-1]) if len(names) > size else None
        models = [{"modelName": n, "modelUrl": urls[n]} for n in page]
        return json_response({"models": models, "nextPageToken": next_token})

    async def _urls(self) -> dict[str, str]:
        """The loaded models' urls by name, of the whole server."""
        if self.peers is None:
            return {entry.name: entry.url for entry in self.cache.entries()}
        if self.endpoint is None:
            return dict(await self.peers.call("registered"))
        return {name: url for answer in await self._gather("names") for name, url in answer}

    async def describe_model(self, name: str) -> Response:
        if self.peers is None:
            entry = self.cache.get(name)
            if entry is None:
                raise HTTPError(404, f"model {name!r} is not loaded")
            return json_response(self._describe(entry))
        copies = await self._gather("describe", name)
        registered = await self.peers.call("describe", name) if self.endpoint is None else None
        if registered is not None and not copies:
            # Loaded, but invoked on no worker yet: its counters are zero.
            unused = {"lastUsed": registered["loadedAt"], "invocations": 0, "misses": 0, "p50Ms": None,
                      "inFlight": 0, "loads": 1}  # fmt: skip
            copies.append({**unused, **registered, "hitRatio": None})
        if not copies:
            raise HTTPError(404, f"model {name!r} is not loaded")
        return json_response(whole.merge_models(copies)[0])

    def _describe(self, entry: Entry) -> dict[str, Any]:
        return {**entry.describe(), "loads": self.stats.loads.get(entry.name, 0)}

    async def status(self, request: Request) -> Response:
        """What `mme status` shows: the most recently used models and the server's totals."""
        limit_raw = request.query.get("limit", str(DEFAULT_STATUS_LIMIT))
        if not limit_raw.isdigit():
            raise HTTPError(400, f"limit must be a non-negative integer, got {limit_raw!r}")
        limit = int(limit_raw)
        if self.peers is None:
            return json_response(self._status_of(limit))
        answers = await self._gather("status", limit)
        totals = {key: sum(status["totals"][key] or 0 for status, _ in answers) for key in SUMMED_TOTALS}
        first = answers[0][0]["totals"]
        totals.update(
            models=await self._distinct_models([names for _, names in answers]),
            memoryBudgetBytes=self.config.memory_budget,
            diskUsedBytes=first["diskUsedBytes"],
            diskBudgetBytes=first["diskBudgetBytes"],
        )
        models = whole.merge_models(model for status, _ in answers for model in status["models"])
        return json_response({"models": models[:limit], "totals": totals})

    def _status_of(self, limit: int) -> dict[str, Any]:
        cache, stats, disk = self.cache, self.stats, self.endpoint.disk if self.endpoint else None
        totals = {
            "models": len(cache),
            "memoryUsedBytes": cache.used_bytes,
            "memoryBudgetBytes": cache.budget,
            "diskUsedBytes": disk.used_bytes() if disk else None,
            "diskBudgetBytes": disk.budget if disk else None,
            "invocations": stats.invocations,
            "cacheHits": stats.cache_hits,
            "cacheMisses": stats.cache_misses,
            "inFlight": stats.in_flight,
        }
        models = [self._describe(e) for e in cache.entries()[:limit]]
        return {"models": models, "totals": totals}

    async def load_model(self, request: Request) -> Response:
        body = await request.json(self.config.max_body)
        if not isinstance(body, dict):
            raise HTTPError(400, 'body must be a JSON object {"model_name": ..., "url": ...}')
        name = _check_model_name(body.get("model_name"))
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise HTTPError(400, "url must be a non-empty string naming the model's folder")
        folder = self._confine(url)
        if self.peers is not None:
            size = await self._load_shared(name, folder, url)
        else:
            if name in self.cache and not self.cache.is_loading(name):
                raise HTTPError(409, f"model {name!r} is already loaded")
            size = (await self._load_folder(name, folder, url=url)).size
        return json_response({"status": f"model {name!r} loaded", "modelName": name, "sizeBytes": size})

    async def _load_shared(self, name: str, folder: Path, url: str) -> int:
        """POST /models when several workers serve: the hub registers the model (or answers 409 or
        507) once, this worker loads its copy; a worker already loading it from this url is joined."""
        peers = self.peers
        assert peers is not None
        estimate = await self._estimate(folder, self.model_root)
        for _ in range(JOIN_ROUNDS):
            if await peers.call("claim", peers.worker, name, url, estimate):
                break
            size = await peers.call("wait_loaded", name, url)
            if size is not None:
                return int(size)
        else:
            raise HTTPError(503, f"model {name!r} is still being loaded by another worker; retry")

        async def load() -> int:
            try:
                entry = await self.cache.load(name, url, self._folder_loader(name, folder), estimate=estimate)
            except BaseException:
                await peers.call("abandon", name)
                raise
            await peers.call("commit", name, entry.size)
            return entry.size

        # A task of its own, so a client that hangs up never leaves the registration half done.
        return await asyncio.shield(asyncio.ensure_future(load()))

    async def _load_registered(self, name: str) -> bool:
        """This worker's copy of a model another worker loaded; False if no worker did."""
        peers = self.peers
        assert peers is not None
        url = await peers.call("lookup", name)
        if url is None:
            return False
        folder = self._confine(url)

        def still_loaded() -> None:
            # Checked on the load thread, after the read: an unload that came meanwhile has been
            # acknowledged by this worker already, so the copy must not become resident.
            if peers.hub.lookup(name) != url:
                raise NotLoaded(f"model {name!r} was unloaded while it loaded")

        estimate = await self._estimate(folder, self.model_root)
        if name in self.cache and not self.cache.is_loading(name):
            return True  # another request's copy became resident while this one looked it up
        await self.cache.load(name, url, self._folder_loader(name, folder, still_loaded), estimate=estimate)
        return True

    def _confine(self, url: str) -> Path:
        """Resolve `url` inside --model-root, refusing before any read what escapes it."""
        path = Path(url)
        shown = url if len(url) <= 200 else url[:200] + "..."
        if not path.is_absolute() or ".." in path.parts or "\x00" in url:
            raise HTTPError(
                400, f"url {shown!r} must be an absolute path without '..' under {self.model_root}"
            )
        if len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
            raise HTTPError(400, f"url {shown!r} is longer than {MAX_URL_BYTES} bytes")
        try:
            resolved = Path(os.path.realpath(path))
            if not resolved.is_relative_to(self.model_root):
                raise HTTPError(400, f"url {shown!r} is outside the model root {self.model_root}")
            if not resolved.is_dir():
                raise HTTPError(404, f"url {shown!r} does not exist or is not a folder")
        except OSError as exc:  # a name too long for the filesystem, and the like
            raise HTTPError(400, f"url {shown!r} cannot be a model folder: {exc.strerror}") from None
        return resolved

    async def _load_folder(self, name: str, folder: Path, url: str | None = None) -> Entry:
        """Load the model in `folder`, whose files must stay inside the model root (for a url) or inside
        the folder itself (single-model mode's --model-dir)."""
        root = self.model_root if url is not None else Path(os.path.realpath(folder))
        estimate = await self._estimate(folder, root)
        return await self.cache.load(
            name, url or str(folder), self._folder_loader(name, folder), estimate=estimate
        )

    def _folder_loader(self, name: str, folder: Path, check: Callable[[], None] | None = None) -> Loader:
        """The load of the model in `folder`, for a load thread; `check` runs after it, on that thread."""
        config = self.config
        single = self.single_model and name == SINGLE_MODEL_NAME
        policy = outputs.Policy(single, config.default_accept, config.inference_output)

        def loader() -> Loaded:
            model = load_model(
                folder,
                allow_pickle=config.allow_pickle,
                allow_user_code=config.allow_user_code,
                policy=policy,
                limits=config.model_limits,
                ensemble=config.ensemble,
                compiled_dir=self._compiled_dir(name, create=True),
                compiler=self._compiler,
            )
            if check is not None:
                check()
            return Loaded(model, model.size_bytes)

        return loader

    async def _estimate(self, folder: Path, root: Path) -> int:
        """What loading the model in `folder` will take, judged by its files before any is read."""
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            size = await loop.run_in_executor(
                self.stat_pool, _folder_bytes, folder, root, config.max_folder_files
            )
        except OSError as exc:
            raise HTTPError(400, f"cannot read the model folder: {exc.strerror}") from None
        return int(size * ESTIMATE_FACTOR)

    def _compiled_dir(self, name: str, *, create: bool = False) -> Path | None:
        """Where model `name`'s compiled form is shared by the workers; None: kept in memory only."""
        if self._compiled_root is None:
            return None
        folder = self._compiled_root / hashlib.sha256(name.encode()).hexdigest()[:32]
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError:
                return None  # a full or read-only disk costs sharing, never the load
        return folder

    async def unload_model(self, name: str) -> Response:
        if self.peers is None:
            await self.cache.unload(name)
        else:
            # Unregistered at once (no worker loads it again), answered once every worker dropped it.
            seq, registered = await self.peers.call("drop", name)
            try:
                dropped = await self.peers.call("collect", seq, self.config.timeout_s + DROP_GRACE_S)
            except TimeoutError as exc:
                raise HTTPError(503, f"model {name!r} is unloaded, but {exc}") from None
            if not registered and not any(dropped):
                raise NotLoaded(f"model {name!r} is not loaded")
        if (shared := self._compiled_dir(name)) is not None:
            # Mapped copies stay valid after the unlink: a worker still answering keeps its pages.
            await asyncio.get_running_loop().run_in_executor(
                self.stat_pool, functools.partial(shutil.rmtree, shared, ignore_errors=True)
            )
        return json_response({"status": f"model {name!r} unloaded"})

    async def invoke(self, request: Request, name: str) -> Response:
        # Here SageMaker loads the models: a model it has not loaded is a miss it answers with a load.
        resident = name in self.cache
        if self.peers is not None:
            if not resident:
                resident = await self._load_registered(name)  # loaded through another worker
            self.peers.touched.add(name)
        self._count_hit(resident)
        body = await request.body(self.config.max_body)
        with self.cache.lease(name) as entry:
            return await self._predict(request, entry.model, body, request.headers.get(TARGET_MODEL))

    async def invocations(self, request: Request) -> Response:
        if TARGET_MODEL in request.headers:
            return await self.invoke_endpoint(request)
        if not self.single_model:
            raise HTTPError(
                404,
                "no single model is served here: use POST /models/{name}/invoke, or name one in the "
                "X-Amzn-SageMaker-Target-Model header of a server started with --models",
            )
        return await self.invoke(request, SINGLE_MODEL_NAME)

    async def invoke_endpoint(self, request: Request) -> Response:
        """SageMaker runtime's InvokeEndpoint: errors in its shapes, so boto3 raises what AWS would."""
        if self.endpoint is None:
            return runtime_error(
                400, "ValidationError", "this server has no model source: start it with --models"
            )
        try:
            name = request.utf8_header(TARGET_MODEL)
        except UnicodeDecodeError:
            return runtime_error(400, "ValidationError", "TargetModel is not valid UTF-8")
        if not name:
            return runtime_error(
                400, "ValidationError", "TargetModel (X-Amzn-SageMaker-Target-Model) is required"
            )
        resident = name in self.cache
        self._count_hit(resident)
        try:
            body = await request.body(self.config.max_body)
            waiting = time.perf_counter()
            for _ in range(3):  # another cold load may evict this model between its load and our lease
                await self.endpoint.ensure(name)
                if name in self.cache:
                    if not resident:
                        self.stats.load_wait.observe(time.perf_counter() - waiting)
                    try:
                        with self.cache.lease(name, miss=not resident) as entry:
                            response = await self._predict(request, entry.model, body, name)
                    except ModelFilesGone:
                        # The disk cache evicted its folder before a request needed its Booster: load again.
                        if name in self.cache:
                            await self.cache.unload(name)
                        continue
                    response.headers.append((b"x-amzn-invoked-production-variant", b"AllTraffic"))
                    return response
            return runtime_error(503, "ServiceUnavailable", f"model {name!r} was evicted as it loaded; retry")
        except ModelNotReady as exc:
            return runtime_error(429, "ModelNotReadyException", str(exc))
        except SourceError as exc:
            if exc.status == 400:
                return runtime_error(400, "ValidationError", str(exc))
            if exc.status == 503:
                return runtime_error(503, "ServiceUnavailable", str(exc))
            return runtime_error(424, "ModelError", str(exc), original_status=400)
        except HTTPError as exc:
            if exc.status == 413:
                return runtime_error(413, "ValidationError", exc.message)
            return runtime_error(424, "ModelError", exc.message, original_status=exc.status)
        except (HandlerError, CacheError) as exc:
            return runtime_error(424, "ModelError", str(exc), original_status=exc.status)

    def _count_hit(self, resident: bool) -> None:
        if resident:
            self.stats.cache_hits += 1
        else:
            self.stats.cache_misses += 1

    async def _predict(
        self, request: Request, model: LoadedModel, body: bytes, target: str | None
    ) -> Response:
        headers = request.headers
        attributes = headers.get(CUSTOM_ATTRIBUTES)
        context = Context(custom_attributes=attributes, target_model=target)
        content_type, accept = headers.get("content-type"), headers.get("accept")
        invoke = v2.pick(request, model, body)
        if len(body) <= INLINE_BODY_LIMIT:
            payload, media_type = invoke(body, content_type, accept, context)
        else:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(self.predict_pool, invoke, body, content_type, accept, context)
            try:
                payload, media_type = await asyncio.wait_for(call, self.config.timeout_s)
            except TimeoutError:
                raise HTTPError(504, f"prediction took longer than {self.config.timeout_s:g} s") from None
        extra = [(CUSTOM_ATTRIBUTES.encode(), attributes.encode("latin-1"))] if attributes else []
        return Response(200, payload, media_type, extra)


def _target(request: Request) -> str | None:
    """The model a request is about, for its log line."""
    name = request.headers.get(TARGET_MODEL)
    if name is None and request.path.startswith("/models/"):
        name = request.path[len("/models/") :].removesuffix("/invoke")
    return name


def _has_files(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return False
