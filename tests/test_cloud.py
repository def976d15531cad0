"""`mme push/deploy/undeploy` against moto's server on loopback, through the real CLI and real boto3 calls."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import free_port, python_server

from serve import cloud
from serve.cli import main

ROLE = "arn:aws:iam::123456789012:role/mme-execution"
PREFIX = "s3://mme-models/tenants/"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/xgboost-mme:1"
MOTO_ACCOUNT = "123456789012"

# moto 5 has no UpdateEndpoint; this server adds it, doing what SageMaker does once an update succeeded.
MOTO_WITH_UPDATE_ENDPOINT = """
import sys
from moto.core.responses import ActionResult
from moto.sagemaker.responses import SageMakerResponse
from moto.server import main

def update_endpoint(self):
    backend = self.sagemaker_backend
    name = self._get_param("EndpointName")
    backend.describe_endpoint(name)
    config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
    endpoint = backend.endpoints[name]
    endpoint.endpoint_config_name = config["EndpointConfigName"]
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    return ActionResult({"EndpointArn": endpoint.arn})

SageMakerResponse.update_endpoint = update_endpoint
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


@pytest.fixture(scope="module")
def moto_with_update_endpoint() -> Iterator[str]:
    port = free_port()
    with python_server(["-c", MOTO_WITH_UPDATE_ENDPOINT, str(port)], port) as url:
        yield url


def point_at(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    # A failing call fails at once instead of retrying with backoff.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    point_at(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture
def name() -> str:
    """An endpoint name no other test uses on the shared moto server."""
    return f"mme-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def client(service: str, endpoint_url: str):
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1")


def deploy_argv(name: str, *extra: str) -> list[str]:
    return [
        "deploy",
        "--image",
        IMAGE,
        "--role",
        ROLE,
        "--model-data-prefix",
        PREFIX,
        "--endpoint-name",
        name,
        "--poll-interval",
        "0",
        *extra,
    ]


def resources(endpoint_url: str, name: str) -> dict[str, list[str]]:
    """Every SageMaker resource deploy makes for `name`: the endpoint and its versioned configs and models."""
    sm = client("sagemaker", endpoint_url)
    listed = {
        "endpoints": ("list_endpoints", "Endpoints", "EndpointName"),
        "configs": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName"),
        "models": ("list_models", "Models", "ModelName"),
    }
    return {
        kind: sorted(
            item[key]
            for page in sm.get_paginator(operation).paginate()
            for item in page[field]
            if item[key] == name or item[key].startswith(name + "-")
        )
        for kind, (operation, field, key) in listed.items()
    }


def scaling(endpoint_url: str, name: str) -> tuple[list[dict], list[dict]]:
    aas = client("application-autoscaling", endpoint_url)
    rid = cloud.resource_id(name)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)
    return targets["ScalableTargets"], policies["ScalingPolicies"]


def error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The command's stderr, checked to be exactly one error line."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mme {command}: error: "), err
    return lines[0]


def test_deploy_creates_multi_model_endpoint_with_autoscaling(aws: str, name: str) -> None:
    argv = ["--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--autoscale", "2:5"]
    assert main(deploy_argv(name, *argv, "--target-invocations", "120")) == 0

    sm = client("sagemaker", aws)
    endpoint = sm.describe_endpoint(EndpointName=name)
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    [variant] = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"] == {"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": PREFIX}
    assert variant["ModelName"].startswith(name + "-") and config["EndpointConfigName"].startswith(name + "-")

    [target], [policy] = scaling(aws, name)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 5)
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 120
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantInvocationsPerInstance"
    )


def test_redeploy_updates_endpoint_and_deletes_old_config(
    monkeypatch: pytest.MonkeyPatch, moto_with_update_endpoint: str, name: str
) -> None:
    point_at(monkeypatch, moto_with_update_endpoint)
    assert main(deploy_argv(name, "--autoscale", "1:3", "--target-invocations", "50")) == 0
    first = resources(moto_with_update_endpoint, name)

    assert main(deploy_argv(name, "--instance-type", "ml.c5.large")) == 0

    second = resources(moto_with_update_endpoint, name)
    assert second["endpoints"] == [name]
    assert len(second["configs"]) == len(second["models"]) == 1
    assert set(second["configs"]).isdisjoint(first["configs"])
    assert set(second["models"]).isdisjoint(first["models"])
    sm = client("sagemaker", moto_with_update_endpoint)
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == second["configs"][0]
    # Deploy is declarative: this redeploy had no --autoscale.
    assert scaling(moto_with_update_endpoint, name) == ([], [])


def test_failed_update_leaves_the_running_endpoint_alone(
    aws: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy_argv(name)) == 0
    before = resources(aws, name)
    capsys.readouterr()

    # moto's server answers UpdateEndpoint with a 500: a real failure of the update call.
    assert main(deploy_argv(name, "--instance-count", "3")) == 1

    line = error_line(capsys, "deploy")
    assert "UpdateEndpoint failed" in line and "removed endpoint config" in line
    assert resources(aws, name) == before
    assert client("sagemaker", aws).describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"


@pytest.mark.parametrize("keep", [False, True])
def test_failed_deploy_removes_what_it_created_unless_kept(
    monkeypatch: pytest.MonkeyPatch, aws: str, name: str, capsys: pytest.CaptureFixture[str], keep: bool
) -> None:
    # Nothing listens there: autoscaling fails after the endpoint is InService.
    monkeypatch.setenv("AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING", f"http://127.0.0.1:{free_port()}")
    argv = deploy_argv(name, "--autoscale", "1:2", "--target-invocations", "10")

    assert main(argv + (["--keep-on-failure"] if keep else [])) == 1

    line = error_line(capsys, "deploy")
    assert "Could not connect to the endpoint URL" in line
    left = resources(aws, name)
    if keep:
        assert "--keep-on-failure" in line
        assert left["endpoints"] == [name] and len(left["configs"]) == len(left["models"]) == 1
    else:
        assert f"endpoint {name}" in line
        assert left == {"endpoints": [], "configs": [], "models": []}


def test_rejected_endpoint_config_removes_the_model(
    aws: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy_argv(name, "--instance-type", "ml.nonexistent.huge")) == 1

    line = error_line(capsys, "deploy")
    assert "CreateEndpointConfig failed: ValidationException" in line and "removed model" in line
    assert resources(aws, name) == {"endpoints": [], "configs": [], "models": []}


def test_undeploy_removes_everything_and_can_run_again(
    aws: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy_argv(name, "--autoscale", "1:2", "--target-invocations", "10")) == 0
    capsys.readouterr()

    assert main(["undeploy", name]) == 0
    out = capsys.readouterr().out
    for part in ("scaling policy", "scalable target", f"endpoint {name}", "endpoint config", "model"):
        assert f"deleted {part}" in out
    assert resources(aws, name) == {"endpoints": [], "configs": [], "models": []}
    assert scaling(aws, name) == ([], [])

    assert main(["undeploy", name]) == 0
    assert f"nothing to delete: endpoint {name} not found" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "arn:aws:iam::123:role/short-account"], "is not an IAM role ARN"),
        (["--role", "arn:aws:iam::123456789012:user/someone"], "is not an IAM role ARN"),
        (
            ["--model-data-prefix", "s3://mme-models/tenants"],
            "must be an S3 prefix like s3://my-bucket/models/",
        ),
        (["--model-data-prefix", "/local/models/"], "must be an S3 prefix like s3://my-bucket/models/"),
        (["--image", " "], "--image must be a container image URI"),
        (["--autoscale", "0:2", "--target-invocations", "5"], "1 <= MIN <= MAX"),
        (["--autoscale", "3:2", "--target-invocations", "5"], "1 <= MIN <= MAX"),
        (["--autoscale", "two", "--target-invocations", "5"], "1 <= MIN <= MAX"),
        (["--autoscale", "1:2"], "--autoscale needs --target-invocations"),
        (["--target-invocations", "5"], "--target-invocations needs --autoscale"),
        (["--autoscale", "1:2", "--target-invocations", "0"], "must be greater than 0"),
        (["--autoscale", "1:2", "--target-invocations", "5", "--no-wait"], "--autoscale needs --wait"),
        (["--endpoint-name", "bad_name"], "must be 1-63 letters, digits or hyphens"),
        (["--instance-count", "0"], "must be at least 1"),
    ],
)
def test_bad_deploy_input_is_one_line_before_any_aws_call(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    # Any AWS call would fail with a connection error instead of the expected message.
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    assert main(deploy_argv(name, *argv)) == 1
    assert message in error_line(capsys, "deploy")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repository", "Upper_Case"], "is not a valid ECR repository name"),
        (["--tag", "no/slash"], "is not a valid image tag"),
    ],
)
def test_bad_push_input_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    assert main(["push", *argv]) == 1
    assert message in error_line(capsys, "push")


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path, aws: str) -> None:
    """No credentials anywhere boto3 looks, and no instance metadata lookup off the machine."""
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    for variable in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        empty = tmp_path / variable.lower()
        empty.write_text("")
        monkeypatch.setenv(variable, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    ("command", "argv"), [("deploy", None), ("undeploy", ["undeploy", "some-endpoint"]), ("push", ["push"])]
)
def test_missing_credentials_is_one_line(
    no_aws_config: None, name: str, capsys: pytest.CaptureFixture[str], command: str, argv: list[str] | None
) -> None:
    assert main(argv or deploy_argv(name)) == 1
    assert "no AWS credentials found" in error_line(capsys, command)


def test_missing_region_is_one_line(
    monkeypatch: pytest.MonkeyPatch, no_aws_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert main(["undeploy", "some-endpoint"]) == 1
    assert "no AWS region set: pass --region" in error_line(capsys, "undeploy")


def test_ensure_repository_creates_it_once(aws: str, name: str) -> None:
    ecr = client("ecr", aws)
    uri, created = cloud.ensure_repository(ecr, name)
    again, created_again = cloud.ensure_repository(ecr, name)

    assert (created, created_again) == (True, False)
    assert uri == again == f"{MOTO_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{name}"
    [repository] = ecr.describe_repositories(repositoryNames=[name])["repositories"]
    assert repository["repositoryUri"] == uri


@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI (no engine needed)")
def test_push_without_docker_engine_is_one_line(
    monkeypatch: pytest.MonkeyPatch, aws: str, name: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An engine socket that cannot exist, so the test holds even where Docker runs.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert main(["push", "--repository", name]) == 1

    line = error_line(capsys, "push")
    assert line.startswith("mme push: error: no Docker engine reachable (docker info failed: ")
    assert line.endswith("): start Docker or set DOCKER_HOST")
    with pytest.raises(ClientError, match="RepositoryNotFoundException"):  # checked before creating it
        client("ecr", aws).describe_repositories(repositoryNames=[name])


def test_push_without_docker_cli_is_one_line(
    monkeypatch: pytest.MonkeyPatch, aws: str, name: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["push", "--repository", name]) == 1
    assert "docker CLI not found on PATH" in error_line(capsys, "push")
    with pytest.raises(ClientError, match="RepositoryNotFoundException"):
        client("ecr", aws).describe_repositories(repositoryNames=[name])
