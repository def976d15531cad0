"""`mme` entry point: one subcommand per module, each with `HELP`, `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from serve.errors import CommandError

# Subcommand name -> module. Modules keep heavy imports inside run() so `mme --help` stays instant.
COMMANDS: dict[str, str] = {
    "serve": "serve.commands.serve",
    "train": "training.cli",
    "train-job": "training.job_cli",
    "push": "serve.commands.push",
    "deploy": "serve.commands.deploy",
    "undeploy": "serve.commands.undeploy",
    "invoke": "serve.commands.invoke",
    "demo": "serve.commands.demo",
    "add": "serve.commands.add",
    "ls": "serve.commands.ls",
    "status": "serve.commands.status",
    "convert": "handler.convert",
}


class Parser(argparse.ArgumentParser):
    """Bad arguments are bad input like any other: one line and exit code 1 (argparse's own is 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    try:
        return metadata.version("xgboost-mme")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mme", description="Host many XGBoost models behind one SageMaker multi-model endpoint."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CommandError as exc:
        print(f"mme {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
