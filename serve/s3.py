"""S3 plumbing shared by the model source, training uploads and `mme add`: URL parsing, a client."""

from __future__ import annotations

from typing import Any


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


def s3_client(
    endpoint_url: str | None = None, *, connect_timeout: float = 3, read_timeout: float = 30, pool: int = 10
) -> Any:
    """An S3 client that gives up within seconds when the store is unreachable; thread-safe, so share it.

    With no endpoint_url, boto3 picks one itself: AWS_ENDPOINT_URL(_S3) if set, else AWS.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=pool,
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)
