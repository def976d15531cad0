"""`mme add` and `mme ls` against a folder and against moto's S3."""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import free_port

from serve.commands import add, ls
from serve.errors import CommandError


def mme(command: ModuleType, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def artifact(path: Path, model: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.with_name(path.name + ".xgboost-model")
    src.write_bytes(model)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="xgboost-model")
    return path


def test_add_and_ls_with_a_folder(tmp_path: Path, capsys) -> None:
    target = tmp_path / "models"  # made by the first add
    first = artifact(tmp_path / "in" / "Austin_TX.tar.gz", b"austin")

    assert mme(add, str(first), "--to", str(target)) == 0
    assert mme(add, str(first), "--to", str(target), "--as", "v2/Chicago_IL.tar.gz") == 0
    assert (target / "Austin_TX.tar.gz").read_bytes() == first.read_bytes()
    assert (target / "v2" / "Chicago_IL.tar.gz").read_bytes() == first.read_bytes()
    assert (
        f"added Austin_TX.tar.gz ({first.stat().st_size} bytes) to folder {target}" in capsys.readouterr().out
    )

    assert mme(ls, str(target)) == 0
    size = first.stat().st_size
    assert capsys.readouterr().out.splitlines() == [
        f"Austin_TX.tar.gz      {size:>12}",
        f"v2/Chicago_IL.tar.gz  {size:>12}",
        f"2 models, {2 * size} bytes",
    ]
    assert mme(ls, str(target), "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "Austin_TX.tar.gz", "size": size},
        {"name": "v2/Chicago_IL.tar.gz", "size": size},
    ]


def test_add_to_a_folder_refuses_overwrite_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "models"
    old = artifact(tmp_path / "old" / "m.tar.gz", b"old")
    new = artifact(tmp_path / "new" / "m.tar.gz", b"new, different")
    mme(add, str(old), "--to", str(target))

    with pytest.raises(CommandError, match=r"model 'm.tar.gz' already exists in folder .*; pass --force"):
        mme(add, str(new), "--to", str(target))
    assert (target / "m.tar.gz").read_bytes() == old.read_bytes()

    assert mme(add, str(new), "--to", str(target), "--force") == 0
    assert (target / "m.tar.gz").read_bytes() == new.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["m.tar.gz"]  # no temp file left behind


@pytest.mark.parametrize("name", ["../x.tar.gz", "/etc/passwd", "a//b.tar.gz", "x.zip"])
def test_add_refuses_bad_names(tmp_path: Path, name: str) -> None:
    source = artifact(tmp_path / "in" / "m.tar.gz", b"m")

    with pytest.raises(CommandError, match="model name"):
        mme(add, str(source), "--to", str(tmp_path / "models"), "--as", name)

    assert not (tmp_path / "models").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_add_refuses_what_the_server_would_refuse(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")

    with pytest.raises(CommandError, match="junk.tar.gz: not a gzip tar archive"):
        mme(add, str(junk), "--to", str(tmp_path / "models"))
    with pytest.raises(CommandError, match="no such file"):
        mme(add, str(tmp_path / "missing.tar.gz"), "--to", str(tmp_path / "models"))
    assert not (tmp_path / "models").exists()


def test_ls_of_a_missing_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="does not exist"):
        mme(ls, str(tmp_path / "nowhere"))


def test_add_and_ls_with_s3(s3, bucket: str, moto_endpoint: str, tmp_path: Path, capsys) -> None:
    url = f"s3://{bucket}/models/"
    old = artifact(tmp_path / "old" / "m.tar.gz", b"old")
    new = artifact(tmp_path / "new" / "m.tar.gz", b"new, different")
    endpoint = ("--s3-endpoint-url", moto_endpoint)

    assert mme(add, str(old), "--to", url, *endpoint) == 0
    assert mme(add, str(old), "--to", url, "--as", "v2/x.tar.gz", *endpoint) == 0
    with pytest.raises(CommandError, match=rf"model 'm.tar.gz' already exists in {url}; pass --force"):
        mme(add, str(new), "--to", url, *endpoint)
    assert s3.get_object(Bucket=bucket, Key="models/m.tar.gz")["Body"].read() == old.read_bytes()
    assert mme(add, str(new), "--to", url, "--force", *endpoint) == 0
    assert s3.get_object(Bucket=bucket, Key="models/m.tar.gz")["Body"].read() == new.read_bytes()
    with pytest.raises(CommandError, match="model name '../x.tar.gz'"):
        mme(add, str(old), "--to", url, "--as", "../x.tar.gz", *endpoint)
    capsys.readouterr()

    assert mme(ls, url, "--json", *endpoint) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "m.tar.gz", "size": new.stat().st_size},
        {"name": "v2/x.tar.gz", "size": old.stat().st_size},
    ]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["models/m.tar.gz", "models/v2/x.tar.gz"]


@pytest.mark.timeout(30)
def test_add_and_ls_report_an_unreachable_store(tmp_path: Path) -> None:
    down = ("--s3-endpoint-url", f"http://127.0.0.1:{free_port()}")
    source = artifact(tmp_path / "m.tar.gz", b"m")

    with pytest.raises(CommandError, match="unreachable"):
        mme(ls, "s3://bucket/models/", *down)
    for force in ((), ("--force",)):  # checking for an existing model, or uploading straight away
        with pytest.raises(CommandError, match="unreachable"):
            mme(add, str(source), "--to", "s3://bucket/models/", *force, *down)


def test_add_to_a_missing_bucket_says_so(moto_endpoint: str, tmp_path: Path) -> None:
    source = artifact(tmp_path / "m.tar.gz", b"m")

    with pytest.raises(CommandError, match="upload to s3://no-such-bucket/models/ failed.*NoSuchBucket"):
        mme(add, str(source), "--to", "s3://no-such-bucket/models/", "--s3-endpoint-url", moto_endpoint)
