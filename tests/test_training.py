"""`mme train` end to end: synthetic data, splits, artifacts, metrics, bad input, and upload to moto's S3."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from conftest import free_port

from serve.cli import main
from serve.errors import CommandError
from training import data, package, train, upload

HOUSES = 200


def run_train(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mme train: error: ")
    for name in names:
        assert name in lines[0]


def channel_rows(data_dir: Path, location: str, channel: str) -> list[tuple[float, ...]]:
    text = data.channel_file(data_dir, location, channel).read_text()
    return [tuple(float(cell) for cell in line.split(",")) for line in text.splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, str]:
    """One `mme train` run with the default locations, shared by the tests that only read its output."""
    root = tmp_path_factory.mktemp("train")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["train", "--houses", str(HOUSES), "--data", str(root / "data"), "--out", str(root / "models")]
        )
    assert code == 0
    return root / "data", root / "models", out.getvalue()


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path):
    # One run in a fresh interpreter: it salts str hashes differently, so hash()-based seeds would differ.
    script = "import sys; from pathlib import Path; from training import data; "
    script += "data.write_location(Path(sys.argv[1]), 'Phoenix_AZ', 200, 7)"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a")], check=True, cwd=Path(__file__).parent.parent
    )
    data.write_location(tmp_path / "b", "Phoenix_AZ", HOUSES, 7)
    data.write_location(tmp_path / "c", "Phoenix_AZ", HOUSES, 8)
    runs = {
        name: [
            data.channel_file(tmp_path / name, "Phoenix_AZ", channel).read_bytes()
            for channel in data.CHANNELS
        ]
        for name in "abc"
    }
    assert runs["a"] == runs["b"]
    assert all(a != c for a, c in zip(runs["a"], runs["c"], strict=True))


def test_locations_get_different_data(tmp_path):
    first = data.write_location(tmp_path, "Dallas_TX", HOUSES, 7)["train"].read_bytes()
    second = data.write_location(tmp_path, "Phoenix_AZ", HOUSES, 7)["train"].read_bytes()
    assert first != second


def test_split_is_60_30_10_disjoint_and_complete(tmp_path):
    data.write_location(tmp_path, "Houston_TX", 1000, 7)
    rows = {channel: channel_rows(tmp_path, "Houston_TX", channel) for channel in data.CHANNELS}
    assert [len(rows[channel]) for channel in data.CHANNELS] == [600, 300, 100]
    sets = {channel: set(rows[channel]) for channel in data.CHANNELS}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert len(sets["train"] | sets["val"] | sets["test"]) == 1000


def test_rows_follow_the_notebook_formula(tmp_path):
    data.write_location(tmp_path, "SanDiego_CA", 1000, 3)
    lines = data.channel_file(tmp_path, "SanDiego_CA", "train").read_text().splitlines()
    assert all(len(cell.split(".")[1]) == 2 for cell in lines[0].split(","))  # two decimals, no header
    rows = [row for channel in data.CHANNELS for row in channel_rows(tmp_path, "SanDiego_CA", channel)]
    for price, year, square_feet, bedrooms, bathrooms, lot, garage in rows:
        expected = int(
            int(square_feet * 150)
            + 10000 * bedrooms
            + 15000 * bathrooms
            + 15000 * lot
            + 15000 * garage
            - 5000 * (2019 - year)
        )
        assert price == expected
    columns = np.array(rows).T
    # Every value of each inclusive range shows up in 1000 houses, and nothing outside it.
    assert set(columns[3]) == {2, 3, 4, 5, 6}
    assert set(columns[4]) == {1, 1.5, 2, 2.5, 3}
    assert set(columns[6]) == {0, 1, 2, 3}
    assert columns[1].max() == 2019
    assert 2800 < columns[2].mean() < 3200


def test_default_run_writes_four_artifacts_metrics_and_a_table(trained):
    data_dir, models, output = trained
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [f"{loc}.tar.gz" for loc in data.DEFAULT_LOCATIONS] + ["metrics.json"]
    )
    metrics = json.loads((models / "metrics.json").read_text())
    assert [m["location"] for m in metrics] == list(data.DEFAULT_LOCATIONS)
    for m in metrics:
        assert set(m) == {"location", "rows", "rounds", "test_rmse", "test_mae", "seconds"}
        assert m["rows"] == 0.6 * HOUSES
        assert 1 <= m["rounds"] <= train.DEFAULTS["num_round"]
        assert 0 < m["test_mae"] <= m["test_rmse"]
        assert m["location"] in output
    assert "test RMSE" in output
    for location in data.DEFAULT_LOCATIONS:
        for channel in data.CHANNELS:
            assert data.channel_file(data_dir, location, channel).is_file()


def test_artifact_is_one_xgboost_model_that_predicts_prices(trained):
    data_dir, models, _ = trained
    metrics = {m["location"]: m for m in json.loads((models / "metrics.json").read_text())}
    for location in data.DEFAULT_LOCATIONS:
        with tarfile.open(models / f"{location}.tar.gz", "r:gz") as tar:
            assert tar.getnames() == ["xgboost-model"]
            member = tar.getmember("xgboost-model")
            assert member.isfile()
            raw = tar.extractfile(member).read()
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        assert booster.num_boosted_rounds() == metrics[location]["rounds"]
        test = data.read_channel(data.channel_file(data_dir, location, "test").parent, "test")
        errors = booster.predict(xgb.DMatrix(test.features)) - test.labels
        assert np.mean(np.abs(errors)) < 0.1 * np.mean(test.labels)
        assert np.mean(np.abs(errors)) == pytest.approx(metrics[location]["test_mae"], abs=0.01)


def test_hyperparameters_parse_numbers_and_the_notebook_objective():
    hp = train.hyperparameters(
        {"max_depth": "3", "eta": "0.5", "objective": "reg:linear", "tree_method": "hist"}
    )
    assert hp["max_depth"] == 3 and isinstance(hp["max_depth"], int)
    assert hp["eta"] == 0.5
    assert hp["objective"] == "reg:squarederror"
    assert hp["tree_method"] == "hist"
    assert hp["num_round"] == 25 and hp["early_stopping_rounds"] == 5 and hp["subsample"] == 0.8


@pytest.mark.parametrize(
    ("hp", "name"),
    [
        ("max_depth=-1", "max_depth"),
        ("eta=fast", "eta"),
        ("gamma=nan", "gamma"),
        ("num_round=2.5", "num_round"),
    ],
)
def test_bad_hyperparameter_is_one_line_naming_it(capsys, tmp_path, hp, name):
    code, _, err = run_train(capsys, "--hp", hp, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, name)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--locations", "NewYork_NY,Atlantis_GA"], ["Atlantis_GA"]),
        (["--houses", "0"], ["--houses", "0"]),
        (["--hp", "max_depth"], ["--hp", "max_depth"]),
        (["--jobs", "0"], ["--jobs"]),
        (["--to", "http://bucket/prefix/"], ["--to", "s3://"]),
    ],
)
def test_bad_argument_is_one_line_naming_it(capsys, tmp_path, argv, names):
    code, _, err = run_train(capsys, *argv, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err, *names)
    assert not list(tmp_path.rglob("*.tar.gz"))


def test_hyperparameter_xgboost_rejects_in_a_worker_is_one_line(capsys, tmp_path):
    code, _, err = run_train(
        capsys,
        *("--locations", "Dallas_TX", "--houses", str(HOUSES), "--hp", "subsample=3"),
        *("--data", str(tmp_path / "d"), "--out", str(tmp_path / "m")),
    )
    assert_one_line_error(code, err, "subsample")
    assert list((tmp_path / "m").iterdir()) == []


def test_unwritable_out_is_one_line_and_writes_no_artifact(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_train(capsys, "--data", str(tmp_path / "d"), "--out", str(blocker / "models"))
    assert_one_line_error(code, err, "--out", str(blocker / "models"))
    assert not list(tmp_path.rglob("*.tar.gz"))


def test_failed_write_leaves_neither_file_nor_temp(tmp_path):
    target = tmp_path / "NewYork_NY.tar.gz"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(CommandError, match="NewYork_NY.tar.gz"):
        package.write_artifact(target, b"model bytes")
    assert [p.name for p in tmp_path.iterdir()] == ["NewYork_NY.tar.gz"]
    assert target.is_dir() and not list(target.iterdir())


def test_parse_s3_url():
    assert upload.parse_s3_url("s3://bucket/mme/models/") == ("bucket", "mme/models/")
    assert upload.parse_s3_url("s3://bucket/mme") == ("bucket", "mme/")
    assert upload.parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("bucket/prefix", "s3://", "s3:///prefix/"):
        with pytest.raises(ValueError):
            upload.parse_s3_url(bad)


def test_upload_to_s3_puts_each_artifact_under_the_prefix(capsys, tmp_path, moto_endpoint, s3, bucket):
    code, out, err = run_train(
        capsys,
        "--locations",
        "Chicago_IL",
        "--houses",
        str(HOUSES),
        "--hp",
        "num_round=3",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "models"),
        "--to",
        f"s3://{bucket}/mme/models/",
        "--s3-endpoint-url",
        moto_endpoint,
    )
    assert code == 0, err
    assert f"s3://{bucket}/mme/models/" in out
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["mme/models/Chicago_IL.tar.gz"]
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    assert body == (tmp_path / "models" / "Chicago_IL.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        booster = xgb.Booster()
        booster.load_model(bytearray(tar.extractfile("xgboost-model").read()))
    assert booster.num_boosted_rounds() == 3


def test_s3_client_honours_aws_endpoint_url(monkeypatch, tmp_path, moto_endpoint, s3, bucket):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    artifact = tmp_path / "Dallas_TX.tar.gz"
    package.write_artifact(artifact, b"model bytes")
    urls = upload.upload_files(upload.s3_client(None), [artifact], bucket, "p/", _quiet_console())
    assert urls == [f"s3://{bucket}/p/Dallas_TX.tar.gz"]
    assert s3.get_object(Bucket=bucket, Key="p/Dallas_TX.tar.gz")["Body"].read() == artifact.read_bytes()


def test_unreachable_s3_endpoint_is_one_line(capsys, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = run_train(
        capsys,
        "--locations",
        "Dallas_TX",
        "--houses",
        str(HOUSES),
        "--hp",
        "num_round=2",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "models"),
        "--to",
        "s3://bucket/p/",
        "--s3-endpoint-url",
        endpoint,
    )
    assert_one_line_error(code, err, "s3://bucket/", endpoint)
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()  # checked before training


def test_missing_bucket_or_credentials_fail_before_training(capsys, tmp_path, moto_endpoint):
    argv = ["--locations", "Dallas_TX", "--houses", str(HOUSES), "--data", str(tmp_path / "data")]
    argv += ["--out", str(tmp_path / "models"), "--s3-endpoint-url", moto_endpoint]
    code, _, err = run_train(capsys, *argv, "--to", "s3://no-such-bucket-here/p/")
    assert_one_line_error(code, err, "bucket no-such-bucket-here does not exist")

    # A process of its own: boto3's default session keeps the credentials it found in this one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}  # no instance-role lookup
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "train", *argv, "--to", "s3://some-bucket/p/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_one_line_error(
        result.returncode, result.stderr, "no AWS credentials to upload to s3://some-bucket/"
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def _quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO())
