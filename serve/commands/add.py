"""`mme add`: publish a local artifact into a model source, as SageMaker's MultiDataModel.add_model does."""

from __future__ import annotations

import argparse
from pathlib import Path

from serve.errors import CommandError

HELP = "copy a model artifact (.tar.gz) into a folder or s3://bucket/prefix/ model source"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="a SageMaker model artifact, e.g. model.tar.gz")
    parser.add_argument("--to", required=True, metavar="SRC", help="a folder or s3://bucket/prefix/")
    parser.add_argument(
        "--as",
        dest="name",
        metavar="NAME",
        help="TargetModel name, may contain '/' (default: the file's name)",
    )
    parser.add_argument("--force", action="store_true", help="replace a model of the same name")
    parser.add_argument(
        "--s3-endpoint-url", help="an S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )


def run(args: argparse.Namespace) -> int:
    from serve.source import BadArtifact, ModelExists, SourceError, open_source, validate_name
    from serve.unpack import MAX_MEMBERS, MAX_UNPACKED_BYTES, open_archive

    artifact: Path = args.artifact
    if not artifact.is_file():
        raise CommandError(f"{artifact}: no such file")
    name = args.name or artifact.name
    try:
        validate_name(name)
        # Refuse what the server would refuse, before it reaches the store.
        with open_archive(artifact, max_bytes=MAX_UNPACKED_BYTES, max_members=MAX_MEMBERS):
            pass
        source = open_source(args.to, s3_endpoint_url=args.s3_endpoint_url)
        source.put(name, artifact, overwrite=args.force)
    except BadArtifact as exc:
        raise CommandError(f"{artifact}: {exc}") from None
    except ModelExists as exc:
        raise CommandError(f"{exc}; pass --force to replace it") from None
    except SourceError as exc:
        raise CommandError(str(exc)) from None
    print(f"added {name} ({artifact.stat().st_size} bytes) to {source.describe()}")
    return 0
