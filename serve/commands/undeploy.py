"""`mme undeploy`: delete an endpoint with its autoscaling, endpoint config and models."""

from __future__ import annotations

import argparse

HELP = "delete a SageMaker endpoint with its autoscaling, endpoint config and models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="endpoint name")
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")


def run(args: argparse.Namespace) -> int:
    from serve import cloud

    with cloud.aws_errors():
        removed = cloud.undeploy(cloud.session(args.region), args.name)
    for item in removed:
        print(f"deleted {item}")
    if not removed:
        print(f"nothing to delete: endpoint {args.name} not found")
    return 0
