"""SageMaker's training-job contract: /opt/ml/input in, /opt/ml/model/xgboost-model out, failure file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.errors import CommandError
from training import data, package, train

MODEL_FILE = "xgboost-model"


@dataclass(frozen=True)
class JobPaths:
    hyperparameters: Path
    train: Path
    validation: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path

    @classmethod
    def resolve(cls, root: Path, env: Mapping[str, str]) -> JobPaths:
        """SageMaker's fixed layout under `root`, each path replaced by its SM_* variable when set."""

        def pick(variable: str, default: Path) -> Path:
            return Path(env.get(variable) or default)

        return cls(
            hyperparameters=pick("SM_INPUT_CONFIG_DIR", root / "input/config") / "hyperparameters.json",
            train=pick("SM_CHANNEL_TRAIN", root / "input/data/train"),
            validation=pick("SM_CHANNEL_VALIDATION", root / "input/data/validation"),
            model_dir=pick("SM_MODEL_DIR", root / "model"),
            output_dir=pick("SM_OUTPUT_DIR", root / "output"),
            output_data_dir=pick("SM_OUTPUT_DATA_DIR", root / "output/data"),
        )


def read_hyperparameters(path: Path) -> dict[str, str]:
    """hyperparameters.json as strings (SageMaker writes every value as a string); missing file: none."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise CommandError(f"{path} must hold a JSON object")
    # The SDK and automatic model tuning add their own bookkeeping keys; they are not XGBoost parameters.
    return {key: str(value) for key, value in raw.items() if not key.startswith(("sagemaker_", "_"))}


def train_job(paths: JobPaths) -> dict:
    """Train from the channels, write the model and a metrics summary; returns the summary."""
    hp = train.hyperparameters(read_hyperparameters(paths.hyperparameters))
    training_rows = data.read_channel(paths.train, "train")
    # SageMaker creates a folder only for channels the job was given; validation is optional.
    validation = data.read_channel(paths.validation, "validation") if paths.validation.exists() else None
    booster = train.fit(training_rows, validation, hp, log_rounds=True)
    package.write_atomic(paths.model_dir / MODEL_FILE, bytes(booster.save_raw("ubj")))
    summary: dict = {"train_rows": len(training_rows.labels), "rounds": booster.num_boosted_rounds()}
    if validation is not None:
        rmse, mae = train.evaluate(booster, validation)
        summary |= {"validation_rows": len(validation.labels), "validation_rmse": rmse, "validation_mae": mae}
    package.write_atomic(paths.output_data_dir / "metrics.json", json.dumps(summary, indent=2).encode())
    return summary


def write_failure(paths: JobPaths, reason: str) -> None:
    # SageMaker shows this file's text as the job's FailureReason.
    # If even this fails, the reason still reaches stderr, and so the job's logs.
    with contextlib.suppress(CommandError):
        package.write_atomic(paths.output_dir / "failure", reason.encode())


def main(root: Path) -> dict:
    """Run the job as SageMaker would; on any failure write the failure file, then re-raise."""
    paths = JobPaths.resolve(root, os.environ)
    try:
        return train_job(paths)
    except CommandError as exc:
        write_failure(paths, str(exc))
        raise
    except Exception as exc:
        write_failure(paths, f"{type(exc).__name__}: {exc}")
        raise
