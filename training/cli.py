"""`mme train`: synthetic data per location, one model each in parallel, artifacts, optional upload."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from serve.errors import CommandError

HELP = "Generate house-price data per location, train one XGBoost model each, write (and upload) artifacts."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--locations",
        metavar="A,B,...",
        help="comma-separated location names, e.g. NewYork_NY,Chicago_IL (default: the first four)",
    )
    which.add_argument("--all", action="store_true", help="train all ten locations")
    parser.add_argument(
        "--houses", type=int, default=1000, help="houses generated per location (default 1000)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="same seed, byte-identical data files (default 7)"
    )
    parser.add_argument("--data", type=Path, default=Path("data"), help="CSV channel folders (default data/)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="artifacts folder (default models/)")
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hyperparameter, e.g. --hp max_depth=6 (repeatable)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="locations trained at once (default: core count)"
    )
    parser.add_argument(
        "--to", metavar="s3://BUCKET/PREFIX/", help="also upload each artifact under this prefix"
    )
    parser.add_argument(
        "--s3-endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )


def _locations(args: argparse.Namespace) -> list[str]:
    from training.data import DEFAULT_LOCATIONS, LOCATIONS

    if args.all:
        return list(LOCATIONS)
    if args.locations is None:
        return list(DEFAULT_LOCATIONS)
    names = [name.strip() for name in args.locations.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOCATIONS]
    if unknown or not names:
        raise CommandError(
            f"unknown location {', '.join(unknown) or '(none given)'}; known: {', '.join(LOCATIONS)}"
        )
    return list(dict.fromkeys(names))


def _hp_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--hp expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def _writable_folder(folder: Path, flag: str) -> None:
    # Fail before any training rather than after it.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CommandError(f"{flag} {folder} is not a writable folder: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from rich.console import Console
    from rich.table import Table

    from training import data, package, train, upload

    locations = _locations(args)
    if args.houses < data.MIN_HOUSES:
        raise CommandError(f"--houses must be at least {data.MIN_HOUSES}, got {args.houses}")
    jobs = (os.cpu_count() or 1) if args.jobs is None else args.jobs
    if jobs < 1:
        raise CommandError(f"--jobs must be at least 1, got {jobs}")
    hp = train.hyperparameters(_hp_overrides(args.hp))
    destination = client = None
    if args.to:
        try:
            destination = upload.parse_s3_url(args.to)
        except ValueError as exc:
            raise CommandError(f"--to: {exc}") from None
        client = upload.s3_client(args.s3_endpoint_url)
        upload.check_bucket(client, destination[0])
    _writable_folder(args.data, "--data")
    _writable_folder(args.out, "--out")

    console = Console()
    for location in locations:
        data.write_location(args.data, location, args.houses, args.seed)
    console.print(f"wrote {len(locations)} x {args.houses} houses under {args.data}/, training...")

    results = []
    # spawn: a forked child of a process that already ran OpenMP (e.g. a test, or a notebook) can hang in it.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(locations)), mp_context=context) as pool:
        futures = [pool.submit(train.train_location, loc, args.data, args.out, hp) for loc in locations]
        try:
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                console.print(
                    f"[green]done[/] {result['location']:<16} {result['rounds']:>3} rounds  "
                    f"test RMSE {result['test_rmse']:>10,.0f}  {result['seconds']:.2f}s"
                )
        except BrokenProcessPool:
            raise CommandError("a training worker process died (out of memory?)") from None
        finally:
            for future in futures:
                future.cancel()

    results.sort(key=lambda result: locations.index(result["location"]))
    package.write_atomic(args.out / "metrics.json", json.dumps(results, indent=2).encode() + b"\n")
    table = Table(title=f"{len(results)} models in {args.out}/")
    for header in ("location", "rows", "rounds", "test RMSE", "test MAE", "seconds"):
        table.add_column(header, justify="left" if header == "location" else "right")
    for r in results:
        table.add_row(
            r["location"],
            str(r["rows"]),
            str(r["rounds"]),
            f"{r['test_rmse']:,.0f}",
            f"{r['test_mae']:,.0f}",
            f"{r['seconds']:.2f}",
        )
    console.print(table)

    if destination:
        bucket, prefix = destination
        files = [args.out / f"{location}.tar.gz" for location in locations]
        urls = upload.upload_files(client, files, bucket, prefix, console)
        console.print(f"uploaded {len(urls)} artifacts to s3://{bucket}/{prefix}")
    return 0
