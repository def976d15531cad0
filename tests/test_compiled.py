"""A model's compiled form: written once per artifact version, read back on a re-load, never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import xgboost as xgb
from conftest import N_FEATURES, predict_artifact, train_booster

from handler import compiled
from handler.forest import ModelLimits
from handler.model import Context, WalkingPredict, load_model
from handler.treewalk import MAX_ROWS, TreeWalker

ROW = b"0.5,0.25,0.75,0.1,0.9,0.3"
X = np.array([[0.5, 0.25, 0.75, 0.1, 0.9, 0.3]], dtype=np.float32)
CONTEXT = Context(None, None)


def folder_of(tmp_path: Path, booster: xgb.Booster, name: str = "m") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    booster.save_model(str(folder / "xgboost-model.ubj"))
    return folder


def answer(model, body: bytes = ROW) -> list[float]:
    """The model's JSON answer read back as the float32 values it printed (shortest round-trip form)."""
    return np.float32(json.loads(model.invoke(body, "text/csv", "application/json", CONTEXT)[0])).tolist()


def file_id(folder: Path) -> tuple[int, int]:
    stat = (folder / compiled.FILE_NAME).stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture
def booster() -> xgb.Booster:
    return train_booster(seed=3, rounds=25, max_depth=5)


def test_a_re_load_reads_the_compiled_form_and_answers_the_same_bits(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    first = load_model(folder, persist=True)
    written = file_id(folder)
    again = load_model(folder, persist=True)
    assert file_id(folder) == written  # read, not compiled and written again
    assert again._predict._walker is not None and again._predict.walker_built.is_set()
    assert answer(first) == answer(again) == booster.inplace_predict(X).tolist()


def test_without_persist_nothing_is_written_into_the_folder(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    load_model(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["xgboost-model.ubj"]


def _damaged(data: bytes) -> list[bytes]:
    header = struct.calcsize("<4sI32sQ32s")
    flipped = bytearray(data)
    flipped[header + 40] ^= 0x5A
    # A payload damaged and its checksum made to match: the arrays' own checks must catch it.
    forged = bytearray(data)
    roots = header + compiled._META.size + len(b"reg:squarederror")
    struct.pack_into("<i", forged, roots + 4 * 2, 10**6)  # the third tree's root, far out of range
    forged[header - 32 : header] = hashlib.sha256(forged[header:]).digest()
    return [data[: len(data) // 2], data[:10], b"", bytes(flipped), bytes(forged), b"MMEC" + data[4:-1]]


@pytest.mark.parametrize("case", range(6), ids=["half", "header", "empty", "flipped", "forged", "short"])
def test_a_damaged_compiled_form_is_detected_and_rebuilt(tmp_path, booster, case):
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)
    path = folder / compiled.FILE_NAME
    good = path.read_bytes()
    path.write_bytes(_damaged(good)[case])
    wanted = compiled.key(folder / "xgboost-model.ubj", allow_pickle=False, limits=ModelLimits())
    assert compiled.read(folder, wanted) is None
    model = load_model(folder, persist=True)
    assert answer(model) == booster.inplace_predict(X).tolist()
    assert compiled.read(folder, wanted) is not None  # compiled again, and whole
    many = np.random.default_rng(0).random((50, N_FEATURES), dtype=np.float32)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in many).encode()
    for line, want in zip(body.splitlines(), booster.inplace_predict(many).tolist(), strict=True):
        assert answer(model, line) == [want]


def test_arrays_are_checked_once_per_content_and_a_changed_payload_again(tmp_path, booster, monkeypatch):
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)  # written and read back: its payload's digest is a checked one
    wanted = compiled.key(folder / "xgboost-model.ubj", allow_pickle=False, limits=ModelLimits())

    def unchecked(*args: object) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(TreeWalker, "from_arrays", unchecked)
    assert compiled.read(folder, wanted) is not None  # the same bytes: not checked again
    path = folder / compiled.FILE_NAME
    path.write_bytes(_damaged(path.read_bytes())[4])  # forged: other bytes, a digest of their own
    with pytest.raises(AssertionError, match="checked again"):
        compiled.read(folder, wanted)


def test_a_model_file_changed_in_place_is_compiled_again(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)
    other = train_booster(seed=9, rounds=7)
    other.save_model(str(folder / "xgboost-model.ubj"))
    assert answer(load_model(folder, persist=True)) == other.inplace_predict(X).tolist()


def test_the_booster_is_built_only_for_a_batch_and_asks_for_its_memory(tmp_path, booster):
    folder = folder_of(tmp_path, booster)
    rows = np.random.default_rng(1).random((MAX_ROWS + 3, N_FEATURES), dtype=np.float32)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()
    for granted in (True, False):
        model = load_model(folder, persist=True)
        asked: list[int] = []
        model.on_growth(lambda nbytes, granted=granted, asked=asked: asked.append(nbytes) or granted)
        assert answer(model) == booster.inplace_predict(X).tolist()
        assert asked == []  # one row: the walker, no XGBoost
        assert answer(model, body) == booster.inplace_predict(rows).tolist()
        assert len(asked) == 1 and asked[0] > 0
        assert (model._predict._booster._booster is not None) == granted
        answer(model, body)
        assert len(asked) == (1 if granted else 2)  # a Booster that was not granted is not kept


def test_a_hot_models_code_is_kept_and_read_back_by_the_next_load(tmp_path, booster, monkeypatch):
    monkeypatch.setattr(WalkingPredict, "HOT_AFTER", 6)
    folder = folder_of(tmp_path, booster)
    want = booster.inplace_predict(X).tolist()
    for round_ in range(2):
        model = load_model(folder, persist=True)
        before = file_id(folder)
        calls = WalkingPredict.HOT_AFTER if round_ == 0 else WalkingPredict.STORED_AFTER
        for _ in range(calls - 1):
            assert answer(model) == want
        assert not model._predict.code_built.is_set()
        assert answer(model) == want
        # The first hot load generates its code (on a thread) and writes it into the compiled form; the
        # second takes it from the form it was loaded from, at its STORED_AFTER-th call, on the spot.
        assert model._predict.code_built.wait(30) if round_ == 0 else model._predict.code_built.is_set()
        assert type(model._predict._walk_row.__self__).__name__ == "TreeCode"
        assert answer(model) == want
        assert (file_id(folder) == before) == (round_ == 1)


def test_a_model_the_walker_does_not_serve_keeps_its_validated_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((200, N_FEATURES), dtype=np.float32)
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=x[:, 0] > 0.5), 5)
    folder = folder_of(tmp_path, booster)
    load_model(folder, persist=True)
    written = file_id(folder)
    model = load_model(folder, persist=True)
    assert file_id(folder) == written
    assert answer(model) == booster.inplace_predict(X).tolist()


def test_an_overwritten_artifact_is_compiled_once_and_served_in_its_new_version(
    start_server, tmp_path, artifact_bytes
):
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    (source / "m.tar.gz").write_bytes(artifact_bytes(0))
    server = start_server("--models", str(source), "--cache-dir", str(cache), "--revalidate-after", "0")
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "m.tar.gz"}

    def invoke() -> list[float]:
        response = httpx.post(server.url + "/invocations", content=ROW, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    assert invoke() == pytest.approx(predict_artifact(artifact_bytes(0), X), rel=1e-6)
    (source / "m.tar.gz").write_bytes(artifact_bytes(5))
    new = predict_artifact(artifact_bytes(5), X)
    assert invoke() == pytest.approx(new, rel=1e-6)
    forms = list(cache.glob(f"*/{compiled.FILE_NAME}"))
    assert len(forms) == 1  # the old version's folder is gone with it
    written = forms[0].stat().st_ino, forms[0].stat().st_mtime_ns
    assert httpx.delete(server.url + "/models/m.tar.gz").status_code == 200
    assert invoke() == pytest.approx(new, rel=1e-6)  # a re-miss: the compiled form, not a recompile
    assert (forms[0].stat().st_ino, forms[0].stat().st_mtime_ns) == written


def test_a_compiler_writes_each_copy_of_the_same_bytes_its_own_valid_form(tmp_path, booster):
    from handler.model import compile_model

    limits = ModelLimits()
    folders = [folder_of(tmp_path, booster, name) for name in ("a", "b")]
    for folder in folders:
        compile_model(folder, folder / "xgboost-model.ubj", allow_pickle=False, limits=limits)
        wanted = compiled.key(folder / "xgboost-model.ubj", allow_pickle=False, limits=limits)
        assert compiled.read(folder, wanted) is not None  # keyed to this copy's file, not the first's
        written = file_id(folder)
        model = load_model(folder, persist=True)
        assert file_id(folder) == written
        assert answer(model) == booster.inplace_predict(X).tolist()


def test_a_resident_model_whose_disk_copy_was_evicted_is_reloaded_for_a_batch(
    start_server, tmp_path, artifact_bytes
) -> None:
    """A walked model keeps no Booster; when a batch needs one after the disk cache dropped the model's
    folder, the request loads the model again instead of failing."""
    for seed in range(8):
        (tmp_path / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    server = start_server("--models", str(tmp_path), "--disk-budget", "24KiB")
    rows = np.random.default_rng(1).random((8, 6), dtype=np.float32)
    one = ",".join(repr(float(v)) for v in rows[0])
    batch = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)

    def invoke(name: str, body: str) -> httpx.Response:
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": name}
        return httpx.post(f"{server.url}/invocations", content=body, headers=headers, timeout=60)

    for seed in range(8):  # m0 stays resident in memory while the disk cache cycles its folder out
        assert invoke(f"m{seed}.tar.gz", one).status_code == 200
    response = invoke("m0.tar.gz", batch)
    assert response.status_code == 200, response.text
    assert response.json() == pytest.approx(predict_artifact(artifact_bytes(0), rows), rel=1e-6)


def test_a_burst_of_fast_compiles_gets_at_most_a_compiler_process_per_core(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from serve.compiler import Compiler

    folders = [folder_of(tmp_path, train_booster(seed=seed, rounds=5), f"m{seed}") for seed in range(24)]
    compiler = Compiler(allow_pickle=False, limits=ModelLimits(), deadline=60, max_processes=8, warm=1)
    try:
        with ThreadPoolExecutor(len(folders)) as pool:
            list(pool.map(lambda folder: compiler(folder, folder / "xgboost-model.ubj"), folders))
        # 24 compiles of a few ms each queued at once: well past 0.1 s for the last, yet never slow work.
        assert 1 <= compiler._count <= (os.cpu_count() or 1)
    finally:
        compiler.close()
    for folder in folders:
        wanted = compiled.key(folder / "xgboost-model.ubj", allow_pickle=False, limits=ModelLimits())
        assert compiled.read(folder, wanted) is not None


def test_a_compiler_remembers_forms_to_its_bound_dropping_the_least_recently_used(tmp_path, monkeypatch):
    from collections import OrderedDict

    import handler.model as model_module

    limits = ModelLimits()
    booster = train_booster(seed=1, rounds=5)
    folders = []
    for i in range(5):  # bytes of their own, forms of one size
        booster.set_attr(copy=str(i))
        folders.append(folder_of(tmp_path, booster, f"m{i}"))
    monkeypatch.setattr(model_module, "_SEEN", OrderedDict())
    monkeypatch.setattr(model_module, "_seen_total", 0)

    def compile_all(order: list[int]) -> None:
        for i in order:
            model_module.compile_model(
                folders[i], folders[i] / "xgboost-model.ubj", allow_pickle=False, limits=limits
            )

    compile_all([0])
    one = model_module._seen_total
    monkeypatch.setattr(model_module, "_SEEN_BYTES", 3 * one)
    compile_all([1, 2, 0, 3, 4])  # 0 used again after 1 and 2: 1 and 2 are the ones to go

    def digest(i: int) -> bytes:
        return hashlib.sha256((folders[i] / "xgboost-model.ubj").read_bytes()).digest()

    kept = [key[0] for key in model_module._SEEN]
    assert kept == [digest(0), digest(3), digest(4)]
    assert model_module._seen_total == sum(
        model_module._form_bytes(form) for form in model_module._SEEN.values()
    )
    assert model_module._seen_total == 3 * one
