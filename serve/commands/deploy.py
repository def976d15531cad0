"""`mme deploy`: create or update a SageMaker multi-model endpoint running the server image."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.status import Status

HELP = "create or update a SageMaker multi-model endpoint for the image and an S3 model prefix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="container image URI, as printed by `mme push`")
    parser.add_argument("--role", required=True, help="IAM execution role ARN SageMaker assumes")
    parser.add_argument(
        "--model-data-prefix",
        required=True,
        metavar="S3_PREFIX",
        help="s3://bucket/prefix/ holding model archives",
    )
    parser.add_argument("--endpoint-name", default="xgboost-mme", help="default: %(default)s")
    parser.add_argument("--instance-type", default="ml.m4.xlarge", help="default: %(default)s")
    parser.add_argument("--instance-count", type=int, default=1, help="default: %(default)s")
    parser.add_argument(
        "--autoscale", metavar="MIN:MAX", help="scale the instance count between MIN and MAX (needs --wait)"
    )
    parser.add_argument(
        "--target-invocations",
        type=float,
        metavar="N",
        help="with --autoscale: invocations per instance per minute to hold",
    )
    parser.add_argument(
        "--keep-on-failure", action="store_true", help="keep what a failed deploy created, for debugging"
    )
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the endpoint is InService (default: wait)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        metavar="SECONDS",
        help="how long to wait (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=15,
        metavar="SECONDS",
        help="seconds between status checks (default: %(default)s)",
    )
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")


class Display:
    """A spinner with the endpoint status on a terminal, and one line per status change for logs."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._last = ""

    def log(self, message: str) -> None:
        # rich prints stdout above its live spinner, so plain prints stay readable.
        print(message, flush=True)

    def on_status(self, endpoint_status: str, elapsed: float) -> None:
        self._status.update(f"endpoint {endpoint_status} ({elapsed:.0f} s)")
        if endpoint_status != self._last:
            self._last = endpoint_status
            self.log(f"endpoint status: {endpoint_status} after {elapsed:.0f} s")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from serve import cloud

    spec = cloud.DeploySpec(
        endpoint_name=args.endpoint_name,
        image=args.image,
        role_arn=args.role,
        model_data_prefix=args.model_data_prefix,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        autoscale=cloud.parse_autoscale(args.autoscale, args.target_invocations),
        keep_on_failure=args.keep_on_failure,
        wait=args.wait,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
    )
    with cloud.aws_errors(), Console().status(f"deploying {spec.endpoint_name}") as status:
        display = Display(status)
        cloud.deploy(cloud.session(args.region), spec, log=display.log, on_status=display.on_status)
    return 0
