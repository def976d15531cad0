"""`mme serve`: run the inference server (also what the image's `serve` runs under SageMaker)."""

from __future__ import annotations

import argparse
import sys

from serve import config as server_config

HELP = "run the inference server: the SageMaker multi-model contract, optionally over a model source"
SWITCH_INTERVAL_S = 0.0005


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server_config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    from types import FrameType

    import uvicorn

    from serve import logs
    from serve.app import App
    from serve.protocol import Protocol

    config = server_config.from_args(args)
    # A thread that wants the GIL waits up to this long for the one holding it: at Python's default
    # 5 ms, every hand-off between the event loop and a load (or the compiler's result thread) can add
    # 5 ms to a request. 0.5 ms keeps those waits short at a cost too small to measure.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
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
    server.run()
    return 0 if server.started else 1
