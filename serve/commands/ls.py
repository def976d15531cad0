"""`mme ls`: the models a folder or S3 model source offers, by TargetModel name."""

from __future__ import annotations

import argparse
import json

from serve.errors import CommandError

HELP = "list the model artifacts in a folder or s3://bucket/prefix/ model source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="a folder or s3://bucket/prefix/")
    parser.add_argument("--json", action="store_true", help='print a JSON list of {"name", "size"}')
    parser.add_argument(
        "--s3-endpoint-url", help="an S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )


def run(args: argparse.Namespace) -> int:
    from serve.source import SourceError, open_source

    try:
        models = list(open_source(args.source, s3_endpoint_url=args.s3_endpoint_url).list())
    except SourceError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps([{"name": name, "size": size} for name, size in models]))
        return 0
    width = max((len(name) for name, _ in models), default=0)
    for name, size in models:
        print(f"{name:<{width}}  {size:>12}")
    total = sum(size for _, size in models)
    print(f"{len(models)} model{'' if len(models) == 1 else 's'}, {total} bytes")
    return 0
