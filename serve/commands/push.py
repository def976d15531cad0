"""`mme push`: build the server image and push it to an ECR repository, creating the repository if needed."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from serve.errors import CommandError

HELP = "build the server image from container/Dockerfile and push it to Amazon ECR"

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "container" / "Dockerfile"
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DOCKER_INFO_TIMEOUT_S = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository", default="xgboost-mme", help="ECR repository name (default: %(default)s)"
    )
    parser.add_argument("--tag", default="latest", help="image tag (default: %(default)s)")
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")


def docker_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise CommandError("docker CLI not found on PATH: install Docker to build and push the image")
    return docker


def check_engine(docker: str) -> None:
    """Fail with one line when no Docker engine answers, before anything slow starts."""
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_INFO_TIMEOUT_S,
        )
        failure = (
            "" if result.returncode == 0 else result.stderr or result.stdout or f"exit {result.returncode}"
        )
    except subprocess.TimeoutExpired:
        failure = f"no answer within {DOCKER_INFO_TIMEOUT_S} s"
    if failure:
        # docker prints multi-line errors; the first line names the engine it tried.
        reason = next(line.strip() for line in failure.splitlines() if line.strip())
        raise CommandError(
            f"no Docker engine reachable (docker info failed: {reason}): start Docker or set DOCKER_HOST"
        )


def docker_step(docker: str, *argv: str, stdin: str | None = None) -> None:
    """Run one docker command with its output on the terminal; one error line when it fails."""
    result = subprocess.run([docker, *argv], input=stdin, text=True)
    if result.returncode != 0:
        raise CommandError(f"docker {argv[0]} failed (exit {result.returncode}); see its output above")


def run(args: argparse.Namespace) -> int:
    from serve import cloud

    cloud.check_repository_name(args.repository)
    if not DOCKER_TAG.fullmatch(args.tag):
        raise CommandError(f"--tag {args.tag!r} is not a valid image tag (letters, digits, '_', '.', '-')")
    # Every precondition before the first side effect, so a failed push leaves no repository behind.
    if not DOCKERFILE.is_file():
        raise CommandError(f"{DOCKERFILE} not found: run `mme push` from a checkout of the project")
    with cloud.aws_errors():
        ecr = cloud.session(args.region).client("ecr")
        username, password, registry = cloud.registry_login(ecr)  # also proves the credentials work
        docker = docker_cli()
        check_engine(docker)
        repository_uri, created = cloud.ensure_repository(ecr, args.repository)
        print(f"{'created' if created else 'using'} ECR repository {repository_uri}", flush=True)
    image = f"{repository_uri}:{args.tag}"
    docker_step(docker, "login", "--username", username, "--password-stdin", registry, stdin=password)
    # SageMaker runs linux/amd64 instances; building for it also works on arm64 laptops.
    docker_step(docker, "build", "--platform", "linux/amd64", "-f", str(DOCKERFILE), "-t", image, str(ROOT))
    docker_step(docker, "push", image)
    print(f"pushed {image}")
    return 0
