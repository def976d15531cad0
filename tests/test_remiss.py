"""A re-miss (a model evicted and wanted again, its artifact current on disk) is loaded on the event loop
from its compiled form: only when that is all the load is, never from a form that is not current."""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import pytest
import xgboost as xgb
from conftest import N_FEATURES, predict_artifact, train_booster

from handler import compiled
from handler.forest import ModelLimits
from handler.model import Context, load_compiled, load_model
from serve.diskcache import DiskCache
from serve.source import FolderSource

ROW = b"0.5,0.25,0.75,0.1,0.9,0.3"
X = np.array([[0.5, 0.25, 0.75, 0.1, 0.9, 0.3]], dtype=np.float32)
OPTIONS = {"allow_pickle": False, "limits": ModelLimits(), "ensemble": True}


def folder_of(tmp_path, booster: xgb.Booster, name: str = "m"):
    folder = tmp_path / name
    folder.mkdir()
    booster.save_model(str(folder / "xgboost-model.ubj"))
    return folder


def answer(model) -> list[float]:
    body, _ = model.invoke(ROW, "text/csv", "application/json", Context(None, None))
    return np.float32(json.loads(body)).tolist()


@pytest.fixture
def booster() -> xgb.Booster:
    return train_booster(seed=3, rounds=25, max_depth=5)


def test_a_compiled_walked_model_loads_from_its_form_alone(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    assert load_compiled(folder, **OPTIONS) is None  # never compiled: a load thread compiles it
    assert sorted(p.name for p in folder.iterdir()) == ["xgboost-model.ubj"]  # and nothing was written
    load_model(folder, persist=True)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    model = load_compiled(folder, **OPTIONS)
    assert model is not None and answer(model) == booster.inplace_predict(X).tolist()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before


def test_no_quick_load_from_a_damaged_or_stale_form(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)
    form = folder / compiled.FILE_NAME
    good = form.read_bytes()
    form.write_bytes(good[:-1])
    assert load_compiled(folder, **OPTIONS) is None
    form.write_bytes(good)
    model_file = folder / "xgboost-model.ubj"
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # not the file compiled
    assert load_compiled(folder, **OPTIONS) is None


def test_no_quick_load_of_user_code_output_keys_or_a_model_xgboost_serves(tmp_path, booster):
    coded = folder_of(tmp_path, booster, "coded")
    load_model(coded, persist=True)
    (coded / "code").mkdir()
    (coded / "code" / "inference.py").write_text("def predict_fn(data, model):\n    return [0.0]\n")
    assert load_compiled(coded, **OPTIONS) is None  # user code runs only on a load thread, if allowed
    keyed = folder_of(tmp_path, booster, "keyed")
    load_model(keyed, persist=True)
    (keyed / "inference_output").write_text("predicted_label\n")
    assert load_compiled(keyed, **OPTIONS) is None  # a full load reads (and checks) the folder's keys
    x = np.random.default_rng(0).random((200, N_FEATURES), dtype=np.float32)
    logistic = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=x[:, 0] > 0.5), 5)
    plain = folder_of(tmp_path, logistic, "plain")
    load_model(plain, persist=True)
    assert (plain / compiled.FILE_NAME).exists()
    assert load_compiled(plain, **OPTIONS) is None  # its Booster is loaded on a thread


def test_a_remembered_listing_is_what_a_quick_load_goes_by(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)
    listing = ["xgboost-model.ubj", compiled.FILE_NAME]
    assert load_compiled(folder, **OPTIONS, names=listing) is not None
    # The caller's listing, not a directory read: one that names code/ is a load thread's job.
    assert load_compiled(folder, **OPTIONS, names=[*listing, "code"]) is None
    assert load_compiled(folder, **OPTIONS, names=[compiled.FILE_NAME]) is None


def test_the_disk_cache_pins_only_a_current_folder(tmp_path, artifact_bytes):
    source = tmp_path / "source"
    source.mkdir()
    artifact = source / "m.tar.gz"
    artifact.write_bytes(artifact_bytes(0))
    disk = DiskCache(tmp_path / "cache", 1 << 30, FolderSource(source))
    assert disk.pin_if_current("m.tar.gz") is None  # not on disk yet
    assert disk.pin_if_current("missing.tar.gz") is None
    folder, version = disk.materialize("m.tar.gz")
    assert disk.pin_if_current("m.tar.gz") == (folder, version, tuple(os.listdir(folder)))
    disk.unpin("m.tar.gz")
    artifact.write_bytes(artifact_bytes(1))
    mtime = artifact.stat().st_mtime_ns + 10**9  # another version, however coarse the clock
    os.utime(artifact, ns=(mtime, mtime))
    assert disk.pin_if_current("m.tar.gz") is None


def test_models_cycled_through_a_cache_of_one_answer_each_in_their_own_version(
    start_server, tmp_path, artifact_bytes
):
    for seed in range(3):
        (tmp_path / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    server = start_server("--models", str(tmp_path), "--max-models", "1", "--revalidate-after", "off")

    def invoke(name: str) -> list[float]:
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": name}
        response = httpx.post(server.url + "/invocations", content=ROW, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    want = [predict_artifact(artifact_bytes(seed), X) for seed in range(3)]
    for _ in range(3):  # every call after the first round is a re-miss
        for seed in range(3):
            assert invoke(f"m{seed}.tar.gz") == pytest.approx(want[seed], rel=1e-6)
    (tmp_path / "m1.tar.gz").write_bytes(artifact_bytes(7))
    assert invoke("m1.tar.gz") == pytest.approx(predict_artifact(artifact_bytes(7), X), rel=1e-6)
