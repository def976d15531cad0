"""Uploads of trained artifacts to S3 or any S3-compatible store, with progress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve.errors import CommandError
from serve.s3 import parse_s3_url, s3_client

__all__ = ["check_bucket", "parse_s3_url", "s3_client", "upload_files"]

if TYPE_CHECKING:
    from rich.console import Console


def check_bucket(client: Any, bucket: str) -> None:
    """Fail with one line, before anything is trained, when the bucket is missing or out of reach."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise CommandError(
            f"no AWS credentials to upload to s3://{bucket}/ (environment, profile or role)"
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise CommandError(f"bucket {bucket} does not exist: create it first") from None
        raise CommandError(f"s3://{bucket}/ cannot be used: {' '.join(str(exc).split())}") from None
    except BotoCoreError as exc:
        raise CommandError(f"s3://{bucket}/ is unreachable: {' '.join(str(exc).split())}") from None


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
