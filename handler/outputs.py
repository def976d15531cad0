"""What a default-handler model answers: its raw prediction, or the selectable inference content that
AWS's XGBoost container offers through SAGEMAKER_INFERENCE_OUTPUT (e.g. `predicted_label,probabilities`).

Which keys are selected, first found wins: the request's custom attribute `inference_output=k1,k2`
(X-Amzn-SageMaker-Custom-Attributes; `inference_output=` alone asks for the raw prediction), the model
folder's `inference_output` file, then the container's SAGEMAKER_INFERENCE_OUTPUT. Every selected key must
be one the model's objective answers (ALLOWED), or the request is a 400 naming the keys it allows; AWS's
container instead answers an invalid key with NaN, which is not JSON.

Selected content answers in AWS's shapes: JSON {"predictions": [{key: value, ...}, ...]}, JSON lines (one
such object a line), CSV (the keys' values in the selected order, a list as "[a, b]"), RecordIO-protobuf
(each key in a record's label map as a float32 tensor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import orjson
import xgboost as xgb

from handler import codecs, recordio
from handler.errors import BadRequest, ModelLoadError, NotAcceptable
from handler.forest import Forest

PREDICTED_LABEL, LABELS = "predicted_label", "labels"
PROBABILITY, PROBABILITIES = "probability", "probabilities"
RAW_SCORE, RAW_SCORES = "raw_score", "raw_scores"
PREDICTED_SCORE = "predicted_score"
KEYS = (PREDICTED_LABEL, LABELS, PROBABILITY, PROBABILITIES, RAW_SCORE, RAW_SCORES, PREDICTED_SCORE)
MODEL_FILE = "inference_output"  # a model folder's own selection, one line of comma-separated keys
ATTRIBUTE = "inference_output"

_LABEL_AND_SCORES = (PREDICTED_LABEL, LABELS, RAW_SCORE, RAW_SCORES)
_PROBABILISTIC = (PREDICTED_LABEL, LABELS, PROBABILITY, PROBABILITIES, RAW_SCORE, RAW_SCORES)
_CLASSIFIERS = {
    "binary:logistic": _PROBABILISTIC,
    "multi:softprob": _PROBABILISTIC,
    "binary:logitraw": _LABEL_AND_SCORES,
    "binary:hinge": _LABEL_AND_SCORES,
    "multi:softmax": _LABEL_AND_SCORES,
}
_SELECTED_TYPES = (codecs.JSON, codecs.JSONLINES, codecs.CSV, codecs.RECORDIO)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def allowed(objective: str | None) -> tuple[str, ...]:
    """The keys a model of this objective answers: AWS's table for classifiers, predicted_score for every
    other objective (AWS lists five regression objectives and refuses the rest)."""
    if objective is None:
        return ()
    return _CLASSIFIERS.get(objective, (PREDICTED_SCORE,))


def parse_keys(text: str) -> tuple[str, ...]:
    """`predicted_label, Probabilities` -> ("predicted_label", "probabilities"); ValueError if unknown."""
    keys = tuple(dict.fromkeys(key for key in text.replace(" ", "").lower().split(",") if key))
    unknown = [key for key in keys if key not in KEYS]
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    return keys


@dataclass(frozen=True)
class Policy:
    """The server's side of every answer: which mode's shapes, the default Accept, the container's keys."""

    single_model: bool = False
    default_accept: str | None = None  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    keys: tuple[str, ...] = ()  # SAGEMAKER_INFERENCE_OUTPUT

    @cached_property
    def default_type(self) -> str:
        if self.default_accept:
            return codecs.response_type(self.default_accept)
        return codecs.CSV if self.single_model else codecs.JSON


@dataclass(frozen=True, slots=True)
class ModelOutputs:
    """A model's side: its objective and width (None when unknown: not a Booster), its own selected keys,
    and the server's policy it answers under."""

    objective: str | None = None
    num_class: int = 0
    n_features: int | None = None
    keys: tuple[str, ...] = ()
    policy: Policy = Policy()


def objective_of(booster: xgb.Booster) -> tuple[str, int]:
    """(objective name, num_class) of a Booster from a user's model_fn, from its own configuration."""
    learner = json.loads(booster.save_config())["learner"]
    return learner["objective"]["name"], int(learner["learner_model_param"].get("num_class", "0") or 0)


def describe(
    model: Forest | xgb.Booster | object, n_features: int | None, model_dir: Path, policy: Policy
) -> ModelOutputs:
    """A model's outputs, read once at load; ModelLoadError if its `inference_output` file names keys it
    cannot answer. `model` is the artifact's (first) Forest, or what a user's model_fn returned."""
    if isinstance(model, Forest):
        objective, num_class = model.objective, model.num_class
    elif isinstance(model, xgb.Booster):
        objective, num_class = objective_of(model)
    else:
        objective, num_class = None, 0
    path = Path(model_dir) / MODEL_FILE
    keys: tuple[str, ...] = ()
    if path.is_file():
        try:
            keys = parse_keys(path.read_text(errors="replace").strip())
        except ValueError as exc:
            raise ModelLoadError(f"{MODEL_FILE} file: {exc}") from None
        _check(keys, objective, f"the model's {MODEL_FILE} file", ModelLoadError)
    return ModelOutputs(objective, num_class, n_features, keys, policy)


def chosen(custom_attributes: str | None, model: ModelOutputs) -> tuple[tuple[str, ...], str]:
    """(the selected keys, where they come from); no keys means the raw prediction."""
    requested = request_keys(custom_attributes) if custom_attributes else None
    if requested is not None:
        return requested, f"the custom attribute {ATTRIBUTE}"
    if model.keys:
        return model.keys, f"the model's {MODEL_FILE} file"
    return model.policy.keys, "SAGEMAKER_INFERENCE_OUTPUT"


def respond(
    prediction: np.ndarray, accept: str | None, custom_attributes: str | None, model: ModelOutputs
) -> tuple[bytes, str]:
    """(body, content type) for a default-handler prediction."""
    policy = model.policy
    if not (custom_attributes or model.keys or policy.keys):  # the raw prediction: most responses
        return codecs.encode(
            prediction, accept, default=policy.default_type, single_model=policy.single_model
        )
    keys, source = chosen(custom_attributes, model)
    if not keys:
        return codecs.encode(
            prediction, accept, default=policy.default_type, single_model=policy.single_model
        )
    kind = codecs.response_type(accept, policy.default_type)
    if kind not in _SELECTED_TYPES:
        raise NotAcceptable(
            f"selected outputs ({source}) are answered as {', '.join(_SELECTED_TYPES)}, not {kind}"
        )
    rows = select(np.asarray(prediction), model.objective, keys, model.num_class, source)
    return encode_selected(rows, keys, kind), kind


def request_keys(custom_attributes: str) -> tuple[str, ...] | None:
    """The keys a request's custom attributes select (`...; inference_output=k1,k2; ...`), or None."""
    if ATTRIBUTE not in custom_attributes:
        return None
    for part in custom_attributes.split(";"):
        name, equals, value = part.partition("=")
        if equals and name.strip().lower() == ATTRIBUTE:
            try:
                return parse_keys(value)
            except ValueError as exc:
                raise BadRequest(f"custom attribute {ATTRIBUTE}: {exc}") from None
    return None


def select(
    prediction: np.ndarray,
    objective: str | None,
    keys: tuple[str, ...],
    num_class: int = 0,
    source: str = "the request",
) -> list[dict[str, object]]:
    """One {key: value} per row, for a prediction as XGBoost answers `objective`."""
    _check(keys, objective, source, BadRequest)
    prediction = np.asarray(prediction, dtype=np.float32)
    columns = [_column(key, prediction, objective, num_class) for key in keys]
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]


def _check(keys: tuple[str, ...], objective: str | None, source: str, error: type[Exception]) -> None:
    valid = allowed(objective)
    invalid = [key for key in keys if key not in valid]
    if not invalid:
        return
    if objective is None:
        raise error(
            f"{source} selects {', '.join(invalid)}, but this model's objective is unknown (not a Booster)"
        )
    raise error(f"{source} selects {', '.join(invalid)}; a {objective} model answers {', '.join(valid)}")


def _column(key: str, prediction: np.ndarray, objective: str, num_class: int) -> list:
    """The key's value for every row. Definitions as AWS's container's: a binary model's probabilities and
    raw_scores are [1 - s, s]; multi:softmax's raw score is its class, as XGBoost gives nothing else."""
    multi = prediction.ndim == 2 and objective == "multi:softprob"
    if key == PREDICTED_LABEL:
        if multi:
            return prediction.argmax(axis=1).tolist()
        if objective == "binary:logistic":
            return (prediction > 0.5).astype(int).tolist()
        if objective == "binary:logitraw":
            return (prediction > 0).astype(int).tolist()
        return list(prediction)  # binary:hinge and multi:softmax answer the class itself
    if key == LABELS:
        labels = list(range(num_class)) if objective.startswith("multi:") else [0, 1]
        return [labels] * len(prediction)
    if key in (PROBABILITY, RAW_SCORE):
        return list(prediction.max(axis=1)) if multi else list(prediction)
    if key in (PROBABILITIES, RAW_SCORES):
        return list(prediction) if multi else list(np.stack([1 - prediction, prediction], axis=1))
    return list(prediction)  # predicted_score


def encode_selected(rows: list[dict[str, object]], keys: tuple[str, ...], kind: str) -> bytes:
    if kind == codecs.JSON:
        return orjson.dumps({"predictions": rows}, option=_NUMPY)
    if kind == codecs.JSONLINES:
        return b"".join(orjson.dumps(row, option=_NUMPY) + b"\n" for row in rows)
    if kind == codecs.RECORDIO:
        return recordio.write(rows)
    return b"\n".join(b",".join(_csv_cell(row[key]) for key in keys) for row in rows)


def _csv_cell(value: object) -> bytes:
    text = orjson.dumps(value, option=_NUMPY)
    return b'"' + text.replace(b",", b", ") + b'"' if text[:1] == b"[" else text
