"""Artifacts written by every SageMaker XGBoost image (and by users' scripts) with the real old XGBoost
versions, in tests/fixtures/sagemaker_images (rebuilt by its build.py): each loads with default flags and
answers, on every path, bit for bit what that image served.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import xgboost as xgb

from handler.model import Context, WalkingPredict, load_model
from handler.treewalk import IDENTITY_OBJECTIVES
from serve.cli import main as mme

FIXTURES = Path(__file__).parent / "fixtures" / "sagemaker_images"
CASES = [case for case in json.loads((FIXTURES / "manifest.json").read_text())["cases"] if case["served"]]
IDS = [case["path"] for case in CASES]
CONTEXT = Context(custom_attributes=None, target_model=None)
TARGET = "X-Amzn-SageMaker-Target-Model"


def _case(entry: dict) -> tuple[Path, dict, np.ndarray, np.ndarray]:
    folder = FIXTURES / entry["path"]
    case = json.loads((folder / "case.json").read_text())
    rows = np.array([[np.nan if v is None else v for v in row] for row in case["rows"]], dtype=np.float32)
    return folder, case, rows, _shaped(_bits(case["prediction_bits"]), len(rows))


def _bits(hexes) -> np.ndarray:
    return np.array([int(h, 16) for h in np.ravel(hexes)], dtype=np.uint32).view(np.float32)


def _shaped(values: np.ndarray, n: int) -> np.ndarray:
    """One value per row, or a row of class probabilities per row."""
    table = values.reshape(n, -1)
    return table[:, 0] if table.shape[1] == 1 else table


def _csv(rows: np.ndarray) -> bytes:
    # repr of a float32 widened to double parses back to the same float32; a missing value is empty.
    return "\n".join(",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in rows).encode()


def _answer(model, rows: np.ndarray) -> np.ndarray:
    body, _ = model.invoke(_csv(rows), "text/csv", "application/json", CONTEXT)
    return _shaped(np.array(json.loads(body), dtype=np.float32), len(rows))


def test_the_fixtures_cover_every_image_and_script_pickles() -> None:
    images = {case["image"] for case in CASES if case["image"]}
    assert {"0.90-1", "1.0-1", "1.2-1", "1.2-2", "1.3-1", "1.5-1", "1.7-1", "3.0-5"} <= images
    scripts = {case["xgboost"] for case in CASES if case["writer"] == "script-pickle"}
    assert {"1.3.3", "1.5.2", "1.7.4", "2.0.3"} <= scripts
    for version in ("0.90", "1.0.0", "1.2.0", "1.3.3", "1.5.2", "1.7.4", "3.0.5"):
        cases = {case["case"] for case in CASES if case["xgboost"] == version}
        assert {"regression", "binary_logistic", "multi_softprob", "early_stopped"} <= cases, version


@pytest.mark.parametrize("entry", CASES, ids=IDS)
def test_a_batch_answers_what_the_image_served(entry: dict) -> None:
    folder, case, rows, served = _case(entry)
    answer = _answer(load_model(folder), rows)
    assert answer.tobytes() == served.tobytes()
    if "prediction_bits_all_trees" in case and case["best_ntree_limit"] and case["writer"] == "image":
        # Serving every tree of an early-stopped 0.90-1.2 model would be a different, wrong answer.
        all_trees = _bits(case["prediction_bits_all_trees"])
        assert not np.array_equal(answer, all_trees) or case["rounds"] == case["best_ntree_limit"]


@pytest.mark.parametrize("entry", CASES, ids=IDS)
def test_one_row_answers_on_both_fast_paths_are_the_same_bits(entry: dict, monkeypatch) -> None:
    folder, case, rows, served = _case(entry)
    monkeypatch.setattr(WalkingPredict, "HOT_AFTER", 4)
    model = load_model(folder)
    walking = model._walking
    for path in ("xgboost", "walker", "code"):
        for index, row in enumerate(rows):
            assert _answer(model, row[None]).tobytes() == served[index : index + 1].tobytes(), (path, index)
        if walking is None:  # an ensemble: XGBoost serves it, every row
            return
        if path == "xgboost":
            assert walking.walker_built.wait(30)
        elif walking._walker is not None:
            assert walking.code_built.wait(30)
    walkable = case["objective"] in IDENTITY_OBJECTIVES and case["booster"] in ("gbtree", "dart")
    # Models of the walker's kind must keep both fast paths: the check against XGBoost must pass.
    assert (walking._walk_row is not None) == walkable


@pytest.mark.parametrize("entry", CASES, ids=IDS)
def test_mme_convert_with_check_writes_ubjson_plain_xgboost_serves_the_same(entry: dict, tmp_path) -> None:
    folder, case, rows, served = _case(entry)
    per_model = case.get("per_model_prediction_bits") or [case["prediction_bits"]]
    for name, bits in zip(case["model_files"], per_model, strict=True):
        out = tmp_path / f"{name}.ubj"
        assert mme(["convert", str(folder / name), str(out), "--check"]) == 0
        booster = xgb.Booster()
        booster.load_model(str(out))
        got = booster.predict(xgb.DMatrix(rows, missing=np.nan)).astype(np.float32)
        assert got.tobytes() == _bits(bits).tobytes(), name


def test_every_image_artifact_serves_through_the_local_endpoint(start_server, tmp_path) -> None:
    """Default flags, a real server: each artifact as the model.tar.gz SageMaker would have stored."""
    for entry in CASES:
        folder = FIXTURES / entry["path"]
        with tarfile.open(tmp_path / (entry["path"].replace("/", "--") + ".tar.gz"), "w:gz") as archive:
            for name in json.loads((folder / "case.json").read_text())["model_files"]:
                archive.add(folder / name, arcname=name)
    server = start_server("--models", str(tmp_path))
    for entry in CASES:
        _, _, rows, served = _case(entry)
        response = httpx.post(
            f"{server.url}/invocations",
            content=_csv(rows),
            headers={"Content-Type": "text/csv", TARGET: entry["path"].replace("/", "--") + ".tar.gz"},
            timeout=60,
        )
        assert response.status_code == 200, (entry["path"], response.text)
        answer = _shaped(np.array(response.json(), dtype=np.float32), len(rows))
        assert answer.tobytes() == served.tobytes(), entry["path"]


def test_truncated_and_corrupted_legacy_files_are_400s_naming_the_problem(tmp_path) -> None:
    from handler.errors import ModelLoadError

    raw = (FIXTURES / "image-1.7-1" / "regression" / "xgboost-model").read_bytes()
    assert raw.startswith(b"binf")
    corrupt = bytearray(raw)
    trees_at = 4 + 136 + 8 + len(b"reg:linear") + 8 + len(b"gbtree")  # magic, learner, two names
    corrupt[trees_at : trees_at + 4] = (2**30).to_bytes(4, "little")
    utf8 = bytearray(raw)
    utf8[4:8] = np.float32(334210.0).tobytes()  # a base_score whose bytes are not UTF-8: no decoding trouble
    cases = {
        "half": (raw[: len(raw) // 2], "more than the file holds"),
        "header only": (raw[:60], "not an XGBoost model in any format"),
        "tree count": (bytes(corrupt), "claims 1073741824 trees, more than the file holds"),
    }
    for label, (data, message) in cases.items():
        folder = tmp_path / label
        folder.mkdir()
        (folder / "xgboost-model").write_bytes(data)
        with pytest.raises(ModelLoadError, match=message) as caught:
            load_model(folder)
        assert caught.value.status == 400
    folder = tmp_path / "odd base"
    folder.mkdir()
    (folder / "xgboost-model").write_bytes(bytes(utf8))
    load_model(folder)  # loads: a base_score is a number, whatever its bytes look like


@pytest.mark.parametrize("path", ["image-0.90-1/gblinear", "image-1.0-1/gblinear"])
def test_gblinear_models_the_old_images_failed_on_are_served_with_every_weight(path: str) -> None:
    """Those images passed the pickle's best_ntree_limit to gblinear, which refused it (a 500); we answer
    what the same XGBoost predicts without the limit."""
    folder = FIXTURES / path
    case = json.loads((folder / "case.json").read_text())
    assert "ntree_limit" in case["served_error"]
    rows = np.array([[np.nan if v is None else v for v in row] for row in case["rows"]], dtype=np.float32)
    assert _answer(load_model(folder), rows).tobytes() == _bits(case["prediction_bits_all_trees"]).tobytes()
