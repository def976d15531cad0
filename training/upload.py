"""S3 helpers: a fail-fast client for AWS or any S3-compatible store, URL parsing, uploads with progress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve.errors import CommandError

if TYPE_CHECKING:
    from rich.console import Console


def parse_s3_url(url: str) -> tuple[str, str]:
    """('bucket', 'prefix/') from 's3://bucket/prefix/'. The prefix is '' or ends with '/', as MME needs."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an S3 URL (expected s3://bucket/prefix/): {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in S3 URL {url!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client that gives up within seconds when the endpoint is unreachable.

    With no endpoint_url, boto3 picks one itself: AWS_ENDPOINT_URL(_S3) if set, else AWS.
    """
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def upload_files(client: Any, files: Sequence[Path], bucket: str, prefix: str, console: Console) -> list[str]:
    """Upload each file as s3://bucket/<prefix><file name>, with a progress bar; returns the URLs."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    urls = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(
            f"upload to s3://{bucket}/{prefix}", total=sum(f.stat().st_size for f in files)
        )
        for path in files:
            key = prefix + path.name
            try:
                client.upload_file(str(path), bucket, key, Callback=lambda sent: progress.advance(task, sent))
            except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
                reason = " ".join(str(exc).split())
                raise CommandError(f"upload of {path} to s3://{bucket}/{key} failed: {reason}") from None
            urls.append(f"s3://{bucket}/{key}")
    return urls
