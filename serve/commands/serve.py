"""`mme serve`: run the inference server (also what the image's `serve` runs under SageMaker)."""

from __future__ import annotations

import argparse

from serve import config as server_config

HELP = "run the inference server: the SageMaker multi-model contract, optionally over a model source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server_config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from serve.app import App

    config = server_config.from_args(args)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = App(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(config.timeout_s),
    )
    return 0
