"""AWS side of `mme push/deploy/undeploy`: ECR repositories, SageMaker multi-model endpoints, autoscaling.

Every client comes from a boto3 session, so `AWS_ENDPOINT_URL` (and per-service variants such as
`AWS_ENDPOINT_URL_SAGEMAKER`) redirect all calls, which is how the tests reach moto.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from serve.errors import CommandError

VARIANT = "AllTraffic"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
POLICY_NAME = "invocations-per-instance"
# Statuses SageMaker leaves on its own; every other status is final for a deploy.
SETTLING = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})

ROLE_ARN = re.compile(r"arn:aws[-a-z]*:iam::\d{12}:role/[\w+=,.@/-]+")
S3_PREFIX = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(?:[^/\s]+/)*")
SAGEMAKER_NAME = re.compile(r"[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62}")
ECR_REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
MISSING = re.compile(r"could not find|not found|does not exist", re.IGNORECASE)
MAX_MESSAGE = 300


def one_line(text: str) -> str:
    """Collapse an AWS message (some are whole HTML pages) into one short line."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE, or run `aws configure`"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region set: pass --region or set AWS_REGION"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        return one_line(f"{exc.operation_name} failed: {code}: {error.get('Message', '')}")
    return one_line(str(exc))


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn botocore's exceptions into the one-line CommandError the CLI prints."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise CommandError(describe_error(exc)) from None


def session(region: str | None) -> boto3.session.Session:
    return boto3.session.Session(region_name=region)


def is_missing(exc: ClientError) -> bool:
    """True when AWS says the resource does not exist (SageMaker reports that as a ValidationException)."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    if code in {"ObjectNotFoundException", "ResourceNotFound", "ResourceNotFoundException"}:
        return True
    return code == "ValidationException" and bool(MISSING.search(error.get("Message", "")))


def delete_if_present(call: Callable[..., Any], **kwargs: Any) -> bool:
    """Run a delete call; False when the resource was already gone."""
    try:
        call(**kwargs)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True


# --- ECR -------------------------------------------------------------------------------------------------


def check_repository_name(name: str) -> None:
    if not (2 <= len(name) <= 256 and ECR_REPOSITORY.fullmatch(name)):
        raise CommandError(
            f"--repository {name!r} is not a valid ECR repository name "
            "(lowercase letters, digits, '.', '_', '-' and '/', 2-256 characters)"
        )


def ensure_repository(ecr: Any, name: str) -> tuple[str, bool]:
    """The repository's URI, creating the repository when missing; the flag says whether it was created.

    Looking first means pushing to an existing repository needs no ecr:CreateRepository permission.
    """
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"], False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "RepositoryNotFoundException":
            raise
    return ecr.create_repository(repositoryName=name)["repository"]["repositoryUri"], True


def registry_login(ecr: Any) -> tuple[str, str, str]:
    """(username, password, registry URL) for `docker login`, from an ECR authorization token."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return username, password, data["proxyEndpoint"]


# --- deploy inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Autoscale:
    min_capacity: int
    max_capacity: int
    target_invocations: float


def parse_autoscale(text: str | None, target_invocations: float | None) -> Autoscale | None:
    if text is None:
        if target_invocations is not None:
            raise CommandError("--target-invocations needs --autoscale MIN:MAX")
        return None
    low, sep, high = text.partition(":")
    try:
        low_n, high_n = int(low), int(high)
    except ValueError:
        low_n = high_n = 0
    if not sep or not 1 <= low_n <= high_n:
        raise CommandError(
            f"--autoscale {text!r} must be MIN:MAX with whole numbers 1 <= MIN <= MAX, e.g. 1:4"
        )
    if target_invocations is None:
        raise CommandError("--autoscale needs --target-invocations N (invocations per instance per minute)")
    if not target_invocations > 0:
        raise CommandError(f"--target-invocations {target_invocations:g} must be greater than 0")
    return Autoscale(low_n, high_n, target_invocations)


@dataclass(frozen=True)
class DeploySpec:
    """A validated deploy request: constructing one with bad input raises CommandError."""

    endpoint_name: str
    image: str
    role_arn: str
    model_data_prefix: str
    instance_type: str
    instance_count: int
    autoscale: Autoscale | None
    keep_on_failure: bool
    wait: bool
    timeout: float
    poll_interval: float

    def __post_init__(self) -> None:
        if not self.image.strip():
            raise CommandError("--image must be a container image URI, e.g. the one `mme push` printed")
        if not ROLE_ARN.fullmatch(self.role_arn):
            raise CommandError(
                f"--role {self.role_arn!r} is not an IAM role ARN "
                "(expected arn:aws:iam::<12-digit account>:role/<name>)"
            )
        if not S3_PREFIX.fullmatch(self.model_data_prefix):
            raise CommandError(
                f"--model-data-prefix {self.model_data_prefix!r} must be an S3 prefix like "
                "s3://my-bucket/models/ (a valid bucket name, ending in '/')"
            )
        if not SAGEMAKER_NAME.fullmatch(self.endpoint_name):
            raise CommandError(
                f"--endpoint-name {self.endpoint_name!r} must be 1-63 letters, digits or hyphens, "
                "starting and ending with a letter or digit"
            )
        if self.instance_count < 1:
            raise CommandError(f"--instance-count {self.instance_count} must be at least 1")
        if not self.timeout > 0 or self.poll_interval < 0:
            raise CommandError("--timeout must be greater than 0 and --poll-interval at least 0")
        if self.autoscale and not self.wait:
            raise CommandError(
                "--autoscale needs --wait: scaling can only be registered on an InService endpoint"
            )


def versioned_name(endpoint_name: str, now: datetime) -> str:
    """Model and endpoint-config name: the endpoint's name plus a timestamp, so redeploys never clash."""
    suffix = now.strftime("-%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"
    return endpoint_name[: 63 - len(suffix)].rstrip("-") + suffix


def resource_id(endpoint_name: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


# --- SageMaker and autoscaling ---------------------------------------------------------------------------


class DeployFailed(Exception):
    """The endpoint did not reach InService on the new configuration."""


def _describe_or_none(describe: Callable[..., dict[str, Any]], **name: str) -> dict[str, Any] | None:
    try:
        return describe(**name)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise


def describe_endpoint(sm: Any, name: str) -> dict[str, Any] | None:
    return _describe_or_none(sm.describe_endpoint, EndpointName=name)


def describe_endpoint_config(sm: Any, name: str) -> dict[str, Any] | None:
    return _describe_or_none(sm.describe_endpoint_config, EndpointConfigName=name)


def wait_for_endpoint(
    sm: Any, name: str, timeout: float, poll_interval: float, on_status: Callable[[str, float], None]
) -> dict[str, Any]:
    """DescribeEndpoint until the status settles; CommandError (nothing cleaned up) on timeout."""
    started = time.monotonic()
    while True:
        endpoint = sm.describe_endpoint(EndpointName=name)
        status = endpoint["EndpointStatus"]
        elapsed = time.monotonic() - started
        on_status(status, elapsed)
        if status not in SETTLING:
            return endpoint
        if elapsed >= timeout:
            raise CommandError(
                f"endpoint {name} still {status} after {timeout:g} s; left as is: "
                f"check it later or remove it with `mme undeploy {name}`"
            )
        time.sleep(poll_interval)


def apply_autoscaling(aas: Any, endpoint_name: str, autoscale: Autoscale) -> None:
    target = {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
    }
    aas.register_scalable_target(
        **target, MinCapacity=autoscale.min_capacity, MaxCapacity=autoscale.max_capacity
    )
    aas.put_scaling_policy(
        **target,
        PolicyName=POLICY_NAME,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": autoscale.target_invocations,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
        },
    )


def remove_autoscaling(aas: Any, endpoint_name: str, variant: str = VARIANT) -> list[str]:
    """Delete the variant's scaling policies and scalable target; what was removed, for the user."""
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint_name, variant)}
    found = aas.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[target["ResourceId"]], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    if not found:
        return []
    removed = []
    policies = aas.describe_scaling_policies(**target, ScalableDimension=DIMENSION)["ScalingPolicies"]
    for policy in policies:
        if delete_if_present(
            aas.delete_scaling_policy, **target, ScalableDimension=DIMENSION, PolicyName=policy["PolicyName"]
        ):
            removed.append(f"scaling policy {policy['PolicyName']}")
    if delete_if_present(aas.deregister_scalable_target, **target, ScalableDimension=DIMENSION):
        removed.append(f"scalable target {target['ResourceId']}")
    return removed


def config_models(config: dict[str, Any] | None) -> list[str]:
    return [variant["ModelName"] for variant in config["ProductionVariants"]] if config else []


def deploy(
    session: boto3.session.Session,
    spec: DeploySpec,
    log: Callable[[str], None],
    on_status: Callable[[str, float], None],
) -> None:
    """Create or update the endpoint to run `spec`; on failure remove what this run created, then raise."""
    sm = session.client("sagemaker")
    aas = session.client("application-autoscaling")
    name = spec.endpoint_name
    current = describe_endpoint(sm, name)
    if current and current["EndpointStatus"] != "InService":
        raise CommandError(
            f"endpoint {name} exists but is {current['EndpointStatus']}; only an InService endpoint can be "
            f"redeployed (remove it with `mme undeploy {name}`)"
        )
    old_config = describe_endpoint_config(sm, current["EndpointConfigName"]) if current else None
    new_name = versioned_name(name, datetime.now(UTC))
    # What this run created, in creation order; rolled back newest first on failure.
    created: list[tuple[str, str]] = []
    # Once an existing endpoint serves the new config, undoing would pull the model out from under it.
    serving_new = False
    try:
        sm.create_model(
            ModelName=new_name,
            ExecutionRoleArn=spec.role_arn,
            PrimaryContainer={
                "Image": spec.image,
                "Mode": "MultiModel",
                "ModelDataUrl": spec.model_data_prefix,
            },
        )
        created.append(("model", new_name))
        log(f"created model {new_name}")
        sm.create_endpoint_config(
            EndpointConfigName=new_name,
            ProductionVariants=[
                {
                    "VariantName": VARIANT,
                    "ModelName": new_name,
                    "InstanceType": spec.instance_type,
                    "InitialInstanceCount": spec.instance_count,
                }
            ],
        )
        created.append(("endpoint config", new_name))
        log(f"created endpoint config {new_name} ({spec.instance_count} x {spec.instance_type})")
        if current:
            old_type = old_config["ProductionVariants"][0].get("InstanceType") if old_config else None
            if old_type != spec.instance_type:
                # SageMaker refuses to change the instance type of a variant registered for autoscaling.
                for item in remove_autoscaling(aas, name):
                    log(f"removed {item} before changing the instance type")
            sm.update_endpoint(EndpointName=name, EndpointConfigName=new_name)
            log(f"updating endpoint {name} to {new_name}")
        else:
            sm.create_endpoint(EndpointName=name, EndpointConfigName=new_name)
            created.append(("endpoint", name))
            log(f"creating endpoint {name}")
        if not spec.wait:
            log(f"not waiting: follow it with `aws sagemaker describe-endpoint --endpoint-name {name}`")
            if old_config:
                log(
                    f"old endpoint config {old_config['EndpointConfigName']} and its models stay: delete them"
                    " once the update is done"
                )
            return
        endpoint = wait_for_endpoint(sm, name, spec.timeout, spec.poll_interval, on_status)
        serving_new = endpoint["EndpointConfigName"] == new_name
        if endpoint["EndpointStatus"] != "InService" or not serving_new:
            raise DeployFailed(
                f"endpoint {name} is {endpoint['EndpointStatus']} on config "
                f"{endpoint['EndpointConfigName']}: {endpoint.get('FailureReason') or 'no reason given'}"
            )
        log(f"endpoint {name} is InService")
        if current:
            delete_replaced(sm, old_config, keep=new_name, log=log)
        if spec.autoscale:
            if not current:
                created.append(("autoscaling of endpoint", name))
            apply_autoscaling(aas, name, spec.autoscale)
            log(
                f"autoscaling {spec.autoscale.min_capacity}-{spec.autoscale.max_capacity} instances at "
                f"{spec.autoscale.target_invocations:g} invocations per instance per minute"
            )
        else:
            # Deploy is declarative: no --autoscale means no autoscaling afterwards.
            for item in remove_autoscaling(aas, name):
                log(f"removed {item}")
    except (BotoCoreError, ClientError, DeployFailed) as exc:
        reason = describe_error(exc)
        to_undo = [] if current and serving_new else created
        if not to_undo:
            raise CommandError(reason) from None
        if spec.keep_on_failure:
            kept = ", ".join(f"{kind} {item}" for kind, item in to_undo)
            raise CommandError(f"{reason}; kept {kept} (--keep-on-failure)") from None
        raise CommandError(f"{reason}; {roll_back(sm, aas, to_undo)}") from None


def roll_back(sm: Any, aas: Any, created: list[tuple[str, str]]) -> str:
    """Delete what a failed deploy created, newest first; a summary for the error line."""
    deletes = {
        "autoscaling of endpoint": lambda item: remove_autoscaling(aas, item),
        "endpoint": lambda item: sm.delete_endpoint(EndpointName=item),
        "endpoint config": lambda item: sm.delete_endpoint_config(EndpointConfigName=item),
        "model": lambda item: sm.delete_model(ModelName=item),
    }
    done, failed = [], []
    for kind, item in reversed(created):
        try:
            deletes[kind](item)
            done.append(f"{kind} {item}")
        except (BotoCoreError, ClientError) as exc:
            failed.append(f"could not remove {kind} {item} ({describe_error(exc)})")
    return "; ".join(([f"removed {', '.join(done)}"] if done else []) + failed)


def delete_replaced(
    sm: Any, old_config: dict[str, Any] | None, keep: str, log: Callable[[str], None]
) -> None:
    """After an update, delete the config and models the endpoint no longer uses; failures only warn."""
    if not old_config:
        return
    name = old_config["EndpointConfigName"]
    steps = [("endpoint config", name, lambda: sm.delete_endpoint_config(EndpointConfigName=name))]
    steps += [
        ("model", model, lambda model=model: sm.delete_model(ModelName=model))
        for model in config_models(old_config)
        if model != keep
    ]
    for kind, item, delete in steps:
        try:
            delete()
            log(f"deleted old {kind} {item}")
        except ClientError as exc:
            if not is_missing(exc):
                log(f"warning: could not delete old {kind} {item}: {describe_error(exc)}")


def undeploy(session: boto3.session.Session, name: str) -> list[str]:
    """Delete the endpoint, its autoscaling, its config and its models, skipping parts already gone.

    Returns what was deleted; empty when nothing was left.
    """
    sm = session.client("sagemaker")
    aas = session.client("application-autoscaling")
    endpoint = describe_endpoint(sm, name)
    variants = {VARIANT} | {
        variant["VariantName"] for variant in (endpoint or {}).get("ProductionVariants", [])
    }
    removed = [item for variant in sorted(variants) for item in remove_autoscaling(aas, name, variant)]
    if endpoint:
        config = describe_endpoint_config(sm, endpoint["EndpointConfigName"])
        if delete_if_present(sm.delete_endpoint, EndpointName=name):
            removed.append(f"endpoint {name}")
        if config and delete_if_present(
            sm.delete_endpoint_config, EndpointConfigName=config["EndpointConfigName"]
        ):
            removed.append(f"endpoint config {config['EndpointConfigName']}")
        removed += [
            f"model {model}"
            for model in config_models(config)
            if delete_if_present(sm.delete_model, ModelName=model)
        ]
    return removed
