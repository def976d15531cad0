"""`mme train-job`: the container's SageMaker training entrypoint (the image's `train` runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Run a SageMaker training job: /opt/ml/input channels in, /opt/ml/model/xgboost-model out."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/opt/ml"),
        help="SageMaker's folder (default /opt/ml); SM_* variables still override single paths",
    )


def run(args: argparse.Namespace) -> int:
    from training import sagemaker

    summary = sagemaker.main(args.root)
    print(f"trained {summary['rounds']} rounds on {summary['train_rows']} rows", flush=True)
    return 0
