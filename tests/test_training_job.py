"""`mme train-job`, the SageMaker training entrypoint, run against a temporary /opt/ml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from serve.cli import main
from training import data

LOCATION = "NewYork_NY"
SM_VARIABLES = (
    "SM_MODEL_DIR",
    "SM_CHANNEL_TRAIN",
    "SM_CHANNEL_VALIDATION",
    "SM_OUTPUT_DIR",
    "SM_OUTPUT_DATA_DIR",
    "SM_INPUT_CONFIG_DIR",
)


@pytest.fixture(autouse=True)
def _no_sagemaker_env(monkeypatch):
    for variable in SM_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def root(tmp_path) -> Path:
    """/opt/ml as SageMaker lays it out: hyperparameters.json (string values), train and validation."""
    root = tmp_path / "opt-ml"
    channels = data.write_location(tmp_path / "data", LOCATION, 300, 7)
    for channel, folder in (("train", "train"), ("val", "validation")):
        target = root / "input" / "data" / folder
        target.mkdir(parents=True)
        channels[channel].rename(target / channels[channel].name)
    write_hyperparameters(root, {"num_round": "8", "max_depth": "4", "objective": "reg:linear"})
    return root


def write_hyperparameters(root: Path, values: dict) -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(values))


def load_model(path: Path) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(bytearray(path.read_bytes()))
    return booster


def run_job(capsys, root: Path) -> tuple[int, str, str]:
    code = main(["train-job", "--root", str(root)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_failed(code: int, err: str, root: Path, *names: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mme train-job: error: ")
    reason = (root / "output" / "failure").read_text()
    assert lines[0].endswith(reason)
    for name in names:
        assert name in reason
    assert not (root / "model" / "xgboost-model").exists()


def test_job_writes_model_and_metrics_from_the_default_layout(capsys, root):
    code, out, err = run_job(capsys, root)
    assert code == 0, err
    booster = load_model(root / "model" / "xgboost-model")
    assert 1 <= booster.num_boosted_rounds() <= 8
    metrics = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert metrics["train_rows"] == 180 and metrics["validation_rows"] == 90
    assert metrics["rounds"] == booster.num_boosted_rounds()
    assert "validation-rmse" in out  # per-round log lines, which SageMaker metric definitions scrape
    assert not (root / "output" / "failure").exists()


def test_early_stopping_keeps_the_best_round_only(capsys, root):
    write_hyperparameters(root, {"num_round": "200", "eta": "1", "gamma": "0", "early_stopping_rounds": "2"})
    code, _, err = run_job(capsys, root)
    assert code == 0, err
    booster = load_model(root / "model" / "xgboost-model")
    validation = data.read_channel(root / "input" / "data" / "validation", "validation")
    dmatrix = xgb.DMatrix(validation.features)
    rmse = [
        float(np.sqrt(np.mean((booster.predict(dmatrix, iteration_range=(0, k)) - validation.labels) ** 2)))
        for k in range(1, booster.num_boosted_rounds() + 1)
    ]
    assert len(rmse) < 200
    assert rmse[-1] == min(rmse)


def test_job_reads_every_csv_of_a_channel_and_runs_without_validation(capsys, root):
    train_dir = root / "input" / "data" / "train"
    (train_dir / "more.csv").write_text("500000,2000,3000,3,2,1.0,2\n600000,2005,3500,4,2.5,1.2,1\n")
    for csv in (root / "input" / "data" / "validation").iterdir():
        csv.unlink()
    (root / "input" / "data" / "validation").rmdir()
    code, _, err = run_job(capsys, root)
    assert code == 0, err
    metrics = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert metrics == {"train_rows": 182, "rounds": 8}  # no validation channel: no early stopping
    assert load_model(root / "model" / "xgboost-model").num_boosted_rounds() == 8


def test_sm_variables_override_each_path(capsys, monkeypatch, tmp_path, root):
    elsewhere = tmp_path / "elsewhere"
    (root / "input").rename(elsewhere)
    write_hyperparameters(elsewhere, {"num_round": "3", "early_stopping_rounds": "0"})
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(elsewhere / "input" / "config"))
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(elsewhere / "data" / "train"))
    monkeypatch.setenv("SM_CHANNEL_VALIDATION", str(elsewhere / "data" / "validation"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "output-data"))
    code, _, err = run_job(capsys, tmp_path / "no-such-root")
    assert code == 0, err
    assert load_model(tmp_path / "model" / "xgboost-model").num_boosted_rounds() == 3
    assert json.loads((tmp_path / "output-data" / "metrics.json").read_text())["validation_rows"] == 90
    assert not (tmp_path / "no-such-root").exists()


def test_failure_file_goes_to_sm_output_dir(capsys, monkeypatch, tmp_path, root):
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path / "out"))
    write_hyperparameters(root, {"eta": "-0.1"})
    code, _, _ = run_job(capsys, root)
    assert code == 1
    assert "eta" in (tmp_path / "out" / "failure").read_text()


def test_ragged_row_names_file_and_line(capsys, root):
    csv = next((root / "input" / "data" / "train").glob("*.csv"))
    lines = csv.read_text().splitlines()
    lines[2] += ",7.00"
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = run_job(capsys, root)
    assert_failed(code, err, root, f"{csv}:3:", "8 columns, expected 7")


def test_non_numeric_cell_names_file_line_and_column(capsys, root):
    csv = next((root / "input" / "data" / "validation").glob("*.csv"))
    lines = csv.read_text().splitlines()
    cells = lines[9].split(",")
    cells[3] = "four"
    lines[9] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = run_job(capsys, root)
    assert_failed(code, err, root, f"{csv}:10:", "column 4", "'four'")


def test_empty_channel_is_named(capsys, root):
    for csv in (root / "input" / "data" / "train").iterdir():
        csv.unlink()
    code, _, err = run_job(capsys, root)
    assert_failed(code, err, root, "channel train is empty")


def test_bad_hyperparameter_is_named(capsys, root):
    write_hyperparameters(root, {"max_depth": "deep"})
    code, _, err = run_job(capsys, root)
    assert_failed(code, err, root, "max_depth", "'deep'")


def test_malformed_hyperparameters_json_is_named(capsys, root):
    (root / "input" / "config" / "hyperparameters.json").write_text("{not json")
    code, _, err = run_job(capsys, root)
    assert_failed(code, err, root, "hyperparameters.json")
