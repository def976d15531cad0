"""`mme invoke`: one InvokeEndpoint call, locally or against AWS, printing the prediction and the latency."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from serve.args import int_range
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
    parser.add_argument(
        "--repeat",
        type=int_range(1, 100_000),
        default=1,
        metavar="N",
        help="make the call N times and print p50/p99 latency (default 1)",
    )


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
    from botocore.exceptions import BotoCoreError

    from serve.runtime_client import RuntimeCallError, client, invoke_endpoint

    body = read_body(args.body)
    try:
        runtime = client(args.endpoint_url, args.region)
    except BotoCoreError as exc:
        raise CommandError(str(exc)) from None
    latencies = []
    for _ in range(args.repeat):
        # Only the call is timed: making the client costs far more than a warm prediction.
        started = time.perf_counter()
        try:
            result = invoke_endpoint(
                runtime,
                endpoint=args.endpoint,
                target_model=args.target_model,
                body=body,
                content_type=args.content_type,
                accept=args.accept,
                custom_attributes=args.custom_attributes,
            )
        except RuntimeCallError as exc:
            raise CommandError(str(exc)) from None
        latencies.append((time.perf_counter() - started) * 1000)
    sys.stdout.write(result.body.decode(errors="replace").rstrip("\n") + "\n")
    print(f"{result.content_type}, {len(result.body)} bytes, {describe(latencies)}", file=sys.stderr)
    return 0


def describe(latencies_ms: list[float]) -> str:
    """'took 2.1 ms' for one call; the first call (it opens the connection), p50 and p99 for many."""
    if len(latencies_ms) == 1:
        return f"took {latencies_ms[0]:.1f} ms"
    p99 = statistics.quantiles(latencies_ms, n=100, method="inclusive")[98]
    return (
        f"{len(latencies_ms)} calls: first {latencies_ms[0]:.1f} ms, "
        f"p50 {statistics.median(latencies_ms):.1f} ms, p99 {p99:.1f} ms, max {max(latencies_ms):.1f} ms"
    )
