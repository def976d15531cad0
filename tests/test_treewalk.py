"""The tree walker must predict bit for bit what XGBoost predicts, or step aside."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from conftest import N_FEATURES, train_booster

from handler.treewalk import TreeWalker
from handler.xgboost import forest_of


def random_rows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.random((n, N_FEATURES), dtype=np.float32)
    rows[rng.random(rows.shape) < 0.15] = np.nan
    return rows


@pytest.mark.parametrize(
    "params",
    [
        {"rounds": 1},
        {"rounds": 25, "max_depth": 5},
        {"rounds": 40, "max_depth": 8, "seed": 3},
        {"rounds": 10, "objective": "reg:absoluteerror"},
        {"rounds": 10, "objective": "reg:pseudohubererror"},
    ],
)
def test_walker_matches_xgboost_bit_for_bit(params):
    booster = train_booster(**params)
    walker = TreeWalker.compile(forest_of(booster), booster.inplace_predict)
    assert walker is not None
    code = walker.to_code(booster.inplace_predict)
    assert code is not None
    rows = random_rows(200)
    want = booster.inplace_predict(rows)
    for predict in (walker.predict, code.predict):
        ours = np.concatenate([predict(rows[i : i + 4]) for i in range(0, 200, 4)])
        assert np.array_equal(ours, want)


def test_walker_sees_missing_values_take_the_default_branch():
    booster = train_booster(rounds=10)
    walker = TreeWalker.compile(forest_of(booster), booster.inplace_predict)
    assert walker is not None
    rows = np.full((1, N_FEATURES), np.nan, dtype=np.float32)
    assert np.array_equal(walker.predict(rows), booster.inplace_predict(rows))


def _classifier(objective: str, **params) -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.random((200, N_FEATURES), dtype=np.float32)
    y = (x[:, 0] * 3).astype(int) if "multi" in objective else (x[:, 0] > 0.5).astype(int)
    return xgb.train({"objective": objective, "nthread": 1, **params}, xgb.DMatrix(x, label=y), 5)


@pytest.mark.parametrize(
    "booster",
    [
        pytest.param(lambda: _classifier("binary:logistic"), id="logistic link"),
        pytest.param(lambda: _classifier("multi:softprob", num_class=3), id="multi-class"),
        pytest.param(lambda: _classifier("binary:logistic", booster="gblinear"), id="linear booster"),
    ],
)
def test_models_it_cannot_reproduce_are_left_to_xgboost(booster):
    model = booster()
    assert TreeWalker.compile(forest_of(model), model.inplace_predict) is None


def test_served_predictions_are_the_same_on_both_paths(tmp_path):
    from handler.model import Context, WalkingPredict, load_model

    booster = train_booster(seed=4, rounds=30, max_depth=6)
    booster.save_model(str(tmp_path / "m.json"))
    model = load_model(tmp_path)
    rows = random_rows(9, seed=2)
    rows[np.isnan(rows)] = 0.5  # CSV has no NaN spelling the codec accepts besides an empty field
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()
    context = Context(None, None)
    for _ in range(WalkingPredict.WARM_AFTER):  # a model in use gets its walker
        model.invoke(body, "text/csv", "text/csv", context)
    assert model._predict.walker_built.wait(30)
    one_by_one = [float(model.invoke(line, "text/csv", "text/csv", context)[0]) for line in body.splitlines()]
    together = [float(v) for v in model.invoke(body, "text/csv", "text/csv", context)[0].splitlines()]
    assert one_by_one == together  # the walker answered the single rows, XGBoost the batch
    assert np.array_equal(np.array(together, dtype=np.float32), booster.inplace_predict(rows))


def test_a_hot_model_gets_code_only_when_its_memory_is_granted(tmp_path):
    from handler.model import Context, WalkingPredict, load_model

    booster = train_booster(seed=5, rounds=20, max_depth=5)
    booster.save_model(str(tmp_path / "m.json"))
    row = b"0.5,0.25,0.75,0.1,0.9,0.3"
    want = booster.inplace_predict(np.array([[0.5, 0.25, 0.75, 0.1, 0.9, 0.3]], dtype=np.float32))
    for granted in (True, False):
        model = load_model(tmp_path)
        asked: list[int] = []
        model.on_growth(lambda nbytes, granted=granted, asked=asked: asked.append(nbytes) or granted)
        step = model._predict
        for _ in range(WalkingPredict.WARM_AFTER):
            model.invoke(row, "text/csv", None, Context(None, None))
        assert step.walker_built.wait(30)
        for _ in range(WalkingPredict.HOT_AFTER):
            assert float(model.invoke(row, "text/csv", None, Context(None, None))[0][1:-1]) == want[0]
        assert step.code_built.wait(30)
        assert len(asked) == 1 and asked[0] > 0
        walking_with = step._walk.__self__
        assert type(walking_with).__name__ == ("TreeCode" if granted else "TreeWalker")
        assert float(model.invoke(row, "text/csv", None, Context(None, None))[0][1:-1]) == want[0]


def outcome(model, body: bytes, content_type: str) -> object:
    from handler.errors import HandlerError
    from handler.model import Context

    try:
        return model.invoke(body, content_type, None, Context(None, None))
    except HandlerError as exc:
        return type(exc).__name__, str(exc)


# The full path reads 1e39 as float32 inf (numpy warns) and then refuses it: expected here.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("hot", [False, True], ids=["walker", "code"])
def test_a_walked_model_reads_a_one_row_csv_as_the_full_path_does(tmp_path, hot):
    from handler import codecs
    from handler.model import Context, WalkingPredict, load_model

    booster = train_booster(seed=6, rounds=20, max_depth=5)
    booster.save_model(str(tmp_path / "m.json"))
    model = load_model(tmp_path)
    step = model._predict
    row = b"0.5,0.25,0.75,0.1,0.9,0.3"
    for _ in range(WalkingPredict.HOT_AFTER if hot else 1):
        model.invoke(row, "text/csv", None, Context(None, None))
    assert step.code_built.wait(30) if hot else not step.code_built.is_set()
    assert type(step._walk_row.__self__).__name__ == ("TreeCode" if hot else "TreeWalker")
    rng = np.random.default_rng(7)
    taken = [",".join(repr(float(v)) for v in rng.normal(0.5, 2, N_FEATURES)).encode() for _ in range(20)]
    taken += [row + b"\n", row + b"\r\n", b" 0.5, 0.25 ,0.75,1e-3,9E1,3", b"1_0,2,3,4,5,6", b"-0,+1,2,3,4,5"]
    declined = [b"0.5,,0.75,0.1,0.9,0.3", b"nan,1,2,3,4,5", b"inf,1,2,3,4,5", b"1e39,1,2,3,4,5",
                b"1,2,3,4,5", b"1,2,3,4,5,6,7", b"a,1,2,3,4,5", row + b"\n" + row, b"\n" + row]  # fmt: skip
    for body in taken + declined:
        assert (step.csv_row(body) is not None) == (body in taken), body
        # A parameter in the Content-Type keeps a request off the fast path: the full path's answer.
        full = outcome(model, body, "text/csv; charset=utf-8")
        assert outcome(model, body, "text/csv") == full, body
        assert outcome(model, body, None) == full, body
    for body in taken:
        want = booster.inplace_predict(codecs.decode(body, "text/csv", N_FEATURES))
        assert np.float32(float(outcome(model, body, "text/csv")[0][1:-1])) == want[0], body
