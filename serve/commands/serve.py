"""`mme serve`: run the inference server (also what the image's `serve` runs under SageMaker)."""

from __future__ import annotations

import argparse
import socket

from serve import config as server_config
from serve.errors import CommandError

HELP = "run the inference server: the SageMaker multi-model contract, optionally over a model source"


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
    import signal
    from types import FrameType

    import uvicorn

    from serve import logs
    from serve.app import App
    from serve.protocol import Protocol

    config = server_config.from_args(args)
    check_source(config)
    sock = listen(config.host, config.port)
    logs.setup(config.log_format, config.log_level)
    logs.event(logging.getLogger("mme"), logging.INFO, "config", **config.describe())
    app = App(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn's own handler also re-raises the signal once shut down, which would end the
            # process killed by SIGTERM; a drained stop is a clean exit, so only its flags are kept.
            app.drain(signal.Signals(sig).name)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    server = Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="uvloop",
            http=Protocol,  # httptools, each response in one write
            lifespan="on",
            access_log=False,  # serve.logs writes the access lines
            # No proxy sits in front of a SageMaker container; the middleware cost every request.
            proxy_headers=False,
            server_header=False,
            log_config=None,  # uvicorn's loggers propagate to the handler logs.setup installed
            log_level=config.log_level,
            timeout_graceful_shutdown=config.timeout_s,  # typed int, but a float works: it is a wait_for
        )
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1
