"""Hostile and malformed requests: each gets the right status, and the server and its models are unharmed."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import xgboost as xgb

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"
CSV = {"Content-Type": "text/csv"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, make_model_dir):
    """A server with two loaded models, shared by every case so damage from one would show in the next."""
    from conftest import ServerProcess

    root = tmp_path_factory.mktemp("root")
    for seed in (0, 1):
        shutil.copytree(make_model_dir(seed), root / f"m{seed}" / "model")
    server = ServerProcess(["--model-root", str(root), "--max-body", "64KiB"])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for seed in (0, 1):
            response = client.post(
                "/models", json={"model_name": f"m{seed}", "url": str(root / f"m{seed}/model")}
            )
            assert response.status_code == 200
        yield client, root, make_model_dir
    server.stop()


def post_models(body: bytes):
    return lambda c, root: c.post("/models", content=body, headers=JSON)


def load(name, url):
    return lambda c, root: c.post(
        "/models", json={"model_name": name, "url": url(root) if callable(url) else url}
    )


def invoke(body: bytes | str, headers: dict[str, str] | None = None, name: str = "m0"):
    return lambda c, root: c.post(f"/models/{name}/invoke", content=body, headers=headers or CSV)


CASES = [
    ("load: not JSON", post_models(b"{model_name: m2"), 400),
    ("load: JSON array", post_models(b'["m2", "/x"]'), 400),
    ("load: no model_name", post_models(b'{"url": "/opt/ml/models/x/model"}'), 400),
    ("load: model_name a number", post_models(b'{"model_name": 7, "url": "/x"}'), 400),
    ("load: empty model_name", load("", lambda r: str(r / "m0/model")), 400),
    ("load: traversing model_name", load("../x", lambda r: str(r / "m0/model")), 400),
    ("load: control chars in name", load("a\x00b", lambda r: str(r / "m0/model")), 400),
    ("load: no url", post_models(b'{"model_name": "m2"}'), 400),
    ("load: relative url", load("m2", "m0/model"), 400),
    ("load: url with ..", load("m2", lambda r: str(r / "m0" / ".." / ".." / "etc")), 400),
    ("load: url outside the root", load("m2", "/etc"), 400),
    ("load: url that does not exist", load("m2", lambda r: str(r / "nope/model")), 404),
    ("load: url is a file", load("m2", lambda r: str(r / "m0/model/xgboost-model")), 404),
    ("load: body over the limit", post_models(b'{"model_name": "' + b"x" * 70000 + b'"}'), 413),
    ("load: already loaded", load("m0", lambda r: str(r / "m1/model")), 409),
    ("invoke: letters", invoke("a,b,c,d,e,f"), 400),
    ("invoke: too few features", invoke("1,2,3"), 400),
    ("invoke: too many features", invoke(ROW + ",1"), 400),
    ("invoke: ragged rows", invoke(ROW + "\n1,2"), 400),
    ("invoke: empty body", invoke(""), 400),
    ("invoke: infinity", invoke("inf,1,1,1,1,1"), 400),
    ("invoke: invalid utf-8", invoke(b"\xff\xfe\x00\x01"), 400),
    ("invoke: unicode junk", invoke("٣,٤,😀,1,1,1".encode()), 400),
    ("invoke: broken JSON", invoke('{"instances": [[1,2', JSON), 400),
    ("invoke: JSON of the wrong shape", invoke('{"instances": "rows"}', JSON), 400),
    ("invoke: JSON strings", invoke('[["a","b","c","d","e","f"]]', JSON), 400),
    ("invoke: JSON NaN literal", invoke("[NaN,1,1,1,1,1]", JSON), 400),
    ("invoke: npy garbage", invoke(b"\x93NUMPY garbage", {"Content-Type": "application/x-npy"}), 400),
    ("invoke: libsvm garbage", invoke("1 a:b c:d", {"Content-Type": "text/libsvm"}), 400),
    ("invoke: unknown content type", invoke(ROW, {"Content-Type": "image/png"}), 415),
    ("invoke: unknown accept", invoke(ROW, {"Content-Type": "text/csv", "Accept": "image/png"}), 406),
    ("invoke: body over the limit", invoke((ROW + "\n") * 3000), 413),
    ("invoke: model not loaded", invoke(ROW, name="nope"), 404),
    ("invoke: traversing model name", lambda c, r: c.post("/models/..%2Fm0/invoke", content=ROW), 404),
    ("list: page_size not a number", lambda c, r: c.get("/models", params={"page_size": "ten"}), 400),
    ("list: page_size too large", lambda c, r: c.get("/models", params={"page_size": "100000"}), 400),
    ("list: forged token", lambda c, r: c.get("/models", params={"next_page_token": "!!notours"}), 400),
    ("describe: unknown", lambda c, r: c.get("/models/%00"), 404),
    ("unload: unknown", lambda c, r: c.delete("/models/nope"), 404),
    ("wrong method", lambda c, r: c.put("/models"), 405),
    ("unknown route", lambda c, r: c.get("/../../etc/passwd"), 404),
    ("invocations without a single model", lambda c, r: c.post("/invocations", content=ROW), 404),
    ("runtime route without a source", lambda c, r: c.post("/endpoints/x/invocations", content=ROW), 400),
]


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case, expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request_gets_its_status_and_harms_nothing(served, case, expected):
    client, root, make_model_dir = served
    response = case(client, root)
    assert response.status_code == expected, response.text
    assert response.json()["message"]  # every error names its problem
    assert client.get("/ping").status_code == 200
    names = sorted(m["modelName"] for m in client.get("/models").json()["models"])
    assert names == ["m0", "m1"]
    for seed in (0, 1):
        booster = xgb.Booster(model_file=str(Path(make_model_dir(seed)) / "xgboost-model"))
        want = booster.inplace_predict(np.array([[float(v) for v in ROW.split(",")]], dtype=np.float32))
        got = client.post(f"/models/m{seed}/invoke", content=ROW, headers=CSV).json()
        assert got == pytest.approx(want.tolist(), rel=1e-6)
