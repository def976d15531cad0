"""`mme status`: a running server's resident models and memory, as a table, once or refreshed."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from serve.errors import CommandError

if TYPE_CHECKING:
    from rich.table import Table

HELP = "show a running server's resident models, most recently used first, and its memory and disk use"
DEFAULT_WATCH_SECONDS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=DEFAULT_WATCH_SECONDS,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C",
    )
    parser.add_argument("--limit", type=int, default=50, help="at most this many models (default 50)")


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.live import Live

    url = args.endpoint_url.rstrip("/") + "/status"

    def fetch() -> dict[str, Any]:
        try:
            response = httpx.get(url, params={"limit": args.limit}, timeout=10)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise CommandError(f"cannot reach {args.endpoint_url}: {exc}") from None
        if response.status_code != 200:
            raise CommandError(f"{url} answered {response.status_code}: {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError:
            raise CommandError(f"{url} did not answer JSON: is this an mme server?") from None

    console = Console()
    if args.watch is None:
        console.print(render(fetch()))
        return 0
    try:
        with Live(render(fetch()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.watch)
                live.update(render(fetch()), refresh=True)
    except KeyboardInterrupt:
        return 0


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _ago(timestamp: float) -> str:
    seconds = max(0.0, time.time() - timestamp)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render(status: dict[str, Any]) -> Table:
    from rich.table import Table

    totals = status["totals"]
    table = Table(
        title=f"{totals['models']} resident models, in flight: {totals['inFlight']}",
        caption=(
            f"memory {_bytes(totals['memoryUsedBytes'])} / {_bytes(totals['memoryBudgetBytes'])}   "
            f"disk cache {_bytes(totals['diskUsedBytes'])} / {_bytes(totals['diskBudgetBytes'])}   "
            f"hits {totals['cacheHits']}  misses {totals['cacheMisses']}"
        ),
    )
    table.add_column("model", overflow="fold")
    for column in ("size", "loads", "invocations", "p50 ms", "hit ratio", "last used"):
        table.add_column(column, justify="right", no_wrap=True)
    for model in status["models"]:  # the server sends them most recently used first
        p50, ratio = model["p50Ms"], model["hitRatio"]
        table.add_row(
            model["modelName"],
            _bytes(model["sizeBytes"]),
            str(model["loads"]),
            str(model["invocations"]),
            "-" if p50 is None else f"{p50:.2f}",
            "-" if ratio is None else f"{ratio:.0%}",
            _ago(model["lastUsed"]),
        )
    return table
