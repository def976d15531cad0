"""`mme demo`: the housing notebook end to end on this machine — train, serve, invoke cold then warm."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve.args import int_range
from serve.errors import CommandError

HELP = "train the city models, serve them from a folder, invoke each cold then warm, and stop"
# One house, in the training columns' order after the label: YEAR_BUILT, SQUARE_FEET, NUM_BEDROOMS,
# NUM_BATHROOMS, LOT_ACRES, GARAGE_SPACES.
HOUSE = "2006,2800,4,2.5,1.1,2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="models", help="where the artifacts go (default models/)")
    parser.add_argument(
        "--data", help="where the training CSVs go (default: a temporary folder, removed at the end)"
    )
    parser.add_argument(
        "--port", type=int_range(0, 65535), default=0, help="server port (default 0: a free one)"
    )
    parser.add_argument("--houses", type=int_range(1), default=1000, help="houses per city (default 1000)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise CommandError(f"the server at {url} was not ready after {timeout:g} s")


def run(args: argparse.Namespace) -> int:
    import httpx
    import psutil

    from serve.cli import main as mme
    from serve.runtime_client import client
    from serve.source import open_source

    out = Path(args.out)
    print("== 1. Train the city models")
    with tempfile.TemporaryDirectory(prefix="mme-demo-data-") as scratch:
        train = ["train", "--out", str(out), "--data", args.data or scratch, "--houses", str(args.houses)]
        if mme(train) != 0:
            raise CommandError("training failed")

    port = args.port or _free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n== 2. Serve {out}/ on {url}")
    command = [sys.executable, "-m", "serve.cli", "serve", "--models", str(out), "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"], env=os.environ.copy()
    )
    try:
        _wait_ready(url, server)
        print("\n== 3. Models in the source (mme ls)")
        names = [name for name, _ in open_source(str(out)).list()]
        for name, size in open_source(str(out)).list():
            print(f"  {name:28} {size / 1024:6.1f} KiB")

        print("\n== 4. Invoke each city twice: cold (download, unpack, load), then warm")
        runtime = client(url)
        latencies: dict[str, list[float]] = {"cold": [], "warm": []}
        for name in names:
            for kind in ("cold", "warm"):
                started = time.perf_counter()
                response = runtime.invoke_endpoint(
                    EndpointName="local", TargetModel=name, ContentType="text/csv", Body=HOUSE
                )
                price = float(response["Body"].read().decode().strip("[]\n"))
                took = (time.perf_counter() - started) * 1000
                latencies[kind].append(took)
                print(f"  {name:28} ${price:>12,.2f}  took {took:5.1f} ms ({kind})")
        cold, warm = statistics.median(latencies["cold"]), statistics.median(latencies["warm"])
        print(f"  median cold {cold:.1f} ms, warm {warm:.1f} ms: warm is {cold / warm:.0f}x faster")

        print("\n== 5. The same call a SageMaker notebook makes, unchanged but for endpoint_url")
        print(f'  boto3.client("sagemaker-runtime", endpoint_url="{url}").invoke_endpoint(')
        print(
            f'      EndpointName="local", TargetModel="{names[0]}", ContentType="text/csv", Body="{HOUSE}")'
        )
        body = runtime.invoke_endpoint(
            EndpointName="local", TargetModel=names[0], ContentType="text/csv", Body=HOUSE
        )
        print(f"  -> {body['Body'].read().decode().strip()}")

        print("\n== 6. Resident models")
        for model in httpx.get(url + "/models").json()["models"]:
            info = httpx.get(f"{url}/models/{model['modelName']}").json()
            size_kib = info["sizeBytes"] / 1024
            print(f"  {info['modelName']:28} {size_kib:6.1f} KiB  {info['invocations']} invocations")
        rss = psutil.Process(server.pid).memory_info().rss / 1024**2
        print(f"  server memory (RSS): {rss:.0f} MiB")
    finally:
        print("\n== 7. Stop the server (SIGTERM)")
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise CommandError("the server did not stop within 30 s of SIGTERM") from None
        print(f"  stopped, exit code {code}")
    return 0
