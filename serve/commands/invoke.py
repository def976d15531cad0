"""`mme invoke`: one InvokeEndpoint call, locally or against AWS, printing the prediction and the latency."""

from __future__ import annotations

import argparse
import sys
import time

from serve.errors import CommandError

HELP = "call InvokeEndpoint on a local server (--endpoint-url) or a real SageMaker endpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("body", help="the request body, @FILE to read a file, or - for standard input")
    parser.add_argument("--endpoint-url", help="a local server, e.g. http://127.0.0.1:8080 (default: AWS)")
    parser.add_argument("--endpoint", default="local", help="EndpointName (default: local)")
    parser.add_argument("--target-model", help="TargetModel, e.g. Chicago_IL.tar.gz")
    parser.add_argument("--content-type", default="text/csv", help="default text/csv")
    parser.add_argument("--accept", default="application/json", help="default application/json")
    parser.add_argument("--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes")
    parser.add_argument("--region", help="AWS region (default: the usual boto3 lookup)")


def read_body(spec: str) -> bytes:
    if spec == "-":
        return sys.stdin.buffer.read()
    if spec.startswith("@"):
        try:
            with open(spec[1:], "rb") as file:
                return file.read()
        except OSError as exc:
            raise CommandError(f"cannot read {spec[1:]}: {exc.strerror}") from None
    return spec.encode()


def run(args: argparse.Namespace) -> int:
    from serve.runtime_client import RuntimeCallError, invoke_endpoint

    body = read_body(args.body)
    started = time.perf_counter()
    try:
        result = invoke_endpoint(
            endpoint_url=args.endpoint_url,
            region=args.region,
            endpoint=args.endpoint,
            target_model=args.target_model,
            body=body,
            content_type=args.content_type,
            accept=args.accept,
            custom_attributes=args.custom_attributes,
        )
    except RuntimeCallError as exc:
        raise CommandError(str(exc)) from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    sys.stdout.write(result.body.decode(errors="replace").rstrip("\n") + "\n")
    print(f"{result.content_type}, {len(result.body)} bytes, took {elapsed_ms:.1f} ms", file=sys.stderr)
    return 0
