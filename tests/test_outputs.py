"""Selectable inference content: every key for every objective family, equal to XGBoost's own prediction,
in every encoding; where keys come from (request, model folder, container); invalid keys named."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
import xgboost as xgb

from handler.errors import BadRequest, ModelLoadError, NotAcceptable
from handler.model import Context, load_model
from handler.outputs import KEYS, Policy, allowed

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

X = np.random.default_rng(3).random((120, 4), dtype=np.float32)
ROWS = X[:5]
BODY = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS).encode()

OBJECTIVES = {
    "reg:squarederror": {},
    "count:poisson": {},
    "binary:logistic": {},
    "binary:logitraw": {},
    "binary:hinge": {},
    "multi:softmax": {"num_class": 3},
    "multi:softprob": {"num_class": 3},
}
EXPECTED_KEYS = {
    "reg:squarederror": ["predicted_score"],
    "count:poisson": ["predicted_score"],
    "binary:logistic": KEYS[:6],
    "binary:logitraw": ["predicted_label", "labels", "raw_score", "raw_scores"],
    "binary:hinge": ["predicted_label", "labels", "raw_score", "raw_scores"],
    "multi:softmax": ["predicted_label", "labels", "raw_score", "raw_scores"],
    "multi:softprob": KEYS[:6],
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    folders = {}
    for objective, extra in OBJECTIVES.items():
        label = (X[:, 0] * 3).astype(int) % 3 if "multi" in objective else (X[:, 0] > 0.5).astype(int)
        if objective.startswith(("reg", "count")):
            label = X @ np.arange(1, 5)
        booster = xgb.train({"objective": objective, "nthread": 1, **extra}, xgb.DMatrix(X, label=label), 4)
        folder = root / objective.replace(":", "-")
        folder.mkdir()
        booster.save_model(str(folder / "xgboost-model.ubj"))
        folders[objective] = folder
    return folders


def reference(folder) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(str(folder / "xgboost-model.ubj"))
    return booster.inplace_predict(ROWS)


def selected(folder, keys: str, accept: str = "application/json"):
    model = load_model(folder)
    context = Context(custom_attributes=f"inference_output={keys}", target_model=None)
    return model.invoke(BODY, "text/csv", accept, context)


def expected_value(objective: str, key: str, raw: np.ndarray):
    """What AWS's container answers for one row's raw prediction, written from its documentation."""
    if objective == "multi:softprob":
        return {
            "predicted_label": int(np.argmax(raw)),
            "labels": [0, 1, 2],
            "probability": float(raw.max()),
            "probabilities": raw.tolist(),
            "raw_score": float(raw.max()),
            "raw_scores": raw.tolist(),
        }[key]
    value = float(raw)
    label = {"binary:logistic": int(value > 0.5), "binary:logitraw": int(value > 0)}.get(objective, value)
    return {
        "predicted_label": label,
        "labels": [0, 1, 2] if objective == "multi:softmax" else [0, 1],
        "probability": value,
        "probabilities": [1 - value, value],
        "raw_score": value,
        "raw_scores": [1 - value, value],
        "predicted_score": value,
    }[key]


CASES = [(objective, key) for objective, keys in EXPECTED_KEYS.items() for key in keys]


@pytest.mark.parametrize("objective, key", CASES, ids=[f"{o}-{k}" for o, k in CASES])
def test_every_key_for_every_objective(model_dirs, objective: str, key: str) -> None:
    body, content_type = selected(model_dirs[objective], key)
    assert content_type == "application/json"
    got = [row[key] for row in json.loads(body)["predictions"]]
    want = [expected_value(objective, key, raw) for raw in np.asarray(reference(model_dirs[objective]))]
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(want, dtype=float), rtol=1e-6, atol=1e-6)
    assert [type(v) for v in got] == [type(v) for v in want]  # a label is an int where AWS's is


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_allowed_keys_are_aws_table(objective: str) -> None:
    assert list(allowed(objective)) == list(EXPECTED_KEYS[objective])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_invalid_keys_say_which_keys_the_objective_allows(model_dirs, objective: str) -> None:
    invalid = next(key for key in KEYS if key not in EXPECTED_KEYS[objective])
    with pytest.raises(BadRequest) as caught:
        selected(model_dirs[objective], f"{EXPECTED_KEYS[objective][0]},{invalid}")
    message = str(caught.value)
    assert f"selects {invalid}; a {objective} model answers {', '.join(EXPECTED_KEYS[objective])}" in message


def test_unknown_keys_list_every_key(model_dirs) -> None:
    with pytest.raises(
        BadRequest, match="unknown key.s. predicted_class; the keys are predicted_label, labels"
    ):
        selected(model_dirs["binary:logistic"], "predicted_class")


def test_each_encoding_of_selected_content(model_dirs) -> None:
    from sagemaker.amazon.common import read_records

    folder = model_dirs["binary:logistic"]
    p = np.asarray(reference(folder), dtype=np.float32)
    keys = "predicted_label,probabilities"
    rows = json.loads(selected(folder, keys)[0])["predictions"]
    assert rows[0] == {"predicted_label": int(p[0] > 0.5), "probabilities": pytest.approx([1 - p[0], p[0]])}

    body, content_type = selected(folder, keys, "application/jsonlines")
    assert content_type == "application/jsonlines" and body.endswith(b"\n")
    assert [json.loads(line) for line in body.splitlines()] == rows

    body, content_type = selected(folder, keys, "text/csv")
    assert content_type == "text/csv"
    first = body.decode().splitlines()[0]
    label, probabilities = first.split(",", 1)
    assert int(label) == rows[0]["predicted_label"]
    assert probabilities.startswith('"[') and json.loads(probabilities.strip('"')) == pytest.approx(
        [1 - p[0], p[0]]
    )

    body, content_type = selected(folder, keys, "application/x-recordio-protobuf")
    records = read_records(io.BytesIO(body))
    assert content_type == "application/x-recordio-protobuf" and len(records) == len(ROWS)
    assert list(records[0].label["predicted_label"].float32_tensor.values) == [rows[0]["predicted_label"]]
    assert list(records[0].label["probabilities"].float32_tensor.values) == pytest.approx([1 - p[0], p[0]])

    with pytest.raises(NotAcceptable, match="selected outputs .* are answered as application/json"):
        selected(folder, keys, "application/x-npy")


def test_keys_come_from_the_request_then_the_model_folder_then_the_container(model_dirs, tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model_dirs["binary:logistic"], folder)
    container = Policy(keys=("probability",))
    plain = Context(custom_attributes=None, target_model=None)

    def keys_of(model, context) -> list[str]:
        return list(
            json.loads(model.invoke(BODY, "text/csv", "application/json", context)[0])["predictions"][0]
        )

    assert keys_of(load_model(folder, policy=container), plain) == ["probability"]
    (folder / "inference_output").write_text("predicted_label, raw_score\n")
    model = load_model(folder, policy=container)
    assert keys_of(model, plain) == ["predicted_label", "raw_score"]
    attributes = Context(custom_attributes="trace=1; inference_output=labels", target_model=None)
    assert keys_of(model, attributes) == ["labels"]
    raw = model.invoke(BODY, "text/csv", "application/json", Context("inference_output=", None))[0]
    assert json.loads(raw) == pytest.approx(reference(folder).tolist(), rel=1e-6)


def test_a_model_folder_selecting_keys_its_objective_lacks_does_not_load(model_dirs, tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model_dirs["reg:squarederror"], folder)
    (folder / "inference_output").write_text("probability")
    with pytest.raises(ModelLoadError, match="inference_output file selects probability; a reg:squarederror"):
        load_model(folder)
    (folder / "inference_output").write_text("chance")
    with pytest.raises(ModelLoadError, match="unknown key.s. chance"):
        load_model(folder)


def test_without_selection_the_raw_prediction_answers(model_dirs) -> None:
    folder = model_dirs["multi:softprob"]
    body, _ = load_model(folder).invoke(BODY, "text/csv", None, Context(None, None))
    np.testing.assert_allclose(json.loads(body), reference(folder), rtol=1e-6)


def test_selected_content_from_the_generated_code_path(model_dirs) -> None:
    # A hot regression model answers one-row CSV from generated code, skipping input_fn: keys still apply.
    folder = model_dirs["reg:squarederror"]
    model = load_model(folder)
    row = BODY.split(b"\n")[0]
    for _ in range(model._predict.HOT_AFTER + 1):
        model.invoke(row, "text/csv", None, Context(None, None))
    assert model._predict.code_built.wait(30) and model._predict._walk_row is not None
    body, _ = model.invoke(row, "text/csv", "text/csv", Context("inference_output=predicted_score", None))
    np.testing.assert_allclose(float(body), reference(folder)[0], rtol=1e-6)
