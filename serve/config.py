"""Server configuration: SageMaker's environment variables and `mme serve` flags, resolved in one place.

Precedence is flag > environment > default, so a container configured by SageMaker can still be
overridden by hand when debugging it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from handler import codecs, outputs
from handler.errors import NotAcceptable
from handler.forest import ModelLimits
from serve.errors import CommandError
from serve.unpack import LOAD_TIMEOUT_S

MiB = 1024**2
# Share of the container's memory that models may take by default; the rest is the server,
# request buffers and the allocator's slack.
DEFAULT_MEMORY_FRACTION = 0.7
DEFAULT_MAX_BODY = 6 * MiB  # SageMaker's own InvokeEndpoint payload limit
# What one connection may make the server hold or wait for (README "Limits").
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request
DEFAULT_MAX_HEADERS = 100
DEFAULT_HEADER_TIMEOUT = 10.0  # from a connection's (or request's) first byte to its last header
DEFAULT_BODY_TIMEOUT = 30.0  # from the last header to the body's last byte
DEFAULT_KEEP_ALIVE = 5.0  # idle time between requests on one connection (uvicorn's own default)
DEFAULT_MAX_CONNECTIONS = 1000
# SageMaker sends SIGKILL 30 s after SIGTERM: the drain ends well before that.
DEFAULT_DRAIN_TIMEOUT = 20.0
DEFAULT_MAX_UNPACKED = 1024 * MiB  # an artifact's unpacked bytes, tar headers included
DEFAULT_MAX_MEMBERS = 1000
DEFAULT_MAX_FOLDER_FILES = 10_000  # files in a POST /models folder
# Loads running at once, each on a thread (and, compiling, a process) of its own: what slow hostile loads
# must all hold before a good model's load waits for one.
DEFAULT_MAX_LOADS = 8
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": MiB, "mb": 10**6, "mib": MiB}
_UNITS |= {"g": 1024**3, "gb": 10**9, "gib": 1024**3, "t": 1024**4, "tb": 10**12, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'2GiB', '512MB', '1500000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 2GiB, 512MiB, 1500000)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def memory_limit() -> int:
    """The container's memory limit from cgroups (v2, then v1), else the host's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        # "max" (v2) and a near-2^63 page-rounded number (v1) both mean "no limit".
        if raw.isdigit() and int(raw) < 2**60:
            return min(int(raw), psutil.virtual_memory().total)
    return psutil.virtual_memory().total


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    multi_model: bool = False
    workers: int = 2
    timeout_s: float = 60.0
    model_root: Path = Path("/opt/ml/models")
    model_dir: Path = Path("/opt/ml/model")
    memory_budget: int = 1024 * MiB
    max_models: int | None = None
    eviction: str = "lru"
    max_body: int = DEFAULT_MAX_BODY
    allow_pickle: bool = False
    allow_user_code: bool = False
    models: str | None = None
    lazy_source: bool = False
    s3_endpoint_url: str | None = None
    disk_budget: int = 10 * 1024 * MiB
    cache_dir: Path | None = None
    revalidate_after: float | None = 60.0
    ready_timeout: float = 60.0
    preload: tuple[str, ...] = field(default_factory=tuple)
    log_format: str = "text"
    log_level: str = "info"
    metrics_top_models: int = 20
    default_accept: str | None = None  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    inference_output: tuple[str, ...] = ()  # SAGEMAKER_INFERENCE_OUTPUT's keys
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive: float = DEFAULT_KEEP_ALIVE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    max_unpacked: int = DEFAULT_MAX_UNPACKED
    max_members: int = DEFAULT_MAX_MEMBERS
    max_folder_files: int = DEFAULT_MAX_FOLDER_FILES
    max_loads: int = DEFAULT_MAX_LOADS
    load_timeout: float = LOAD_TIMEOUT_S
    model_limits: ModelLimits = field(default_factory=ModelLimits)
    ensemble: bool = True  # several model files in one artifact are averaged (or voted), as AWS's image does

    def describe(self) -> dict[str, object]:
        plain = {k: v for k, v in self.__dict__.items() if k != "model_limits"}
        return {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in plain.items()},
            **asdict(self.model_limits),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `mme serve`; every default is None so the environment can fill what was not given."""
    add = parser.add_argument
    add("--host", help="address to bind (env MME_HOST; default 127.0.0.1, the image sets 0.0.0.0)")
    add("--port", type=int, help="port (env SAGEMAKER_BIND_TO_PORT; default 8080)")
    add(
        "--workers",
        type=int,
        help="serving processes answering as one server (env SAGEMAKER_MODEL_SERVER_WORKERS; default: cores)",
    )
    add("--timeout", type=float, help="seconds per request (env SAGEMAKER_MODEL_SERVER_TIMEOUT[_SECONDS])")
    add("--model-root", help="loads are confined to this folder (default /opt/ml/models)")
    add("--model-dir", help="single-model mode: the model folder (default /opt/ml/model)")
    add("--memory-budget", help="bytes of models kept resident, e.g. 2GiB (env MME_MEMORY_BUDGET)")
    add("--max-models", type=int, help="at most this many resident models (env MME_MAX_MODELS)")
    add("--eviction", choices=["lru", "reject"], help="when full: evict LRU models, or answer 507")
    add("--max-body", help="largest request body, e.g. 6MiB (env MME_MAX_BODY)")
    add(
        "--allow-pickle",
        action="store_true",
        default=None,
        help="also load pickled scikit-learn wrappers (XGBRegressor & co.); Booster pickles load without it, "
        "and no pickle ever runs code (env MME_ALLOW_PICKLE)",
    )
    add("--allow-user-code", action="store_true", default=None, help="run an artifact's code/inference.py")
    add("--models", help="model source: a folder or s3://bucket/prefix/ (env MME_MODELS)")
    add(
        "--lazy-source",
        action="store_true",
        default=None,
        help="start even when --models cannot be listed yet, e.g. before its bucket exists "
        "(env MME_LAZY_SOURCE)",
    )
    add("--s3-endpoint-url", help="S3-compatible store (env AWS_ENDPOINT_URL)")
    add("--disk-budget", help="bytes of unpacked artifacts kept on disk, e.g. 10GiB (env MME_DISK_BUDGET)")
    add("--cache-dir", help="where fetched artifacts are unpacked (default: a temp folder)")
    add(
        "--revalidate-after",
        help="seconds before a resident model's artifact is checked again (60; 0 = every call, off = never)",
    )
    add(
        "--ready-timeout", type=float, help="seconds a client waits for a cold load before a 429 (default 60)"
    )
    add("--preload", help="NAME,NAME,... or @file of names to load before /ping turns green")
    add("--log-format", choices=["text", "json"], help="access and event log format (env MME_LOG_FORMAT)")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="(env MME_LOG_LEVEL)")
    add("--max-trees", type=int, help="trees a model may hold (env MME_MAX_TREES; 100000)")
    add("--max-nodes", type=int, help="tree nodes a model may hold in all (env MME_MAX_NODES; 20000000)")
    add("--max-features", type=int, help="num_feature a model may declare (env MME_MAX_FEATURES; 1000000)")
    add("--max-model-bytes", help="size of a model file, e.g. 1GiB (env MME_MAX_MODEL_BYTES)")
    add(
        "--metrics-top-models",
        type=int,
        help="models with own /metrics series; the rest sum up as _other (env MME_METRICS_TOP_MODELS; 20)",
    )
    add("--max-header-bytes", help="request line and headers of one request, e.g. 64KiB (431 over it)")
    add("--max-headers", type=int, help="headers of one request (431 over it; env MME_MAX_HEADERS; 100)")
    add("--header-timeout", type=float, help="seconds to send a request's headers (MME_HEADER_TIMEOUT; 10)")
    add("--body-timeout", type=float, help="seconds to send a request's body (env MME_BODY_TIMEOUT; 30)")
    add("--keep-alive", type=float, help="seconds an idle connection stays open (env MME_KEEP_ALIVE; 5)")
    add("--max-connections", type=int, help="open connections (env MME_MAX_CONNECTIONS; 1000)")
    add("--drain-timeout", type=float, help="seconds SIGTERM waits for requests (env MME_DRAIN_TIMEOUT; 20)")
    add("--max-unpacked", help="bytes an artifact may unpack to, headers included (env MME_MAX_UNPACKED)")
    add("--max-members", type=int, help="members of an artifact's tar (env MME_MAX_MEMBERS; 1000)")
    add("--max-folder-files", type=int, help="files in a POST /models folder (env MME_MAX_FOLDER_FILES)")
    add("--max-loads", type=int, help="model loads running at once (env MME_MAX_LOADS; 8)")
    add(
        "--load-timeout",
        type=float,
        help="seconds an artifact may take to unpack, and to compile (env MME_LOAD_TIMEOUT; 120)",
    )


def _preload_names(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return ()
    if spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text()
        except OSError as exc:
            raise CommandError(f"--preload: cannot read {spec[1:]}: {exc.strerror}") from None
        return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return tuple(name.strip() for name in spec.split(",") if name.strip())


def _revalidate(spec: str) -> float | None:
    if spec.strip().lower() in {"off", "never"}:
        return None
    seconds = float(spec)
    if seconds < 0:
        raise ValueError("must be >= 0")
    return seconds


def _accept(media_type: str) -> str:
    try:
        codecs.response_type(media_type)
    except NotAcceptable as exc:
        raise ValueError(str(exc)) from None
    return media_type


def from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ServerConfig:
    """Resolve flags over environment over defaults; a bad value is a CommandError naming its source."""

    def pick(flag: str, *env_names: str) -> str | None:
        value = getattr(args, flag, None)
        if value is not None:
            return str(value)
        for name in env_names:
            if env.get(name, "").strip():
                return env[name].strip()
        return None

    def convert(flag: str, env_names: tuple[str, ...], parse, default):
        raw = pick(flag, *env_names)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            source = f"--{flag.replace('_', '-')}" if getattr(args, flag, None) is not None else env_names[0]
            raise CommandError(f"{source}={raw!r}: {exc}") from None

    def positive_int(raw: str) -> int:
        value = int(raw)
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    def port_number(raw: str) -> int:
        value = int(raw)
        if not 1 <= value <= 65535:
            raise ValueError("must be a port number from 1 to 65535")
        return value

    def seconds(raw: str) -> float:
        value = float(raw)
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    multi_model = _truthy(env.get("SAGEMAKER_MULTI_MODEL"))
    budget_default = int(memory_limit() * DEFAULT_MEMORY_FRACTION)
    config = ServerConfig(
        host=pick("host", "MME_HOST") or "127.0.0.1",
        port=convert("port", ("SAGEMAKER_BIND_TO_PORT",), port_number, 8080),
        multi_model=multi_model,
        workers=convert("workers", ("SAGEMAKER_MODEL_SERVER_WORKERS",), positive_int, os.cpu_count() or 1),
        # Both variables are seconds here; multi-model-server reads the first as minutes (see README).
        timeout_s=convert(
            "timeout",
            ("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
            seconds,
            60.0,
        ),
        model_root=Path(pick("model_root", "MME_MODEL_ROOT") or "/opt/ml/models"),
        model_dir=Path(pick("model_dir", "MME_MODEL_DIR") or "/opt/ml/model"),
        memory_budget=convert("memory_budget", ("MME_MEMORY_BUDGET",), parse_bytes, budget_default),
        max_models=convert("max_models", ("MME_MAX_MODELS",), positive_int, None),
        # Under SageMaker, SageMaker picks what to unload after a 507; on our own we evict LRU.
        eviction=pick("eviction", "MME_EVICTION") or ("reject" if multi_model else "lru"),
        max_body=convert("max_body", ("MME_MAX_BODY",), parse_bytes, DEFAULT_MAX_BODY),
        allow_pickle=bool(args.allow_pickle) or _truthy(env.get("MME_ALLOW_PICKLE")),
        allow_user_code=bool(args.allow_user_code) or _truthy(env.get("MME_ALLOW_USER_CODE")),
        models=pick("models", "MME_MODELS"),
        lazy_source=bool(args.lazy_source) or _truthy(env.get("MME_LAZY_SOURCE")),
        s3_endpoint_url=pick("s3_endpoint_url", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        disk_budget=convert("disk_budget", ("MME_DISK_BUDGET",), parse_bytes, 10 * 1024 * MiB),
        cache_dir=Path(d) if (d := pick("cache_dir", "MME_CACHE_DIR")) else None,
        revalidate_after=convert("revalidate_after", ("MME_REVALIDATE_AFTER",), _revalidate, 60.0),
        ready_timeout=convert("ready_timeout", ("MME_READY_TIMEOUT",), seconds, 60.0),
        preload=_preload_names(pick("preload", "MME_PRELOAD")),
        log_format=pick("log_format", "MME_LOG_FORMAT") or "text",
        log_level=pick("log_level", "MME_LOG_LEVEL") or "info",
        metrics_top_models=convert("metrics_top_models", ("MME_METRICS_TOP_MODELS",), positive_int, 20),
        default_accept=convert("default_accept", ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",), _accept, None),
        inference_output=convert("inference_output", ("SAGEMAKER_INFERENCE_OUTPUT",), outputs.parse_keys, ()),
        max_header_bytes=convert(
            "max_header_bytes", ("MME_MAX_HEADER_BYTES",), parse_bytes, DEFAULT_MAX_HEADER_BYTES
        ),
        max_headers=convert("max_headers", ("MME_MAX_HEADERS",), positive_int, DEFAULT_MAX_HEADERS),
        header_timeout=convert("header_timeout", ("MME_HEADER_TIMEOUT",), seconds, DEFAULT_HEADER_TIMEOUT),
        body_timeout=convert("body_timeout", ("MME_BODY_TIMEOUT",), seconds, DEFAULT_BODY_TIMEOUT),
        keep_alive=convert("keep_alive", ("MME_KEEP_ALIVE",), seconds, DEFAULT_KEEP_ALIVE),
        max_connections=convert(
            "max_connections", ("MME_MAX_CONNECTIONS",), positive_int, DEFAULT_MAX_CONNECTIONS
        ),
        drain_timeout=convert("drain_timeout", ("MME_DRAIN_TIMEOUT",), seconds, DEFAULT_DRAIN_TIMEOUT),
        max_unpacked=convert("max_unpacked", ("MME_MAX_UNPACKED",), parse_bytes, DEFAULT_MAX_UNPACKED),
        max_members=convert("max_members", ("MME_MAX_MEMBERS",), positive_int, DEFAULT_MAX_MEMBERS),
        max_folder_files=convert(
            "max_folder_files", ("MME_MAX_FOLDER_FILES",), positive_int, DEFAULT_MAX_FOLDER_FILES
        ),
        max_loads=convert("max_loads", ("MME_MAX_LOADS",), positive_int, DEFAULT_MAX_LOADS),
        load_timeout=convert("load_timeout", ("MME_LOAD_TIMEOUT",), seconds, LOAD_TIMEOUT_S),
        model_limits=ModelLimits(
            max_trees=convert("max_trees", ("MME_MAX_TREES",), positive_int, ModelLimits.max_trees),
            max_nodes=convert("max_nodes", ("MME_MAX_NODES",), positive_int, ModelLimits.max_nodes),
            max_features=convert(
                "max_features", ("MME_MAX_FEATURES",), positive_int, ModelLimits.max_features
            ),
            max_model_bytes=convert(
                "max_model_bytes", ("MME_MAX_MODEL_BYTES",), parse_bytes, ModelLimits.max_model_bytes
            ),
        ),
        ensemble=env.get("SAGEMAKER_INFERENCE_ENSEMBLE", "true").strip().lower() != "false",
    )
    if config.eviction not in {"lru", "reject"}:
        raise CommandError(f"MME_EVICTION={config.eviction!r}: must be lru or reject")
    if config.preload and not config.models:
        raise CommandError("--preload needs a model source: give --models too")
    return config
