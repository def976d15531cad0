"""`mme status`: a running server's resident models and memory, as a table, once or refreshed."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from serve.args import int_range, positive_float
from serve.errors import CommandError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

HELP = "show a running server's resident models, most recently used first, and its memory and disk use"
DEFAULT_WATCH_SECONDS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=positive_float,
        const=DEFAULT_WATCH_SECONDS,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C, also while it is down",
    )
    parser.add_argument(
        "--limit", type=int_range(1), default=50, help="at most this many models (default 50)"
    )


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

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
        console.print(render(fetch(), console.width))
        return 0

    def snapshot() -> RenderableType:
        try:
            return render(fetch(), console.width)
        except CommandError as exc:  # the server may come back: say it is down and keep watching
            return Text(f"{time.strftime('%H:%M:%S')} down: {exc}; retrying every {args.watch:g} s")

    try:
        if console.is_terminal:
            with Live(snapshot(), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(args.watch)
                    live.update(snapshot(), refresh=True)
        else:  # a file or a pipe: one snapshot after the other, each written out at once
            while True:
                console.print(f"--- {time.strftime('%H:%M:%S')}")
                console.print(snapshot())
                sys.stdout.flush()
                time.sleep(args.watch)
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


# Columns dropped, in this order, when the table would not fit the terminal whole.
OPTIONAL_COLUMNS = ("loads", "hit ratio", "last used", "p50 ms", "size", "invocations")


def render(status: dict[str, Any], width: int = 80) -> Table:
    from rich.table import Table

    totals, models = status["totals"], status["models"]  # the server sends them most recently used first
    caption = (
        f"memory {_bytes(totals['memoryUsedBytes'])} / {_bytes(totals['memoryBudgetBytes'])}   "
        f"disk cache {_bytes(totals['diskUsedBytes'])} / {_bytes(totals['diskBudgetBytes'])}   "
        f"hits {totals['cacheHits']}  misses {totals['cacheMisses']}"
    )
    if len(models) < totals["models"]:
        caption += f"\nshowing the {len(models)} most recently used of {totals['models']} (--limit)"
    columns = {
        "model": [m["modelName"] for m in models],
        "size": [_bytes(m["sizeBytes"]) for m in models],
        "loads": [str(m["loads"]) for m in models],
        "invocations": [str(m["invocations"]) for m in models],
        "p50 ms": ["-" if m["p50Ms"] is None else f"{m['p50Ms']:.2f}" for m in models],
        "hit ratio": ["-" if m["hitRatio"] is None else f"{m['hitRatio']:.0%}" for m in models],
        "last used": [_ago(m["lastUsed"]) for m in models],
    }
    # Whole names matter more than every statistic: drop columns rather than fold names mid-word.
    for optional in OPTIONAL_COLUMNS:
        if _table_width(columns) <= width:
            break
        del columns[optional]
    title = f"{totals['models']} resident models, in flight: {totals['inFlight']}"
    table = Table(title=title, caption=caption)
    for header in columns:
        if header == "model":
            table.add_column(header, no_wrap=True, overflow="ellipsis")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for cells in zip(*columns.values(), strict=True):
        table.add_row(*cells)
    return table


def _table_width(columns: dict[str, list[str]]) -> int:
    """Rich's box table: each column is its widest cell plus one space each side and a rule."""
    return 1 + sum(max(map(len, [header, *cells])) + 3 for header, cells in columns.items())
