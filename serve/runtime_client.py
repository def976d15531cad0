"""A sagemaker-runtime client for a local server or AWS, and its failures as one readable line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class RuntimeCallError(Exception):
    pass


@dataclass(frozen=True)
class Result:
    body: bytes
    content_type: str


def client(endpoint_url: str | None, region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    # Local servers need no real credentials; boto3 still insists on some to sign with.
    local = {"aws_access_key_id": "local", "aws_secret_access_key": "local"} if endpoint_url else {}
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=endpoint_url,
        region_name=region or ("us-east-1" if endpoint_url else None),
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=120),
        **local,
    )


def invoke_endpoint(
    runtime: Any,
    *,
    endpoint: str,
    target_model: str | None,
    body: bytes,
    content_type: str,
    accept: str,
    custom_attributes: str | None = None,
) -> Result:
    from botocore.exceptions import BotoCoreError, ClientError

    kwargs: dict[str, Any] = {
        "EndpointName": endpoint,
        "Body": body,
        "ContentType": content_type,
        "Accept": accept,
    }
    if target_model:
        kwargs["TargetModel"] = target_model
    if custom_attributes:
        kwargs["CustomAttributes"] = custom_attributes
    try:
        response = runtime.invoke_endpoint(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        original = exc.response.get("OriginalMessage")
        detail = f" (model said {exc.response.get('OriginalStatusCode')}: {original})" if original else ""
        raise RuntimeCallError(f"{error.get('Code')}: {error.get('Message')}{detail}") from None
    except BotoCoreError as exc:
        raise RuntimeCallError(str(exc)) from None
    return Result(response["Body"].read(), response.get("ContentType", ""))
