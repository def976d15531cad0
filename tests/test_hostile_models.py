"""Hostile and corrupt model files: each is refused with a 400 naming the problem, before XGBoost sees
it, and the server and every other model go on as before (issue: one broken artifact costs nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from conftest import train_booster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.package import tar_gz

ROW = "0.5,0.2,0.9,0.1,0.4,0.7"
TARGET = "x-amzn-sagemaker-target-model"


def _json_model(seed: int = 0) -> dict:
    return json.loads(bytes(train_booster(seed, rounds=3).save_raw("json")))


def _trees(model: dict) -> list[dict]:
    return model["learner"]["gradient_booster"]["model"]["trees"]


def _child_past_the_end() -> bytes:
    model = _json_model()
    tree = _trees(model)[0]
    tree["right_children"][0] = len(tree["left_children"])
    return json.dumps(model).encode()


def _cycle() -> bytes:
    model = _json_model()
    tree = _trees(model)[0]
    inner = next(i for i, left in enumerate(tree["left_children"]) if left != -1 and i > 0)
    tree["left_children"][inner] = 0
    return json.dumps(model).encode()


def _feature_far_out() -> bytes:
    model = _json_model()
    _trees(model)[0]["split_indices"][0] = 100_000_000
    return json.dumps(model).encode()


def _deep_nesting() -> bytes:
    return b'{"learner":' + b"[" * 100_000


def _huge_num_feature() -> bytes:
    model = _json_model()
    model["learner"]["learner_model_param"]["num_feature"] = str(10**8)
    return json.dumps(model).encode()


def _too_many_trees() -> bytes:
    # One-leaf trees: 200,000 of them are a few MiB gzipped, and gigabytes once parsed into objects.
    tree = b'{"left_children":[-1],"right_children":[-1],"split_conditions":[0.5],"split_indices":[0]}'
    return b'{"learner":{"gradient_booster":{"model":{"trees":[' + b",".join([tree] * 200_000) + b"]}}}}"


def _truncated_ubjson() -> bytes:
    raw = bytes(train_booster(0, rounds=3).save_raw("ubj"))
    return raw[: len(raw) // 2]


CASES = {
    "child index one past the end": (_child_past_the_end, "child index outside"),
    "cycle back to the root": (_cycle, "child index outside 1.."),
    "split on feature 10^8": (_feature_far_out, "splits on feature 100000000, not below 6"),
    "100,000 nested brackets": (_deep_nesting, "depth limit exceeded"),
    "num_feature 10^8": (_huge_num_feature, "num_feature 100000000 is outside 1..1000000"),
    "200,000 trees": (_too_many_trees, "200000 trees, more than 100000"),
    "truncated UBJSON": (_truncated_ubjson, "corrupt UBJSON model"),
    "not a model at all": (lambda: b"GIF89a" + bytes(300), "not an XGBoost model in any format"),
}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, request):
    from conftest import ServerProcess

    root = tmp_path_factory.mktemp("hostile")
    (root / "good.tar.gz").write_bytes(tar_gz(bytes(train_booster(1).save_raw("ubj"))))
    for index, (make, _) in enumerate(CASES.values()):
        (root / f"bad{index}.tar.gz").write_bytes(tar_gz(make()))
    server = ServerProcess(["--models", str(root)])
    request.addfinalizer(server.stop)
    return server


def _invoke(server, name: str) -> httpx.Response:
    headers = {"Content-Type": "text/csv", TARGET: name}
    return httpx.post(f"{server.url}/invocations", content=ROW, headers=headers, timeout=60)


@pytest.mark.parametrize("index, case", list(enumerate(CASES)), ids=list(CASES))
def test_a_hostile_model_is_refused_and_costs_nothing_else(hostile_server, index: int, case: str) -> None:
    before = _invoke(hostile_server, "good.tar.gz")
    assert before.status_code == 200
    for _ in range(2):  # a second try meets the same refusal, not a half-loaded model
        response = _invoke(hostile_server, f"bad{index}.tar.gz")
        assert 400 <= response.status_code < 500, response.text
        assert CASES[case][1] in response.text
    assert hostile_server.proc.poll() is None
    assert httpx.get(hostile_server.url + "/ping").status_code == 200
    assert _invoke(hostile_server, "good.tar.gz").content == before.content
    # The 200,000-tree case must not cost gigabytes: refused before it is parsed into objects.
    assert psutil.Process(hostile_server.proc.pid).memory_info().rss < 1.5 * 2**30


# --- property-based: any mutation of a real model file loads cleanly or is a ModelLoadError -------------

_REAL = bytes(train_booster(2, rounds=4).save_raw("ubj"))
_REAL_JSON = bytes(train_booster(2, rounds=4).save_raw("json"))


def _mutated(raw: bytes):
    return st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: _apply(raw, edits)
    )


def _apply(raw: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(raw)
    for position, value in edits:
        data[position] = value
    return bytes(data)


_FIELDS = ("left_children", "right_children", "split_indices", "default_left", "parents")
_TOP = ("num_feature", "num_class", "num_target")
_HOSTILE = st.integers(-3, 2**40)


def _structural() -> st.SearchStrategy[bytes]:
    """A real JSON model with tree fields and learner parameters set to hostile values."""
    edits = st.lists(
        st.one_of(
            st.tuples(st.integers(0, 3), st.sampled_from(_FIELDS), st.integers(0, 20), _HOSTILE),
            st.tuples(st.just(-1), st.sampled_from(_TOP), st.just(0), _HOSTILE),
        ),
        min_size=1,
        max_size=4,
    )
    return edits.map(_edited)


def _edited(edits) -> bytes:
    model = json.loads(_REAL_JSON)
    for tree, field, node, value in edits:
        if tree < 0:
            model["learner"]["learner_model_param"][field] = str(value)
            continue
        values = _trees(model)[tree][field]
        values[node % len(values)] = value
    return json.dumps(model).encode()


_BASELINE_RSS = psutil.Process().memory_info().rss


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_mutated(_REAL), _mutated(_REAL_JSON), _structural(), st.binary(max_size=400)))
def test_mutated_model_files_load_cleanly_or_fail_cleanly(tmp_path_factory, data: bytes) -> None:
    from handler.errors import ModelLoadError
    from handler.model import load_model

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "xgboost-model").write_bytes(data)
    rows = np.random.default_rng(0).random((3, 6), dtype=np.float32)
    body = "\n".join(",".join(str(v) for v in row) for row in rows).encode()
    try:
        model = load_model(Path(folder))
    except ModelLoadError:
        assert psutil.Process().memory_info().rss - _BASELINE_RSS < 2**30
        return
    from handler.errors import HandlerError
    from handler.model import Context

    try:
        model.invoke(body, "text/csv", "application/json", Context(None, None))
    except HandlerError as exc:
        assert exc.status < 500
    # No example may take memory that stays: 1 GiB over the start is far beyond any of these models.
    assert psutil.Process().memory_info().rss - _BASELINE_RSS < 2**30
