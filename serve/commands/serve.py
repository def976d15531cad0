"""`mme serve`: run the inference server (also what the image's `serve` runs under SageMaker)."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import TYPE_CHECKING

from serve import config as server_config
from serve.errors import CommandError

if TYPE_CHECKING:
    from serve.peers import Address

HELP = "run the inference server: the SageMaker multi-model contract, optionally over a model source"
SWITCH_INTERVAL_S = 0.0005


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server_config.add_arguments(parser)


def check_source(config: server_config.ServerConfig) -> None:
    """A --models that does not exist or cannot be listed fails here, not as a 503 on every call."""
    from serve.source import SourceError, open_source

    if config.models is None or config.lazy_source:
        return
    try:
        open_source(config.models, s3_endpoint_url=config.s3_endpoint_url).check()
    except SourceError as exc:
        message = f"--models {config.models}: {exc}; --lazy-source starts the server anyway"
        raise CommandError(message) from None


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything says ready, so a busy port is one line and exit 1."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def run(args: argparse.Namespace) -> int:
    import logging

    from serve import logs

    config = server_config.from_args(args)
    check_source(config)
    sock = listen(config.host, config.port)
    logs.setup(config.log_format, config.log_level)
    logs.event(logging.getLogger("mme"), logging.INFO, "config", **config.describe())
    if config.workers == 1:
        return serve_socket(config, sock)
    from serve.workers import supervise

    return supervise(config, sock)


def serve_socket(
    config: server_config.ServerConfig, sock: socket.socket, address: Address | None = None
) -> int:
    """Serve on `sock` in this process: the whole server, or (with a hub `address`) one of its workers."""
    import asyncio
    import signal
    from types import FrameType

    import uvicorn

    from serve.app import App
    from serve.protocol import Limits, protocol_class

    # A thread that wants the GIL waits up to this long for the one holding it: at Python's default
    # 5 ms, every hand-off between the event loop and a load (or the compiler's result thread) can add
    # 5 ms to a request. 0.5 ms keeps those waits short at a cost too small to measure.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    limits = Limits.of(config, connections=_raise_file_limit(config.max_connections))
    app = App(config, address)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn's own handler also re-raises the signal once shut down, which would end the
            # process killed by SIGTERM; a drained stop is a clean exit, so only its flags are kept.
            app.drain(signal.Signals(sig).name)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

        async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
            # Connections still in the listen backlog would be reset when the socket closes; a request
            # sent just before SIGTERM is accepted (and answered) first.
            await asyncio.sleep(ACCEPT_BACKLOG_S)
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="uvloop",
            http=protocol_class(limits),  # httptools, one write per response, bounded
            timeout_keep_alive=config.keep_alive,
            lifespan="on",
            access_log=False,  # serve.logs writes the access lines
            # No proxy sits in front of a SageMaker container; the middleware cost every request.
            proxy_headers=False,
            server_header=False,
            log_config=None,  # uvicorn's loggers propagate to the handler logs.setup installed
            log_level=config.log_level,
            timeout_graceful_shutdown=config.drain_timeout,  # typed int, but a float works: a wait_for
        )
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


# How long a drain keeps accepting before it closes the listening socket.
ACCEPT_BACKLOG_S = 0.25
# Descriptors beyond the connection cap: model files, the disk cache, S3 connections, logs.
SPARE_FILES = 256


def _raise_file_limit(connections: int) -> int:
    """Make room for --max-connections open sockets (the soft descriptor limit is often 1024); returns
    the connection cap that fits, lower than asked when the hard limit is."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - SPARE_FILES))
